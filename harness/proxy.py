"""HAProxy in front of llama-server replicas, on loopback, for bench/scale.py and its tests.

The configuration is the one we ship (deploy/haproxy/llama-paged.cfg): only its bind address, its
server lines (between the "# servers" markers) and, for a round-robin comparison, the balance line
of the prefix backend are rewritten. HAProxy runs in the foreground (-db) as our child and is
stopped by its PID, as the servers are.
"""
import pathlib
import re
import shutil
import subprocess
import time

from .errors import HarnessError
from .server import HOST, free_port, http_get_json, port_taken, stop_process

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "llama-paged.cfg"
SERVERS = re.compile(r"(    # servers\n)(.*?)(    # end servers\n)", re.S)
PREFIX_BALANCE = "    balance hash var(txn.prefix)\n"
POLICIES = {
    "affinity": PREFIX_BALANCE,
    # the same, each replica bounded to 125% of the average load (the hot keys spill over)
    "affinity-bounded": PREFIX_BALANCE + "    hash-balance-factor 125\n",
    "roundrobin": "    balance roundrobin\n",
}


def haproxy_binary():
    path = shutil.which("haproxy")
    if path is None:
        raise HarnessError("haproxy not found on PATH: install it (Debian: apt-get install haproxy)")
    return path


def render(ports, listen_port, policy="affinity", config=CONFIG):
    """The shipped configuration for replicas on these ports, listening on listen_port."""
    if policy not in POLICIES:
        raise HarnessError(f"unknown proxy policy {policy!r}: expected one of {', '.join(POLICIES)}")
    text = config.read_text()
    if text.count("    # servers\n") != 2 or PREFIX_BALANCE not in text or "    bind 127.0.0.1:8080\n" not in text:
        raise HarnessError(f"{config} lost the lines bench/scale.py rewrites (bind, balance, the server markers)")
    servers = "".join(f"    server replica{i + 1} {HOST}:{port}\n" for i, port in enumerate(ports))
    text = SERVERS.sub(lambda m: m.group(1) + servers + m.group(3), text)
    text = text.replace("    bind 127.0.0.1:8080\n", f"    bind {HOST}:{listen_port}\n")
    return text.replace(PREFIX_BALANCE, POLICIES[policy])


class Proxy:
    """with Proxy([8081, 8082], work_dir) as proxy: requests to proxy.port."""

    def __init__(self, ports, work_dir, policy="affinity", port=None, health_timeout=30.0, name=None):
        self.binary = haproxy_binary()
        self.ports, self.policy, self.name = list(ports), policy, name or policy
        self.fixed_port, self.health_timeout = port, health_timeout
        self.work_dir = pathlib.Path(work_dir)
        self.proc, self.port = None, None

    def start(self):
        if self.fixed_port and port_taken(self.fixed_port):
            raise HarnessError(f"the proxy's port {self.fixed_port} on {HOST} is already taken")
        self.port = self.fixed_port or free_port()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.work_dir / f"haproxy-{self.name}.cfg"
        self.config_path.write_text(render(self.ports, self.port, self.policy))
        self.log_path = self.work_dir / f"haproxy-{self.name}.log"
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=60)
        if check.returncode != 0:
            raise HarnessError(f"haproxy refuses {self.config_path}: {check.stdout}{check.stderr}")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config_path)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.health_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status, _ = http_get_json(self.port, "/health", timeout=2.0)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        exited = self.proc.poll()
        self.stop()
        raise HarnessError(f"haproxy on {HOST}:{self.port} {'exited with code %d' % exited if exited is not None else 'answered no /health'}"
                           f" (config {self.config_path}, log {self.log_path}):\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def stop(self, grace_s=10.0):
        stop_process(self.proc, grace_s)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False
