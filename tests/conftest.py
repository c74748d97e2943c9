"""Shared by every test: the repository's paths (harness.paths), a runner for its
scripts, and the tiers. Every test module sets exactly one tier with
`pytestmark = pytest.mark.<tier>` (pytest.ini): fast, build or gpu.

Tests are split by what they test: orchestrator/ (prepare, series, docs, builds,
the tools), gates/ (greedy md5, server), features/ (one file per feature)."""
import os
import subprocess

import pytest

from harness import paths
from harness.errors import HarnessError

ROOT = paths.ROOT
TIERS = ("fast", "build", "gpu")


def read_kv(path):
    """KEY=value lines of a file such as LLAMA_VERSION."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


VERSION = read_kv(ROOT / "LLAMA_VERSION")


def run(cmd, env=None, cwd=ROOT, check=False, timeout=1800):
    """Runs cmd with extra env vars; returns the CompletedProcess (text). The settings of
    the orchestrator are removed first, so that a caller's environment cannot leak in."""
    full_env = dict(os.environ)
    for key in ("LLAMA_PAGED", "LLAMA_SRC", "LLAMA_FETCH", "LLAMA_NPM_TARBALL",
                "LLAMA_CHECKOUT", "LLAMA_PATCHES", "LLAMA_DEV", "BACKEND"):
        full_env.pop(key, None)
    full_env.update(env or {})
    proc = subprocess.run([str(c) for c in cmd], env=full_env, cwd=cwd, text=True, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def bin_dir(config):
    return paths.bin_dir(config)


def _tier(item):
    return [m.name for m in item.iter_markers() if m.name in TIERS]


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = set(_tier(item))
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: mark its module with exactly one tier of "
                                    f"{', '.join(TIERS)} (pytestmark), has {sorted(tiers) or 'none'}")


def pytest_report_header(config):
    try:
        dirs = ", ".join(f"{c}={paths.bin_dir(c)}" for c in paths.CONFIGS)
        return [f"llama-paged: BACKEND={paths.backend()}; binaries: {dirs}; models: {paths.models_dir()}"]
    except HarnessError as err:
        return [f"llama-paged: {err}"]


BUILD_TOOLS = ("llama-server", "llama-completion")


@pytest.fixture(autouse=True)
def _tier_requirements(request):
    """build tests need both builds of BACKEND (never another backend's); gpu tests a device."""
    tiers = _tier(request.node)
    if "build" in tiers or "gpu" in tiers:
        try:
            dirs = {c: paths.bin_dir(c) for c in paths.CONFIGS}
        except HarnessError as err:
            pytest.fail(str(err))
        missing = [str(d / t) for d in dirs.values() for t in BUILD_TOOLS if not (d / t).is_file()]
        if missing:
            pytest.fail(f"build-tier test without its binaries: missing {', '.join(missing)} "
                        f"(run 'make build-both BACKEND={paths.backend()}', or 'make test')")
    if "gpu" in tiers:
        reason = device_missing()
        if reason:
            pytest.skip(f"needs a GPU device: {reason}")


def device_missing():
    """Why no GPU device can run the gpu tier here, or None when one can."""
    backend = paths.backend()
    if backend not in paths.DEVICE_BACKENDS:
        return f"BACKEND={backend} (build and test with BACKEND=cuda, hip or vulkan on a machine with a GPU)"
    cli = paths.bin_dir("paged") / "llama-cli"
    proc = run([cli, "--list-devices"], env={"BACKEND": backend}, timeout=120)
    names = {"cuda": "CUDA", "hip": "ROCm", "vulkan": "Vulkan"}
    if names[backend] not in proc.stdout + proc.stderr:
        return f"BACKEND={backend}, but '{cli} --list-devices' lists no {names[backend]} device"
    return None



# Measurements a test reports without failing (e.g. a non-bit-exact knob's token agreement):
# printed at the end of the run, whatever the outcome.
REPORT_LINES = []


@pytest.fixture
def report():
    return REPORT_LINES.append


def pytest_terminal_summary(terminalreporter):
    if REPORT_LINES:
        terminalreporter.section("llama-paged reports")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
