"""Running an upstream tool until its output is complete.

llama.cpp's tools print through common_log, whose worker thread is leaked at
exit (upstream issue 22142): now and then a process ends before the worker
wrote its last lines, and the output is cut short (or empty) with exit code 0.
A run whose output lacks what the tool writes last is run again, up to
MAX_ATTEMPTS times, and is never compared or measured.
"""
import subprocess

from .errors import HarnessError

MAX_ATTEMPTS = 5


def run_complete(cmd, is_complete, describe=None, attempts=MAX_ATTEMPTS, **run_args):
    """subprocess.run(cmd, **run_args) until is_complete(proc) or the run fails;
    returns the CompletedProcess of that run. stdin is /dev/null. A tool that
    loses its output `attempts` times in a row is an error naming the command."""
    for _ in range(attempts):
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, **run_args)
        if proc.returncode != 0 or is_complete(proc):
            return proc
    raise HarnessError(f"{describe or ' '.join(map(str, cmd))}\n"
                       f"lost the end of its output {attempts} times in a row")
