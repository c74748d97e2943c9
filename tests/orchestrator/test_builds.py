"""Both configurations build side by side, and each binary is what it says."""
import pytest

from conftest import ROOT, bin_dir, run
from harness import paths

pytestmark = pytest.mark.build


def version(config):
    proc = run([str(bin_dir(config) / "llama-completion"), "--version"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_paged_build_identifies_itself():
    assert "llama-paged: paged series" in version("paged")


def test_stock_build_is_plain_upstream():
    out = version("stock")
    assert "llama-paged" not in out
    assert "version: 0.5.0" in out


def test_switching_configurations_rebuilds_nothing_wrong():
    # on, off, on: each build is a no-op on a prepared tree and leaves the right binaries.
    for paged in ("on", "off", "on"):
        proc = run(["make", "--no-print-directory", "build", f"LLAMA_PAGED={paged}", f"BACKEND={paths.backend()}"],
                   timeout=3600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "llama-paged" in version("paged")
    assert "llama-paged" not in version("stock")
    stock_tree = run(["git", "-C", str(ROOT / "src" / "stock"), "rev-parse", "HEAD^{tree}"], check=True)
    assert stock_tree.stdout.strip() == (ROOT / "patches" / "tree-hash").read_text().strip()
