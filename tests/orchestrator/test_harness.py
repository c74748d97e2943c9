"""The harness package's small pure parts: build paths from BACKEND, run order
with the A/A control, the noise-floor verdict, stable prompt text."""
import pytest

from bench import batched
from harness import builds, paths, prompts
from harness.errors import HarnessError

pytestmark = pytest.mark.fast


def test_bin_dirs_follow_backend(monkeypatch):
    monkeypatch.delenv("STOCK_BIN", raising=False)
    monkeypatch.delenv("PAGED_BIN", raising=False)
    monkeypatch.setenv("BACKEND", "cuda")
    assert paths.bin_dir("paged") == paths.ROOT / "build" / "paged-cuda" / "bin"
    assert paths.bin_dir("stock") == paths.ROOT / "build" / "stock-cuda" / "bin"
    monkeypatch.setenv("PAGED_BIN", "/somewhere/bin")
    assert str(paths.bin_dir("paged")) == "/somewhere/bin"


def test_unknown_backend_is_an_error(monkeypatch):
    monkeypatch.delenv("PAGED_BIN", raising=False)
    monkeypatch.setenv("BACKEND", "metal")
    with pytest.raises(HarnessError, match="BACKEND must be one of cpu, cuda, hip, vulkan; got 'metal'"):
        paths.bin_dir("paged")


def test_every_run_takes_every_position():
    order = (*builds.BUILDS, builds.CONTROL)
    seen = [builds.rep_order(rep, order) for rep in range(3)]
    assert seen == [("stock", "paged", "stock-aa"), ("paged", "stock-aa", "stock"), ("stock-aa", "stock", "paged")]
    assert builds.rep_order(1) == ("paged", "stock")
    assert builds.build_of(builds.CONTROL) == "stock"


@pytest.mark.parametrize("ratio,want", [(1.10, "gain"), (0.90, "loss"), (1.01, "noise"), (0.975, "noise"),
                                        (1.029, "noise"), (0.969, "loss"), (None, "n/a")])
def test_a_ratio_is_a_gain_or_a_loss_only_outside_the_aa_band(ratio, want):
    # A/A ratios 0.98..1.03: the band is 1 +- 3% (symmetric: the larger deviation)
    aa = {"median": 1.0, "min": 0.98, "max": 1.03, "n": 3}
    assert batched.noise_floor(aa) == pytest.approx(0.03)
    assert batched.verdict(ratio, aa) == want
    assert batched.verdict(1.5, {"median": None, "min": None, "max": None, "n": 0}) == "n/a"


def test_prompt_text_is_stable():
    # the recorded stock md5s depend on the gate prompts
    assert prompts.gate_words(5, 1) == "oscar number query kilo oscar"
    assert prompts.words(3, "7:shared-prefix") == prompts.words(3, "7:shared-prefix")
    assert prompts.shared_prefix(7, 10) != prompts.unique_prompt(7, 0, 0, 10)
