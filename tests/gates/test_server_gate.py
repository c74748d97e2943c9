"""Server gate: stock and paged llama-server, several parallel slots, unified
and per-slot KV, the same request schedule at temperature 0.

The paged server runs the schedule once with no knob set and once per runtime
knob of the series (read from the patch trailers, so a new patch's knob is gated
by adding its trailers). With no knob, and with a knob whose trailer says
`Bit-exact: yes`, it must answer exactly what stock answers: the text and the
top log-probabilities of every token; with `Bit-exact: per-slot`, so it must with
per-slot KV. For another knob, or a per-slot one with unified KV, the gate reports the
token agreement and the largest log-probability difference, and requires no
failed request, no NaN and at least AGREEMENT_MIN agreement (docs/VERIFY.md).

The schedule leaves holes in the caches, where layout bugs live: an idle slot
between two decoding ones, erased slots, a new request taking a freed slot."""
import functools
import math

import pytest

from conftest import bin_dir
from harness import builds, trailers
from harness.errors import HarnessError
from harness.prompts import gate_words
from harness.server import LlamaServer, free_port, server_refusal
from verify import gate

pytestmark = pytest.mark.build

N_SLOTS = 4
N_PREDICT = 24
# The top log-probabilities of every generated token are compared too: a greedy token survives
# most last-bit changes, its log-probability (printed to round-trip) does not.
N_PROBS = 3
MODELS = gate.GATE_MODELS
KNOBS = trailers.runtime_knobs()
# A knob that is not bit-exact changes low bits; a greedy token flips where two candidates lie
# within them, which on random-weight models happens now and then. A wrong computation (another
# sequence's state, a lost write) diverges at once. Share of tokens that must agree, over all
# requests, each counted up to its first differing token:
AGREEMENT_MIN = 0.5
# A "per-slot" knob changes where a unified cache puts the cells of sequences decoding together,
# so attention adds the same terms in another order: last-bit changes only, within
# gate.order_of_sums_logprob_max(model) (which says why); at least 95% of the tokens agree on the
# gate models (docs/VERIFY.md).
PER_SLOT_AGREEMENT_MIN = 0.8


def complete_together(srv, prompts):
    """One request carrying several prompts: the server admits them as parallel tasks in the
    same step, so the batches are the same in every run. Separate HTTP clients would race, and
    on the CPU a different batch shape can change the kernel and so the low bits."""
    results = srv.post("/completion", {"prompt": prompts, "n_predict": N_PREDICT, "temperature": 0,
                                       "seed": 1, "cache_prompt": True, "n_probs": N_PROBS})
    return sorted(results, key=lambda r: r["index"])


def tokens(result):
    """[(token, logprob, [(candidate, logprob), ...]), ...] of one answer."""
    return [(t["token"], t["logprob"], [(c["token"], c["logprob"]) for c in t["top_logprobs"]])
            for t in result["completion_probabilities"]]


def schedule(srv):
    """The fixed schedule; returns {case: [answer, ...]}, an answer being (text, tokens)."""
    shared = gate_words(120, 7)
    different = [gate_words(40 + 25 * i, 10 + i) for i in range(N_SLOTS)]
    out = {}

    def record(case, results):
        out[case] = [(r["content"], tokens(r)) for r in results]
        return results

    record("single", [srv.complete("Once upon a time", N_PREDICT, n_probs=N_PROBS)])
    record("identical", complete_together(srv, [shared] * N_SLOTS))
    record("different", complete_together(srv, different))
    # Second wave: the first wave's prompts again, so slots reuse cached prefixes.
    second = record("second-wave", complete_together(srv, different))
    out["second-wave-reused"] = [("reused" if r["timings"]["cache_n"] > 0 else "recomputed", []) for r in second]
    # Slots 0 and 2 continue their prompts while 1 and 3 stay idle with their state in the caches.
    extended = [different[i] + " " + gate_words(15, 30 + i) for i in range(N_SLOTS)]
    record("idle-between-decoding", complete_together(srv, [extended[0], extended[2]]))
    # Slots 1 and 3 are erased; new prompts take freed slots while the others continue.
    for slot in (1, 3):
        srv.post(f"/slots/{slot}?action=erase", {})
    record("erased-and-refilled", complete_together(srv, [extended[0] + " " + gate_words(5, 40),
                                                           gate_words(33, 41), gate_words(47, 42)]))
    return out


def server_args(kv_unified):
    return ["-np", str(N_SLOTS), "-c", str(N_SLOTS * 1024), "-b", "256", "-ub", "64"] + (["-kvu"] if kv_unified else [])


def unmet_requirements(knob, model, kv_unified):
    """The items of the knob's Requires: trailer that this model and KV mode do not meet."""
    unmet = []
    if "kv-unified" in knob.requires and not kv_unified:
        unmet.append("kv-unified")
    if "attention-only" in knob.requires and model in gate.HYBRID_GATE_MODELS:
        unmet.append("attention-only")
    return unmet


def knob_env(knob, model):
    """The knob's settings, with LLAMA_KV_PAGED=1 on hybrid models where the knob needs it there."""
    env = dict(knob.env)
    if "kv-paged-on-hybrid" in knob.requires and model in gate.HYBRID_GATE_MODELS:
        env["LLAMA_KV_PAGED"] = "1"
    return env


@functools.lru_cache(maxsize=None)
def serve_and_run(config, model, kv_unified, knob_items=()):
    args = server_args(kv_unified) + ["-t", str(gate.THREADS), "--metrics", "--slot-save-path", str(SLOT_DIR)]
    env = builds.run_env(config, dict(knob_items))
    with LlamaServer(bin_dir(config), gate.MODELS_DIR / f"{model}.gguf", args, env=env,
                     keep_dir=LOG_DIR, label=config) as srv:
        return schedule(srv), " ".join(f"{k}={v}" for k, v in knob_items) + " " + " ".join(srv.command())


LOG_DIR = gate.ROOT / "build" / "test-logs"
SLOT_DIR = LOG_DIR / "slots"


@pytest.fixture(scope="module", autouse=True)
def _dirs():
    SLOT_DIR.mkdir(parents=True, exist_ok=True)


def mode_name(kv_unified):
    return "unified KV" if kv_unified else "per-slot KV"


def assert_identical(model, kv_unified, what, want, want_cmd, got, got_cmd):
    for case in want:
        for i, (s, p) in enumerate(zip(want[case], got[case])):
            assert s == p, (f"{model} {mode_name(kv_unified)}, case {case} request {i}: {what} differs from stock\n"
                            f"  stock: {s!r}\n  paged: {p!r}\n"
                            f"  stock server: {want_cmd}\n  paged server: {got_cmd}")


def agreement(want, got):
    """(tokens agreeing up to each request's first difference / all stock tokens,
    largest |logprob difference| over those agreeing tokens, any NaN in got)."""
    agree = total = 0
    max_diff = 0.0
    nan = False
    for case in want:
        for (_, s_toks), (_, p_toks) in zip(want[case], got[case]):
            total += len(s_toks)
            nan = nan or any(not math.isfinite(t[1]) for t in p_toks if isinstance(t[1], float))
            for s_tok, p_tok in zip(s_toks, p_toks):
                if s_tok[0] != p_tok[0]:
                    break
                agree += 1
                max_diff = max(max_diff, abs(s_tok[1] - p_tok[1]))
    return agree / max(1, total), max_diff, nan


@pytest.mark.parametrize("kv_unified", [False, True], ids=["per-slot-kv", "unified-kv"])
@pytest.mark.parametrize("model", MODELS)
def test_paged_server_answers_like_stock(model, kv_unified):
    stock, stock_cmd = serve_and_run("stock", model, kv_unified)
    paged, paged_cmd = serve_and_run("paged", model, kv_unified)
    assert_identical(model, kv_unified, "paged", stock, stock_cmd, paged, paged_cmd)
    assert all(len(text) > 0 for text, _ in stock["single"])
    assert [r for r, _ in stock["second-wave-reused"]] == ["reused"] * N_SLOTS, \
        "the second wave should reuse the cached prompts"


@pytest.mark.parametrize("kv_unified", [False, True], ids=["per-slot-kv", "unified-kv"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("knob", KNOBS, ids=[k.name for k in KNOBS])
def test_paged_server_with_each_knob(knob, model, kv_unified, report):
    unmet = unmet_requirements(knob, model, kv_unified)
    if unmet:
        # what the knob cannot serve it must refuse, naming itself, rather than serve otherwise
        out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", knob.env,
                             args=server_args(kv_unified), threads=gate.THREADS)
        assert any(f"{name}={value}" in out for name, value in knob.env.items()), (
            f"{knob.name} {model} {mode_name(kv_unified)} (needs {', '.join(unmet)}): the refusal does not name the knob:\n"
            f"{out[-2000:]}")
        report(f"server gate {knob.name} {model} {mode_name(kv_unified)}: refused (needs {', '.join(unmet)})")
        return
    stock, stock_cmd = serve_and_run("stock", model, kv_unified)
    paged, paged_cmd = serve_and_run("paged", model, kv_unified, tuple(sorted(knob_env(knob, model).items())))
    if knob.bit_exact or (knob.bit_exact_per_slot and not kv_unified):
        claim = "yes" if knob.bit_exact else "per-slot"
        assert_identical(model, kv_unified, f"paged with {knob.name} (Bit-exact: {claim})", stock, stock_cmd,
                         paged, paged_cmd)
        return
    share, max_diff, nan = agreement(stock, paged)
    report(f"server gate {knob.name} {model} {mode_name(kv_unified)}: token agreement {share:.1%}, "
           f"largest logprob difference {max_diff:.3g}")
    assert not nan, f"{knob.name} {model}: NaN log-probabilities ({paged_cmd})"
    assert all(text for case in paged for text, _ in paged[case] if case != "second-wave-reused"), \
        f"{knob.name} {model}: an empty answer ({paged_cmd})"
    assert share >= AGREEMENT_MIN, (f"{knob.name} {model} {mode_name(kv_unified)}: token agreement {share:.1%} "
                                    f"< {AGREEMENT_MIN:.0%} ({paged_cmd})")
    if knob.bit_exact_per_slot:
        logprob_max = gate.order_of_sums_logprob_max(model)
        assert share >= PER_SLOT_AGREEMENT_MIN and max_diff <= logprob_max, (
            f"{knob.name} {model} unified KV (Bit-exact: per-slot, so only the order of sums may change): token "
            f"agreement {share:.1%} (at least {PER_SLOT_AGREEMENT_MIN:.0%}), largest logprob difference {max_diff:.3g} "
            f"(at most {logprob_max}) ({paged_cmd})")


@pytest.mark.parametrize("config", ["stock", "paged"])
def test_concurrent_clients_are_all_served(config, tmp_path):
    """N separate clients at once: batching depends on arrival timing, so no exact comparison
    here (see complete_together); every request must still be answered in full."""
    prompts = [gate_words(30 + 10 * i, 20 + i) for i in range(2 * N_SLOTS)]
    with LlamaServer(bin_dir(config), gate.MODELS_DIR / "gate-qwen35.gguf",
                ["-np", str(N_SLOTS), "-c", str(N_SLOTS * 1024), "-t", "2"], log_path=tmp_path / "log") as srv:
        results = srv.complete_concurrently(prompts, N_PREDICT)
    assert [r["timings"]["predicted_n"] for r in results] == [N_PREDICT] * len(prompts)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        with LlamaServer(bin_dir("paged"), tmp_path / "nope.gguf"):
            pass


def test_port_taken_is_a_clear_error():
    import socket
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(HarnessError, match="already taken"):
            with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", port=port):
                pass


def test_server_that_dies_is_reported_and_stopped(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(HarnessError, match="exited"):
        with LlamaServer(bin_dir("paged"), bad, log_path=tmp_path / "bad.log"):
            pass
    assert (tmp_path / "bad.log").exists(), "the log of a failed start is kept"
