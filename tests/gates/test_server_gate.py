"""Server gate: stock and paged llama-server, several parallel slots, unified
and per-slot KV, the same request schedule at temperature 0.

The paged server runs the schedule once with no knob set and once per runtime
knob of the series (read from the patch trailers, so a new patch's knob is gated
by adding its trailers). With no knob, and with a knob whose trailer says
`Bit-exact: yes`, it must answer exactly what stock answers: every request, whole,
its text, the top log-probabilities of every token and how it was served (the
slot, the prompt tokens taken from the cache); with `Bit-exact: per-slot`, so it
must with per-slot KV. For another knob, or a per-slot one with unified KV, every
request must agree with stock up to a near tie and every case on its own at least
CASE_AGREEMENT_MIN of its tokens (docs/VERIFY.md).

The schedule leaves holes in the caches, where layout bugs live: an idle slot
between two decoding ones, erased slots, a new request taking a freed slot; and
it queues: more requests than slots (deferred, then requeued as slots are
released), a deferred request whose client goes away, one cancelled while it
runs."""
import concurrent.futures
import functools
import http.client
import json
import math
import time

import pytest

from conftest import bin_dir
from harness import builds, knob_matrix, trailers
from harness.errors import HarnessError
from harness.prompts import gate_words
from harness.server import HOST, LlamaServer, free_port, server_refusal
from harness.sse import stream_and_cancel
from verify import gate

pytestmark = pytest.mark.build

N_SLOTS = 4
N_PREDICT = 24
# The top log-probabilities of every generated token are compared too: a greedy token survives
# most last-bit changes, its log-probability (printed to round-trip) does not.
N_PROBS = 3
SLOT_CTX = 2048
# The queue cases keep every slot busy this long while requests wait: long enough for a waiting
# client to go away and the server to notice (it looks at a waiting request's connection once a
# second). The answers' length that takes is measured once per model, on stock (busy_predict).
BUSY_S = 2.5
WAIT_S = 60.0
MODELS = gate.GATE_MODELS
KNOBS = trailers.runtime_knobs()
# A knob that is not bit-exact changes low bits; a greedy token flips where two candidates lie
# within them, which on random-weight models happens now and then. A wrong computation (another
# sequence's state, a lost write) diverges at once, and not at a near tie. Each request must agree
# with stock up to a near tie (agreement()), and each case on its own this share of its tokens,
# each request counted up to its first differing token:
CASE_AGREEMENT_MIN = 0.5
# On a mixture of experts, a log-probability that moved more than rounding moves it on a dense model
# (gate.order_of_sums_logprob_max) shows an expert swap: after it the answers may part anywhere
EXPERT_SWAP_MIN = gate.order_of_sums_logprob_max("dense")
# A "per-slot" knob changes where a unified cache puts the cells of sequences decoding together,
# so attention adds the same terms in another order: last-bit changes only, which is what
# agreement() allows a knob that is not bit-exact (docs/VERIFY.md).


def complete_together(srv, prompts, n_predict=N_PREDICT):
    """One request carrying several prompts: the server admits them as parallel tasks in the
    same step, so the batches are the same in every run. Separate HTTP clients would race, and
    on the CPU a different batch shape can change the kernel and so the low bits."""
    results = srv.post("/completion", {"prompt": prompts, "n_predict": n_predict, "temperature": 0,
                                       "seed": 1, "cache_prompt": True, "n_probs": N_PROBS})
    return sorted(results, key=lambda r: r["index"])


def tokens(result):
    """[(token, logprob, [(candidate, logprob), ...]), ...] of one answer."""
    return [(t["token"], t["logprob"], [(c["token"], c["logprob"]) for c in t["top_logprobs"]])
            for t in result["completion_probabilities"]]


def facts(result):
    """How the server served a request: the slot, the prompt tokens taken from its cache, how it
    stopped. Stock's scheduling decides them, so a knob that claims to change nothing (0027's
    requeue of deferred requests first) must leave them as stock has them."""
    return {"id_slot": result["id_slot"], "tokens_cached": result["tokens_cached"],
            "cache_n": result["timings"]["cache_n"], "tokens_evaluated": result["tokens_evaluated"],
            "tokens_predicted": result["tokens_predicted"], "stop_type": result["stop_type"],
            "truncated": result["truncated"]}


def wait_until(srv, what, predicate):
    """The /metrics once predicate(metrics) holds; a HarnessError naming what after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        metrics = srv.metrics()
        if predicate(metrics):
            return metrics
        if time.monotonic() > deadline:
            raise HarnessError(f"waited {WAIT_S:.0f} s for {what}: {metrics}")
        time.sleep(0.02)


def busy_prompts():
    return [gate_words(12 + 3 * i, 60 + i) for i in range(N_SLOTS)]


@functools.lru_cache(maxsize=None)
def busy_predict(model):
    """The answers' length that keeps every slot busy BUSY_S on this model: measured once, on stock,
    doubling from 256 (a step's cost grows with the context), so that every run asks for the same."""
    args = server_args(False) + ["-t", str(gate.THREADS)]
    with LlamaServer(bin_dir("stock"), gate.MODELS_DIR / f"{model}.gguf", args, keep_dir=LOG_DIR,
                     label="stock") as srv:
        n_predict = 256
        while n_predict < SLOT_CTX - 256:
            t0 = time.monotonic()
            complete_together(srv, busy_prompts(), n_predict)
            if time.monotonic() - t0 >= BUSY_S:
                return n_predict
            n_predict = min(2 * n_predict, SLOT_CTX - 256)
    return n_predict


class BusyTooShort(HarnessError):
    """The busy answers of the queue cases ended before the test was done with the waiting ones."""


def busy_too_short(what, n_predict):
    return BusyTooShort(f"{what} while every slot was still busy: the busy answers ({n_predict} tokens) "
                        f"ended first")


# model: the busy answers' length every run of its schedule asks for (busy_predict, doubled where it
# proved too short: the machine was busier when it was measured than in the run)
BUSY_N = {}
_RUNS = {}


def queue_schedule(srv, record, busy_n_predict):
    """More requests than slots: deferred ones, requeued as slots are released, one whose client
    goes away while it waits, one cancelled while it runs."""
    shared = gate_words(120, 7)
    # four take the slots and are released in the same step; three wait and are requeued then
    # (stock moves one per release, LIFO within a step; paged/0027 changes how many)
    waiting = [gate_words(20 + 9 * i, 50 + i) for i in range(3)]
    record("more-than-slots", complete_together(srv, [shared] * N_SLOTS + waiting))

    # every slot busy with a long answer; a request waits and its client goes away while two more
    # wait behind it: the server drops it from the deferred queue and runs the two on release
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(complete_together, srv, busy_prompts(), busy_n_predict)
        wait_until(srv, "every slot to be busy", lambda m: m["requests_processing"] == N_SLOTS)
        leaving = http.client.HTTPConnection(HOST, srv.port, timeout=WAIT_S)
        leaving.request("POST", "/completion", headers={"Content-Type": "application/json"}, body=json.dumps({
            "prompt": gate_words(30, 72), "n_predict": N_PREDICT, "temperature": 0, "cache_prompt": True}))
        wait_until(srv, "the leaving request to wait", lambda m: m["requests_deferred"] == 1)
        behind = pool.submit(complete_together, srv, [gate_words(25, 70), gate_words(35, 71)])
        m = wait_until(srv, "two requests to wait behind it",
                       lambda m: m["requests_deferred"] == 3 or m["requests_processing"] < N_SLOTS)
        if m["requests_processing"] != N_SLOTS:
            raise busy_too_short("three requests waited", busy_n_predict)
        leaving.close()
        # Stock looks at the connection only when a second passes with no result for any request:
        # each /metrics answer is one, so the test stays away for that second.
        time.sleep(1.1)
        m = wait_until(srv, "the server to drop the request whose client went away",
                       lambda m: m["requests_deferred"] == 2 or m["requests_processing"] < N_SLOTS)
        if m["requests_processing"] != N_SLOTS:
            raise busy_too_short("the request whose client went away was dropped", busy_n_predict)
        busy_results = busy.result()
        if any(r["stop_type"] != "limit" for r in busy_results):
            # one that stopped early let the leaving request take its slot: the drop seen was not one
            raise busy_too_short("a busy answer stopped early (end of text)", busy_n_predict)
        record("busy-while-one-left", busy_results)
        record("behind-one-that-left", behind.result())

    # a request cancelled after 4 tokens (its client goes away); once its slot is free, a longer
    # prompt that starts with it takes that slot and reuses what it computed
    cut = gate_words(30, 80)
    outcome = stream_and_cancel(srv.port, {"prompt": cut, "n_predict": busy_n_predict, "temperature": 0,
                                           "cache_prompt": True}, 4, timeout=WAIT_S)
    if outcome != "cancelled":
        raise HarnessError(f"the request to cancel: {outcome}")
    wait_until(srv, "the cancelled request's slot to be free", lambda m: m["requests_processing"] == 0)
    record("after-a-cancelled-one", [srv.complete(cut + " " + gate_words(10, 81), N_PREDICT, n_probs=N_PROBS)])


def schedule(srv, busy_n_predict):
    """The fixed schedule; returns {case: [answer, ...]}, an answer being (text, tokens)."""
    shared = gate_words(120, 7)
    different = [gate_words(40 + 25 * i, 10 + i) for i in range(N_SLOTS)]
    out = {}

    def record(case, results):
        out[case] = [(r["content"], tokens(r), facts(r)) for r in results]
        return results

    record("single", [srv.complete("Once upon a time", N_PREDICT, n_probs=N_PROBS)])
    record("identical", complete_together(srv, [shared] * N_SLOTS))
    record("different", complete_together(srv, different))
    # Second wave: the first wave's prompts again, so slots reuse cached prefixes.
    second = record("second-wave", complete_together(srv, different))
    out["second-wave-reused"] = [("reused" if r["timings"]["cache_n"] > 0 else "recomputed", [], {}) for r in second]
    # Slots 0 and 2 continue their prompts while 1 and 3 stay idle with their state in the caches.
    extended = [different[i] + " " + gate_words(15, 30 + i) for i in range(N_SLOTS)]
    record("idle-between-decoding", complete_together(srv, [extended[0], extended[2]]))
    # Slots 1 and 3 are erased; new prompts take freed slots while the others continue.
    for slot in (1, 3):
        srv.post(f"/slots/{slot}?action=erase", {})
    record("erased-and-refilled", complete_together(srv, [extended[0] + " " + gate_words(5, 40),
                                                           gate_words(33, 41), gate_words(47, 42)]))
    queue_schedule(srv, record, busy_n_predict)
    return out


UBATCH = 64
# stock again with smaller ubatches: the same schedule computed in another split, which changes the
# order of sums only (see agreement())
OTHER_SPLIT_UBATCH = 16


def server_args(kv_unified, ubatch=UBATCH):
    return ["-np", str(N_SLOTS), "-c", str(N_SLOTS * SLOT_CTX), "-b", "256", "-ub", str(ubatch)] + (["-kvu"] if kv_unified else [])


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


def serve_and_run(config, model, kv_unified, knob_items=(), ubatch=UBATCH):
    """(schedule's answers, command line) of one server, cached; BusyTooShort where the busy
    answers proved too short (run_schedules runs again)."""
    busy_n_predict = BUSY_N.setdefault(model, busy_predict(model))
    key = (config, model, kv_unified, knob_items, ubatch, busy_n_predict)
    if key not in _RUNS:
        args = server_args(kv_unified, ubatch) + ["-t", str(gate.THREADS), "--metrics", "--slot-save-path", str(SLOT_DIR)]
        env = builds.run_env(config, dict(knob_items))
        with LlamaServer(bin_dir(config), gate.MODELS_DIR / f"{model}.gguf", args, env=env,
                         keep_dir=LOG_DIR, label=config) as srv:
            _RUNS[key] = (schedule(srv, busy_n_predict),
                          " ".join(f"{k}={v}" for k, v in knob_items) + " " + " ".join(srv.command()))
    return _RUNS[key]


def run_schedules(model, kv_unified, *runs):
    """[(answers, command line)] of each (config, knob_items, ubatch) of runs, all with the same busy
    answers: where they prove too short, they are doubled and every run is done again."""
    while True:
        try:
            return [serve_and_run(config, model, kv_unified, knob_items, ubatch) for config, knob_items, ubatch in runs]
        except BusyTooShort:
            if BUSY_N[model] >= SLOT_CTX - 256:
                raise
            BUSY_N[model] = min(2 * BUSY_N[model], SLOT_CTX - 256)


STOCK = ("stock", (), UBATCH)
STOCK_OTHER_SPLIT = ("stock", (), OTHER_SPLIT_UBATCH)


LOG_DIR = gate.ROOT / "build" / "test-logs"
SLOT_DIR = LOG_DIR / "slots"


@pytest.fixture(scope="module", autouse=True)
def _dirs():
    SLOT_DIR.mkdir(parents=True, exist_ok=True)


def mode_name(kv_unified):
    return "unified KV" if kv_unified else "per-slot KV"


def assert_identical(model, kv_unified, what, want, want_cmd, got, got_cmd):
    """Every case, every request, whole: the text, every token with its top log-probabilities, and
    the facts of how it was served."""
    where = f"{model} {mode_name(kv_unified)}"
    servers = f"  stock server: {want_cmd}\n  paged server: {got_cmd}"
    assert list(got) == list(want), f"{where}: {what} ran the cases {list(got)}, stock {list(want)}\n{servers}"
    for case in want:
        assert len(got[case]) == len(want[case]), (
            f"{where}, case {case}: {what} answered {len(got[case])} requests, stock {len(want[case])}\n{servers}")
        for i, (s, p) in enumerate(zip(want[case], got[case])):
            for part, s_part, p_part in zip(("text", "tokens", "facts"), s, p):
                assert s_part == p_part, (f"{where}, case {case} request {i}: {what}'s {part} differs from stock\n"
                                          f"  stock: {s_part!r}\n  paged: {p_part!r}\n{servers}")


def first_difference(s_toks, p_toks):
    """Index of the first token that differs, counting an answer that stops early as differing
    where it stopped; None where both are the same tokens."""
    first = next((i for i, (x, y) in enumerate(zip(s_toks, p_toks)) if x[0] != y[0]), None)
    if first is None and len(s_toks) != len(p_toks):
        first = min(len(s_toks), len(p_toks))
    return first


def agreement(model, want, got, other_split):
    """Per case: (tokens agreeing up to each request's first difference / all stock tokens, largest
    |logprob difference| over those tokens); and the problems: a request missing, a NaN, an
    empty answer, an answer that stops early, a logprob off by more than a change of the order of
    sums moves it, or a first difference that is not a near tie (the paged token is not among
    stock's top N_PROBS within twice that).

    A change of the order of sums moves a log-probability by at most
    gate.order_of_sums_logprob_max(model), and flips a greedy token only at a near tie; except on
    a mixture of experts, where a last-bit change can swap two experts whose router scores tie,
    and the output jumps. other_split is stock's own answers computed in another split (smaller
    ubatches): where stock itself makes the same jump there (the same token at the same place),
    or drifts as far, that is the model's and the prompt's, and allowed; so is a first difference
    after an expert swap earlier in the answer (EXPERT_SWAP_MIN)."""
    base_limit = gate.order_of_sums_logprob_max(model)
    shares, problems = {}, []
    for case in want:
        if case == "second-wave-reused":
            continue
        if len(got[case]) != len(want[case]):
            problems.append(f"case {case}: {len(got[case])} answers, stock {len(want[case])}")
            continue
        agree = total = 0
        max_diff = 0.0
        for i, ((_, s_toks, _), (p_text, p_toks, _), (_, o_toks, _)) in enumerate(
                zip(want[case], got[case], other_split[case])):
            where = f"case {case} request {i}"
            total += len(s_toks)
            if not p_text:
                problems.append(f"{where}: an empty answer")
            if any(not math.isfinite(t[1]) for t in p_toks):
                problems.append(f"{where}: a NaN log-probability")
                continue
            first = first_difference(s_toks, p_toks)
            same = len(s_toks) if first is None else first
            agree += same
            o_first = first_difference(s_toks, o_toks)
            o_same = len(s_toks) if o_first is None else o_first
            limit = max([base_limit] + [abs(x[1] - y[1]) for x, y in zip(s_toks[:o_same], o_toks)])
            diffs = [abs(x[1] - y[1]) for x, y in zip(s_toks[:same], p_toks)]
            max_diff = max([max_diff] + diffs)
            if diffs and max(diffs) > limit:
                problems.append(f"{where}: logprob off by {max(diffs):.3g} (at most {limit:.3g}) before token {same}")
            if first is None:
                continue
            if first == min(len(s_toks), len(p_toks)):
                problems.append(f"{where}: {len(p_toks)} tokens, stock {len(s_toks)}, the same up to there")
                continue
            s_tok, s_lp, s_top = s_toks[first]
            p_tok = p_toks[first][0]
            runner_up = dict(s_top).get(p_tok)
            near_tie = runner_up is not None and s_lp - runner_up <= 2 * limit
            stock_jumps_too = o_first == first and o_toks[first][0] == p_tok
            # an expert swap earlier in the answer (a jump of a log-probability past what rounding
            # moves it on a dense model, the token unchanged), after which the outputs drift apart
            swapped_before = "moe" in model and any(d > EXPERT_SWAP_MIN for d in diffs)
            if not near_tie and not stock_jumps_too and not swapped_before:
                problems.append(f"{where}: token {first} is {p_tok}, stock's {s_tok} at {s_lp:.4f} with {p_tok} "
                                f"at {runner_up if runner_up is not None else 'below its top ' + str(N_PROBS)}: "
                                f"not a near tie, and stock in another split does not make that change")
        shares[case] = (agree / max(1, total), max_diff)
    return shares, problems


def case_agreement_min(model, want, other_split):
    """Per case, the agreement a knob must reach: CASE_AGREEMENT_MIN, or stock's own in another
    split where that is lower (a mixture of experts' expert swap early in a shared prompt)."""
    own, _ = agreement(model, want, other_split, other_split)
    return {case: min(CASE_AGREEMENT_MIN, share) for case, (share, _) in own.items()}


def prefix_cache_on(knob_items):
    """The knobs turn the prefix cache on: themselves, or through the serving profile (paged/0062)."""
    knobs = dict(knob_items)
    return knobs.get("LLAMA_PREFIX_CACHE") == "1" or (knobs.get("LLAMA_SERVING") == "1" and knobs.get("LLAMA_PREFIX_CACHE") != "0")


def assert_agrees(what, model, kv_unified, knob_items, report):
    """A knob that is not bit-exact against stock: agreement() finds no problem and every case
    reaches case_agreement_min()."""
    (stock, _), (paged, paged_cmd), (other_split, _) = run_schedules(
        model, kv_unified, STOCK, ("paged", knob_items, UBATCH), STOCK_OTHER_SPLIT)
    shares, problems = agreement(model, stock, paged, other_split)
    bounds = case_agreement_min(model, stock, other_split)
    share = min(v[0] for v in shares.values())
    worst = min(shares, key=lambda c: shares[c][0])
    report(f"server gate {what} {model} {mode_name(kv_unified)}: token agreement {share:.1%} at least in each case "
           f"(lowest: {worst}, bound {bounds[worst]:.1%}), largest logprob difference {max(v[1] for v in shares.values()):.3g}")
    where = f"{what} {model} {mode_name(kv_unified)}"
    reused = [r for r, _, _ in paged["second-wave-reused"]]
    if prefix_cache_on(knob_items) and model in gate.HYBRID_GATE_MODELS:
        # documented (docs/KNOBS.md, 0029): on hybrid models the cache's states replace the slots'
        # context checkpoints, and a prompt too short to have one recomputes where stock restores a
        # checkpoint; the first of the four (40 words) does
        report(f"server gate {what} {model}: second wave {reused} (stock: all reused)")
        assert "reused" in reused, f"{where}: the second wave reused nothing: {reused} ({paged_cmd})"
    else:
        assert reused == ["reused"] * N_SLOTS, f"{where}: the second wave did not reuse the cached prompts: {reused} ({paged_cmd})"
    assert not problems, f"{where}:\n  " + "\n  ".join(problems) + f"\n  ({paged_cmd})"
    low = {c: f"{v[0]:.1%} < {bounds[c]:.1%}" for c, v in shares.items() if v[0] < bounds[c]}
    assert not low, f"{where}: token agreement too low in {low} ({paged_cmd})"


@pytest.mark.parametrize("kv_unified", [False, True], ids=["per-slot-kv", "unified-kv"])
@pytest.mark.parametrize("model", MODELS)
def test_paged_server_answers_like_stock(model, kv_unified):
    (stock, stock_cmd), (paged, paged_cmd) = run_schedules(model, kv_unified, STOCK, ("paged", (), UBATCH))
    assert_identical(model, kv_unified, "paged", stock, stock_cmd, paged, paged_cmd)
    assert all(len(text) > 0 for text, _, _ in stock["single"])
    assert [r for r, _, _ in stock["second-wave-reused"]] == ["reused"] * N_SLOTS, \
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
    knob_items = tuple(sorted(knob_env(knob, model).items()))
    if "turns-on-kv-unified" in knob.requires and not kv_unified:
        # the knob turns on --kv-unified itself (the serving profile): a server started without -kvu
        # must say so, and the comparison is the unified one, against stock -kvu
        with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", server_args(False) + ["-t", str(gate.THREADS)],
                         env=builds.run_env("paged", dict(knob_items)), label="turns-on-kvu") as srv:
            srv.complete("hello", 4)
            log = srv.log_tail(400)
        assert "--kv-unified (profile" in log, f"{knob.name} {model}: started without -kvu, it did not say it turned it on:\n{log[-2000:]}"
        kv_unified = True
    if knob.bit_exact or (knob.bit_exact_per_slot and not kv_unified):
        claim = "yes" if knob.bit_exact else "per-slot"
        (stock, stock_cmd), (paged, paged_cmd) = run_schedules(model, kv_unified, STOCK, ("paged", knob_items, UBATCH))
        assert_identical(model, kv_unified, f"paged with {knob.name} (Bit-exact: {claim})", stock, stock_cmd,
                         paged, paged_cmd)
        return
    assert_agrees(knob.name, model, kv_unified, knob_items, report)


COMBINED_MODELS = ["gate-llama", "gate-qwen35"]


@pytest.mark.parametrize("model", COMBINED_MODELS)
@pytest.mark.parametrize("combination", list(knob_matrix.COMBINED), ids=list(knob_matrix.COMBINED))
def test_knobs_that_compose_run_together(combination, model, report):
    """harness/knob_matrix.py's combinations, with unified KV (the prefix cache needs it), against
    stock, as a knob that is not bit-exact (assert_agrees)."""
    env = knob_matrix.env_of(knob_matrix.COMBINED[combination], KNOBS)
    assert_agrees(f"{combination} ({len(env)} knobs)", model, True, tuple(sorted(env.items())), report)


@pytest.mark.parametrize("pair", knob_matrix.REFUSED_PAIRS, ids=["+".join(p) for p in knob_matrix.REFUSED_PAIRS])
def test_knobs_that_do_not_compose_are_refused_by_name(pair):
    env = knob_matrix.env_of(pair, KNOBS)
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", env,
                         args=server_args(True), threads=gate.THREADS)
    assert all(name in out for name in pair), f"{' with '.join(pair)}: the refusal does not name both:\n{out[-2000:]}"


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
