"""A llama-server on loopback for the gates and the benchmarks: a free port,
wait for /health, stop by PID (never by name), keep the log on failure."""
import json
import os
import pathlib
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request


class ServerError(Exception):
    pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """with Server(bin_dir, model, ["-np", "4"], log_path=...) as srv: srv.complete(...)"""

    def __init__(self, bin_dir, model, args=(), env=None, log_path=None, port=None, timeout=120):
        self.binary = pathlib.Path(bin_dir) / "llama-server"
        self.model = pathlib.Path(model)
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.port = port or free_port()
        self.log_path = pathlib.Path(log_path) if log_path else None
        self.timeout = timeout
        self.proc = None
        self._log = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        return [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                *self.args]

    def __enter__(self):
        if not self.binary.exists():
            raise ServerError(f"no llama-server at {self.binary}: build it first ('make build')")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise ServerError(f"port {self.port} on 127.0.0.1 is already taken")
        if not self.model.exists():
            raise ServerError(f"model {self.model} does not exist")
        if self.log_path is None:
            import tempfile
            self.log_path = pathlib.Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"llama-server exited with {self.proc.returncode} before it was healthy; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise ServerError(f"llama-server not healthy after {self.timeout} s; log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, n=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        # Logs of healthy runs are noise; a failing run keeps its log.
        if exc_type is None and self.log_path and self.log_path.name.startswith("llama-server-"):
            self.log_path.unlink(missing_ok=True)
        return False

    def post(self, path, body, timeout=300):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def complete(self, prompt, n_predict=32, **extra):
        body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "seed": 1,
                "cache_prompt": True}
        body.update(extra)
        return self.post("/completion", body)

    def complete_concurrently(self, prompts, n_predict=32):
        """All prompts in flight at once; results in prompt order."""
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
            raise ServerError(f"requests failed: {errors}; log {self.log_path}:\n{self.log_tail()}")
        return results
