"""What the two benchmark test modules share: where the tools are and how to run them."""
import sys

from conftest import ROOT, run

BENCH = ROOT / "bench"
SMOKE_WORKLOADS = BENCH / "workloads" / "smoke"
TOOLS = ("llama-batched-bench", "llama-server")


def bench(script, *args, env=None, python=None):
    """Runs bench/<script> with this interpreter (the one that has matplotlib), or python."""
    return run([*(python or [sys.executable]), str(BENCH / script), *map(str, args)], env=env, timeout=300)


def fake_bin_dir(path):
    """A bin dir whose tools exist but must never run (they would fail loudly)."""
    path.mkdir()
    for tool in TOOLS:
        stub = path / tool
        stub.write_text("#!/bin/sh\necho 'stub must not run' >&2\nexit 99\n")
        stub.chmod(0o755)
    return path
