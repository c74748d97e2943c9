"""Starting and stopping one llama-server for a measurement.

The server listens on a free port of 127.0.0.1 only, is waited for until /health
says ok, and is stopped by its own PID (never by process name: other servers on
the machine are not ours). Its log goes to a file that the caller keeps on failure.
"""
import http.client
import json
import pathlib
import shutil
import socket
import subprocess
import time

from .errors import BenchError

HOST = "127.0.0.1"


def free_port():
    """A port that was free a moment ago. The bind race with other programs is
    handled by retrying the start (see LlamaServer.start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_get_json(port, path, timeout=5.0):
    """(status, parsed body or None)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, None
    finally:
        conn.close()


def log_tail(path, lines=25):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LlamaServer:
    """Context manager: `with LlamaServer(...) as srv:` starts, waits for health,
    and always stops the process on exit."""

    def __init__(self, binary, model, args, env, log_path, label, health_timeout=600.0, keep_dir=None):
        self.binary = pathlib.Path(binary)
        self.model = model
        self.args = [str(a) for a in args]
        self.env = env
        self.log_path = pathlib.Path(log_path)
        self.label = label
        self.health_timeout = health_timeout
        # log_path may be in a temporary directory; a failed start copies the
        # log here so the error message points at a file that still exists.
        self.keep_dir = keep_dir
        self.proc = None
        self.port = None
        self.failed = False

    @property
    def pid(self):
        return self.proc.pid

    def command(self, port):
        return [str(self.binary), "-m", str(self.model), *self.args, "--host", HOST, "--port", str(port)]

    def start(self, attempts=3):
        for _ in range(attempts):
            self.port = free_port()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(self.command(self.port), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=self.env)
            if self._wait_healthy():
                return self
            if "couldn't bind" not in log_tail(self.log_path, 200):
                break
        self.failed = True
        self.stop()
        kept = self.keep_log(self.keep_dir) if self.keep_dir else self.log_path
        raise BenchError(f"{self.label} llama-server did not become healthy "
                         f"(exit code {self.proc.returncode}): {' '.join(self.command(self.port))}\n"
                         f"log kept at {kept}; its end:\n{log_tail(self.log_path)}")

    def _wait_healthy(self):
        deadline = time.monotonic() + self.health_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, body = http_get_json(self.port, "/health", timeout=2.0)
                if status == 200 and (body or {}).get("status") == "ok":
                    return True
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        return False

    def stop(self, grace_s=15.0):
        """SIGTERM to our PID, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace_s)

    def keep_log(self, dest_dir):
        """Copies the log next to the results (on failure, or when asked)."""
        dest = pathlib.Path(dest_dir) / self.log_path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists() and dest.resolve() != self.log_path.resolve():
            shutil.copyfile(self.log_path, dest)
        return dest

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.failed = True
        self.stop()
        return False
