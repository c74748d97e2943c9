"""One llama-server on loopback, for the gates, the tests and the benchmarks.

The server listens on 127.0.0.1 only (a free port unless one is given), is
waited for until /health says ok, and is stopped by its own PID in a finally
(never by process name: other servers on the machine are not ours). Its log
goes to a file that is kept when anything fails and named in the error.

    with LlamaServer(paths.bin_dir("paged"), model, ["-np", "4"], env=builds.run_env("paged", knobs)) as srv:
        srv.complete("Once upon a time", 16)
"""
import http.client
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from .errors import HarnessError

HOST = "127.0.0.1"


def free_port():
    """A port that was free a moment ago. The bind race with other programs is
    handled by retrying the start (see LlamaServer.start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def stop_process(proc, grace_s=15.0):
    """SIGTERM to a child of ours, then SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def port_taken(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) == 0


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


def server_refusal(binary_dir, model, knobs, args=("-c", "4096", "-np", "2"), threads=2, timeout=120):
    """The output (stdout and stderr) of a llama-server started with knobs in its environment,
    which must refuse to start: it must exit with an error before it serves."""
    cmd = [str(pathlib.Path(binary_dir) / "llama-server"), "-m", str(model), "--port", str(free_port()),
           "-t", str(threads), *args]
    proc = subprocess.run(cmd, env={**os.environ, **knobs}, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)
    if proc.returncode == 0:
        raise HarnessError(f"llama-server accepted {knobs}: {' '.join(cmd)}")
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def log_tail(path, lines=25):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LlamaServer:
    """Context manager: `with LlamaServer(...) as srv:` starts the server, waits for
    health, and always stops the process on exit.

    binary: the llama-server executable or the bin directory that holds it.
    env: the whole environment of the server (None: this process's).
    log_path: where the log goes; without one a temporary file, deleted after a clean run.
    keep_dir: on failure the log is copied there (log_path may be in a temporary directory).
    port: a fixed port (an error if taken); without one a free port, retried on a bind race."""

    def __init__(self, binary, model, args=(), env=None, log_path=None, label="llama-server",
                 health_timeout=600.0, keep_dir=None, port=None):
        binary = pathlib.Path(binary)
        self.binary = binary / "llama-server" if binary.is_dir() else binary
        self.model = pathlib.Path(model)
        self.args = [str(a) for a in args]
        self.env = env
        self.temp_log = log_path is None
        self.log_path = pathlib.Path(log_path) if log_path else None
        self.label = label
        self.health_timeout = health_timeout
        self.keep_dir = keep_dir
        self.fixed_port = port
        self.proc = None
        self.port = port
        self.failed = False

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def command(self, port=None):
        return [str(self.binary), "-m", str(self.model), *self.args,
                "--host", HOST, "--port", str(port or self.port)]

    def check_inputs(self):
        """Everything that can be checked before a process starts, reported clearly."""
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise HarnessError(f"no llama-server at {self.binary}: build it first ('make build')")
        if not self.model.is_file():
            raise HarnessError(f"model {self.model} does not exist")
        if self.fixed_port and port_taken(self.fixed_port):
            raise HarnessError(f"port {self.fixed_port} on {HOST} is already taken")

    def start(self, attempts=3):
        self.check_inputs()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = pathlib.Path(name)
        for _ in range(1 if self.fixed_port else attempts):
            self.port = self.fixed_port or free_port()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=self.env)
            if self._wait_healthy():
                return self
            if "couldn't bind" not in log_tail(self.log_path, 200):
                break
        self.failed = True
        exited = self.proc.poll()
        self.stop()
        kept = self.keep_log(self.keep_dir) if self.keep_dir else self.log_path
        state = (f"exited with code {exited} before it was healthy" if exited is not None
                 else f"not healthy after {self.health_timeout:.0f} s")
        raise HarnessError(f"{self.label} llama-server {state}: {' '.join(self.command())}\n"
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
        stop_process(self.proc, grace_s)

    def keep_log(self, dest_dir):
        """Copies the log next to the results (on failure, or when asked)."""
        dest = pathlib.Path(dest_dir) / self.log_path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists() and dest.resolve() != self.log_path.resolve():
            shutil.copyfile(self.log_path, dest)
        return dest

    def log_tail(self, lines=25):
        return log_tail(self.log_path, lines)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            # an interrupt or an unexpected error while waiting for /health: the process is ours
            self.failed = True
            self.stop()
            raise

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.failed = True
        self.stop()
        # The log of a clean run in a temporary file is noise; a failing run keeps its log.
        if not self.failed and self.temp_log and self.log_path:
            self.log_path.unlink(missing_ok=True)
        return False

    # --- requests ---------------------------------------------------------------------

    def post(self, path, body, timeout=300.0):
        """POSTs JSON, returns the parsed answer; an HTTP error names the status and the body."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise HarnessError(f"POST {path}: HTTP {resp.status}: {data[:500].decode(errors='replace')}")
        return json.loads(data)

    def metrics(self, timeout=30.0):
        """{name: value} of the Prometheus text at /metrics (the server needs --metrics), names
        without their "llamacpp:" prefix."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            data = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if resp.status != 200:
            raise HarnessError(f"GET /metrics: HTTP {resp.status}: {data[:500]}")
        out = {}
        for line in data.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name.removeprefix("llamacpp:")] = float(value)
        return out

    def complete(self, prompt, n_predict=32, **extra):
        """One greedy /completion (temperature 0, seed 1, cache_prompt)."""
        body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "seed": 1, "cache_prompt": True}
        body.update(extra)
        return self.post("/completion", body)

    def complete_concurrently(self, prompts, n_predict=32):
        """All prompts in flight at once from separate clients; results in prompt order."""
        results = [None] * len(prompts)
        errors = []

        def one(i, p):
            try:
                results[i] = self.complete(p, n_predict)
            except Exception as e:  # noqa: BLE001 - reported below with its index
                errors.append((i, e))

        threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise HarnessError(f"requests failed: {errors}; log {self.log_path}:\n{self.log_tail()}")
        return results
