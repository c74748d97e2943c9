"""The harness package's small pure parts: build paths from BACKEND, run order
with the A/A control, the noise-floor verdict, stable prompt text."""
import pytest

from bench import batched
from harness import builds, loadrun, paths, prompts
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


def test_the_noise_floor_is_twice_the_standard_error_of_the_aa_median():
    aa = [0.97, 1.03, 0.99, 1.01]  # sample standard deviation 0.02582
    assert batched.noise_floor(aa) == pytest.approx(2 * 1.2533 * 0.025820 / 2, rel=1e-3)
    assert batched.noise_floor([1.0]) is None and batched.noise_floor([]) is None
    # more repetitions of the same scatter: a narrower floor
    assert batched.noise_floor(aa * 4) < batched.noise_floor(aa)


@pytest.mark.parametrize("ratio,want", [(1.10, "gain"), (0.90, "loss"), (1.01, "noise"), (0.971, "noise"),
                                        (1.029, "noise"), (0.969, "loss"), (None, "n/a")])
def test_a_ratio_is_a_gain_or_a_loss_only_outside_the_floor(ratio, want):
    assert batched.verdict(ratio, 0.03) == want
    assert batched.verdict(1.5, None) == "n/a"


def test_prompt_text_is_stable():
    # the recorded stock md5s depend on the gate prompts
    assert prompts.gate_words(5, 1) == "oscar number query kilo oscar"
    assert prompts.words(3, "7:shared-prefix") == prompts.words(3, "7:shared-prefix")
    assert prompts.shared_prefix(7, 10) != prompts.unique_prompt(7, 0, 0, 10)


def test_a_prompt_shares_the_longest_prefix_of_a_prompt_sent_before_it():
    prompts = [[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2, 5], [7], [1, 2, 3, 4, 5, 6]]
    sent = [0.0, 1.0, 1.0, 2.0, 3.0]
    # the first has nobody before it; a prompt sent at the same time counts (in-flight sharing);
    # a prompt that an earlier one covers whole still computes its last token
    assert loadrun.shared_prefixes(prompts, sent) == [0, 3, 2, 0, 4]
    assert loadrun.shared_prefixes([[1, 2], [1, 2]], [0.0, 1.0]) == [0, 1]
    # plan order in and out, whatever the send order
    assert loadrun.shared_prefixes([[1, 2, 3], [1, 2]], [5.0, 1.0]) == [2, 0]


def test_a_step_stall_is_a_time_no_request_got_a_token():
    # one request's late token (3.0 -> 4.5) is not a step the other waited for; both waiting is
    a = {"token_times": [0.0, 1.0, 2.0, 4.5, 5.0, 8.0, 9.0, 12.0]}
    b = {"token_times": [0.1, 1.1, 2.1, 3.1, 4.1, 5.1, 8.1, 9.1]}
    assert abs(loadrun.step_stall([a, b]) - 2.9) < 1e-9  # 5.1 -> 8.0: both waited
    assert loadrun.step_stall([a]) is None
    assert loadrun.step_stall([a, {"token_times": [20.0, 21.0]}]) is None


def test_the_bench_tools_take_every_knob_a_trailer_names():
    from harness import trailers
    names = trailers.knob_names()
    # the settings the gates run, and the knobs that tune one of them
    assert {"LLAMA_KV_PAGED", "LLAMA_PREFIX_CACHE", "LLAMA_PREFIX_CACHE_STATES", "LLAMA_PREFIX_CACHE_MIB",
            "LLAMA_PREFILL_CAP", "LLAMA_MAX_BATCH_TOKENS"} <= names
    assert {name for knob in trailers.runtime_knobs() for name in knob.env} <= names
    assert "LLAMA_NO_SUCH_KNOB" not in names and "LLAMA_MEMORY_PART_KV" not in names  # an API name


def _answer(tokens, content="x"):
    """A /completion result with n_probs 2: [(id, logprob, runner-up id, its logprob)]."""
    return {"content": content, "completion_probabilities": [
        {"id": t, "logprob": lp, "top_logprobs": [{"id": t, "logprob": lp}, {"id": r, "logprob": rlp}]}
        for t, lp, r, rlp in tokens]}


def test_an_answer_cut_short_is_a_difference():
    from harness import answers
    cold = _answer([(1, -0.1, 2, -3.0), (3, -0.2, 4, -3.0), (5, -0.3, 6, -3.0)])
    assert answers.compare("gate-llama", cold, cold) == (None, 0.0)
    with pytest.raises(AssertionError, match="has 2 tokens, the cold one 3"):
        answers.compare("gate-llama", cold, _answer([(1, -0.1, 2, -3.0), (3, -0.2, 4, -3.0)]))
    # a near tie at the first difference is allowed, a token far from one is not
    tie = _answer([(1, -0.1, 2, -0.12), (3, -0.2, 4, -3.0)])
    assert answers.compare("gate-llama", tie, _answer([(2, -0.12, 1, -0.1), (3, -0.2, 4, -3.0)]))[0] == 0
    with pytest.raises(AssertionError, match="not a near tie"):
        answers.compare("gate-llama", cold, _answer([(2, -3.0, 1, -0.1), (3, -0.2, 4, -3.0), (5, -0.3, 6, -3.0)]))
