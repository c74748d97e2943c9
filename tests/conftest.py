"""Shared fixtures: paths of the repo, its builds and a runner for its scripts."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def read_kv(path):
    """KEY=value lines of a file such as LLAMA_VERSION."""
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


VERSION = read_kv(ROOT / "LLAMA_VERSION")


def run(cmd, env=None, cwd=ROOT, check=False, timeout=1800):
    """Runs cmd with extra env vars; returns the CompletedProcess (text)."""
    full_env = dict(os.environ)
    for key in ("LLAMA_PAGED", "LLAMA_SRC", "LLAMA_FETCH", "LLAMA_NPM_TARBALL",
                "LLAMA_CHECKOUT", "LLAMA_PATCHES", "LLAMA_DEV", "BACKEND"):
        full_env.pop(key, None)
    full_env.update(env or {})
    proc = subprocess.run(cmd, env=full_env, cwd=cwd, text=True, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def bin_dir(config):
    return pathlib.Path(os.environ.get(f"{config.upper()}_BIN", ROOT / "build" / f"{config}-cpu" / "bin"))


@pytest.fixture(scope="session")
def root():
    return ROOT
