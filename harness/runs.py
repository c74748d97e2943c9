"""Running an upstream tool until its output is complete.

llama.cpp's tools print through common_log, whose worker thread is leaked at
exit (upstream issue 22142): a process that ends before the worker wrote its
last lines loses them (or all of its output) with exit code 0. Here, 34 of 40
runs of gate-llama -p hello -n 4 and 59 of 300 of a tiny llama-batched-bench
lost their end. Every run gets verify/flush-log-at-exit.c preloaded, which
joins the worker at exit: 0 of those runs lost anything with it. A run whose
output still lacks what the tool writes last is run again, up to MAX_ATTEMPTS
times, and is never compared or measured.
"""
import os
import shlex
import shutil
import subprocess
import tempfile

from . import paths
from .errors import HarnessError

MAX_ATTEMPTS = 5
LOG_SHIM_SOURCE = paths.ROOT / "verify" / "flush-log-at-exit.c"


def log_shim():
    """build/tools/flush-log-at-exit.so, compiled from its source where missing or older."""
    shim = paths.tools_dir() / "flush-log-at-exit.so"
    if shim.is_file() and shim.stat().st_mtime >= LOG_SHIM_SOURCE.stat().st_mtime:
        return shim
    cc = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc:
        raise HarnessError(f"no C compiler (CC, cc or gcc) to build {shim} from {LOG_SHIM_SOURCE}")
    shim.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed: a reader never sees half a library.
    fd, tmp = tempfile.mkstemp(dir=shim.parent, suffix=".so")
    os.close(fd)
    proc = subprocess.run([*cc, "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", "-o", tmp, str(LOG_SHIM_SOURCE), "-ldl"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise HarnessError(f"building {shim} failed:\n{proc.stderr.strip()}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, shim)
    return shim


def with_log_shim(env):
    """A copy of env (default: this process's) with the log shim added to LD_PRELOAD, after
    what is there. A tool built with AddressSanitizer wants its runtime first among the
    libraries it starts with, and refuses to run otherwise: the shim only interposes
    common_init, so that check is turned off (verify_asan_link_order=0) for it."""
    env = dict(os.environ if env is None else env)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    env["LD_PRELOAD"] = ":".join(preload + [str(log_shim())])
    asan = [o for o in env.get("ASAN_OPTIONS", "").split(":") if o]
    env["ASAN_OPTIONS"] = ":".join(asan + ["verify_asan_link_order=0"])
    return env


def run_complete(cmd, is_complete, describe=None, attempts=MAX_ATTEMPTS, env=None, **run_args):
    """subprocess.run(cmd, env=with_log_shim(env), **run_args) until is_complete(proc)
    or the run fails; returns the CompletedProcess of that run. stdin is /dev/null.
    A tool that loses its output `attempts` times in a row is an error naming the command."""
    env = with_log_shim(env)
    for _ in range(attempts):
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, env=env, **run_args)
        if proc.returncode != 0 or is_complete(proc):
            return proc
    raise HarnessError(f"{describe or ' '.join(map(str, cmd))}\n"
                       f"lost the end of its output {attempts} times in a row")
