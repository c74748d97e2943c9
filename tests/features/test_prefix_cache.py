"""Cross-request prefix cache in llama-server (LLAMA_PREFIX_CACHE=1: paged 0028 the block index,
0029 the sharing).

A prompt computed on one slot is reused on another: its full blocks stay in the KV cache under
holder sequences and a later request attaches them without a copy (-kvu). Every test compares an
answer with the same request on a fresh server with the cache off ("cold"): the cached cells were
computed in another batch than the cold run computes them in, so the last bits of a log-probability
may move (the tolerance is the server gate's for knobs that change the order of sums); a wrong
cell (another prompt's, another tenant's) changes the answer at once.

Hybrid models (paged 0034) also need the recurrent state at the end of the blocks a request
starts from: the cache keeps states at a few places (before a prompt's last token or at its end,
where a prompt diverged from a cached one, where a request ended: paged 0037), so that a hit there
is exact too.

Hits are token-exact (paged 0036): a prompt reuses every token it shares with a cached one, the
first tokens of a block they part in and the partial block a request ended with included.

The index's own edge cases (forced collisions, LRU order, pinning) are test-server-prefix-index's
and the holders' bookkeeping test-server-prefix-cache's (C++, under ASan+UBSan in CI)."""
import os
import random
import threading
import time

import pytest

from conftest import bin_dir
from harness import builds, soak, sse
from harness.answers import compare
from harness.errors import HarnessError
from harness.prompts import gate_words
from harness.server import LlamaServer, server_refusal
from verify import gate

pytestmark = pytest.mark.build

KNOB = "LLAMA_PREFIX_CACHE"
ATTENTION_MODELS = ["gate-llama", "gate-qwen3", "gate-qwen3moe"]
BLOCK = 16  # the cache's block without LLAMA_KV_PAGED=1
N_PREDICT = 16


# hybrid models: the cache needs LLAMA_KV_PAGED=1 there; blocks of BLOCK tokens as without it
HYBRID_KNOBS = {KNOB: "1", "LLAMA_KV_PAGED": "1", "LLAMA_KV_BLOCK_SIZE": str(BLOCK)}


def cache_knobs(model):
    return HYBRID_KNOBS if model in gate.HYBRID_GATE_MODELS else {KNOB: "1"}


def serve(model, knobs, tmp_path, name, args=()):
    base = ["-np", "2", "-kvu", "-c", "8192", "-t", str(gate.THREADS), "--metrics", *args]
    return LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", base, env=builds.run_env("paged", knobs),
                       log_path=tmp_path / f"{name}.log", label=name)


def tokens_of(srv, text):
    return srv.post("/tokenize", {"content": text})["tokens"]


def ask(srv, prompt, slot, **extra):
    """A greedy completion of token ids pinned to a slot, with the log-probability of each token."""
    body = {"prompt": prompt, "n_predict": N_PREDICT, "temperature": 0, "seed": 1, "cache_prompt": True,
            "n_probs": 2, "id_slot": slot}
    body.update(extra)
    return srv.post("/completion", body)


def cold_answers(model, tmp_path, requests):
    """Each (prompt, extra) on slot 1 of a fresh server with the cache off."""
    out = []
    for i, (prompt, extra) in enumerate(requests):
        with serve(model, {}, tmp_path, f"cold-{i}") as srv:
            out.append(ask(srv, prompt, 1, **extra))
    return out


def aligned(n):
    return n // BLOCK * BLOCK


def prompts(srv, n_shared, n_tails=2, seed=5):
    """Token-id prompts that share exactly their first n_shared tokens, each with its own tail (the
    tails differ from their first token on)."""
    ids = tokens_of(srv, gate_words(4 * n_shared + 200, seed))
    shared = ids[:n_shared]
    tails, k = [], 50
    while len(tails) < n_tails:
        tail = tokens_of(srv, " " + gate_words(12 + 3 * len(tails), k))
        k += 1
        if all(tail[0] != t[0] for t in tails):
            tails.append(tail)
    return [shared + t for t in tails]


# 64 tokens: vLLM's hybrid block of 528 tokens would give no hit at all
REUSE_CASES = [(m, 300) for m in ATTENTION_MODELS] + [("gate-llama", 64)]


@pytest.mark.parametrize("model,n_shared", REUSE_CASES, ids=[f"{m}-{n}" for m, n in REUSE_CASES])
def test_a_prefix_computed_on_one_slot_is_reused_on_another(model, n_shared, tmp_path, report):
    with serve(model, {KNOB: "1"}, tmp_path, "warm") as srv:
        a, b = prompts(srv, n_shared)
        ask(srv, a, 0)
        warm = ask(srv, b, 1)
    cache_n = warm["timings"]["cache_n"]
    # token-exact: the shared blocks and the first tokens of the block the prompts part in
    assert cache_n == n_shared, f"{model}: {cache_n} tokens reused of {n_shared} shared"
    assert warm["timings"]["prompt_n"] == len(b) - cache_n
    (cold,) = cold_answers(model, tmp_path, [(b, {})])
    assert cold["timings"]["cache_n"] == 0
    first, diff = compare(model, cold, warm)
    report(f"{KNOB}=1 {model} -np 2 -kvu: {cache_n} of {n_shared} shared prompt tokens reused on another slot "
           f"(block-aligned {aligned(n_shared)}); answer vs cold: first difference at token {first}, largest logprob "
           f"difference {diff:.3g}")


# hybrid models: where a raw prompt keeps states before any other prompt left it (paged/0063)
SCHEDULE = [256, 512, 1024, 2048, 4096]

# the 64-token prefix: vLLM's hybrid block of 528 tokens would give no hit at all
# 340: the divergence 84 tokens past the scheduled state at 256; 300: 44 past it, too near for a
# state of its own (PREFIX_STATE_MIN_SAVED, 64), so the third starts from 256 too
HYBRID_CASES = [(m, 340) for m in gate.HYBRID_GATE_MODELS] + [("gate-qwen35", 64), ("gate-qwen35", 300)]


@pytest.mark.parametrize("model,n_shared", HYBRID_CASES, ids=[f"{m}-{n}" for m, n in HYBRID_CASES])
def test_a_hybrid_model_reuses_a_prefix_from_the_state_at_its_divergence(model, n_shared, tmp_path, report):
    """Three prompts sharing n_shared tokens, on alternating slots. The first leaves states before
    its last token and on the raw prompts' schedule (256, 512, ... tokens, paged/0063); the second
    finds the shared blocks, starts from the last scheduled state inside them, computes the rest
    and leaves a state exactly where it diverged from the first (inside a block: with the partial
    block before it) where that is 64 tokens past where it started; the third starts from it,
    token-exact."""
    with serve(model, HYBRID_KNOBS, tmp_path, "warm") as srv:
        a, b, c = prompts(srv, n_shared, n_tails=3)
        ask(srv, a, 0)
        second = ask(srv, b, 1)
        third = ask(srv, c, 0)
        m = srv.metrics()
    want = aligned(n_shared)
    # the second starts from the first's last scheduled state inside what they share
    scheduled = ([0] + [n for n in SCHEDULE if n <= n_shared])[-1]
    assert second["timings"]["cache_n"] == scheduled, second["timings"]
    cache_n = third["timings"]["cache_n"]
    want_third = n_shared if n_shared - scheduled >= 64 else scheduled
    assert cache_n == want_third, f"{model}: {cache_n} tokens reused of {n_shared} shared, want {want_third}"
    assert third["timings"]["prompt_n"] == len(c) - cache_n
    assert m["prefix_cache_states"] >= 2 and m["prefix_cache_states_taken_total"] >= 2, m
    assert m["prefix_cache_states_bytes"] > 0
    cold = cold_answers(model, tmp_path, [(c, {})])[0]
    first, diff = compare(model, cold, third)
    report(f"{KNOB}=1 {model} -np 2 -kvu LLAMA_KV_PAGED=1: the third prompt sharing {n_shared} tokens reused {cache_n} "
           f"(block-aligned {want}; the second {second['timings']['cache_n']}); {m['prefix_cache_states']:.0f} states kept; "
           f"answer vs cold: first difference at token {first}, largest logprob difference {diff:.3g}")


@pytest.mark.parametrize("model", ["gate-llama", "gate-qwen35"])
def test_a_finished_chat_turn_is_reused_by_the_next(model, tmp_path, report):
    """The next turn of a chat starts with the previous prompt and its answer: both are cached
    when the request ends, so another slot reuses them (a hybrid model from the state the request
    left at its exact end, paged/0037)."""
    with serve(model, cache_knobs(model), tmp_path, "warm") as srv:
        (first,) = prompts(srv, 100, n_tails=1)
        turn1 = ask(srv, first, 0)
        history = first + [t["id"] for t in turn1["completion_probabilities"]]
        nxt = history + tokens_of(srv, " " + gate_words(20, 77))
        warm = ask(srv, nxt, 1)
    # the last generated token is not in the KV cache (it was never decoded); the rest is reused
    # (the partial block the request ended with is cached too, on hybrid models with its state)
    want = len(history) - 1
    assert warm["timings"]["cache_n"] == want
    (cold,) = cold_answers(model, tmp_path, [(nxt, {})])
    first_diff, diff = compare(model, cold, warm)
    report(f"{KNOB}=1 {model}: next chat turn of {len(nxt)} tokens reused {warm['timings']['cache_n']} "
           f"(history {len(history)}); first difference {first_diff}, largest logprob difference {diff:.3g}")


def test_cache_salt_keeps_tenants_apart(tmp_path):
    model = "gate-llama"
    with serve(model, {KNOB: "1"}, tmp_path, "warm") as srv:
        a, b = prompts(srv, 200)
        ask(srv, a, 0, cache_salt="tenant-x")
        other = ask(srv, b, 1, cache_salt="tenant-y")
        assert other["timings"]["cache_n"] == 0, "a request of another tenant reused tenant-x's blocks"
        # slot 1 now holds tenant-y's prompt: tenant-x gets its own blocks, not the slot's
        same = ask(srv, b, 1, cache_salt="tenant-x")
        assert same["timings"]["cache_n"] == 200
        # no salt is a tenant of its own
        none = ask(srv, a, 0)
        assert none["timings"]["cache_n"] == 0
        with pytest.raises(HarnessError, match="cache_salt"):
            ask(srv, a, 0, cache_salt=42)
    cold_other, cold_same = cold_answers(model, tmp_path, [(b, {}), (b, {})])
    compare(model, cold_other, other)  # nothing reused; the cells lie elsewhere in the unified cache
    compare(model, cold_same, same)


def test_forced_key_collisions_never_return_another_prompts_cells(tmp_path):
    """With every block key alike (LLAMA_PREFIX_CACHE_KEY_BITS=0) a lookup must still compare the
    tokens: a prompt that differs in its first block gets nothing."""
    model = "gate-llama"
    with serve(model, {KNOB: "1", "LLAMA_PREFIX_CACHE_KEY_BITS": "0"}, tmp_path, "warm") as srv:
        (a,) = prompts(srv, 200, n_tails=1, seed=5)
        (b,) = prompts(srv, 200, n_tails=1, seed=6)
        b = b[:len(a)]
        ask(srv, a, 0)
        miss = ask(srv, b, 1)
        hit = ask(srv, a, 1)
    assert miss["timings"]["cache_n"] == 0
    assert hit["timings"]["cache_n"] >= aligned(len(a) - 1)
    cold_miss, cold_hit = cold_answers(model, tmp_path, [(b, {}), (a, {})])
    compare(model, cold_miss, miss)
    compare(model, cold_hit, hit)


def test_a_tiny_cap_evicts_the_least_recently_used(tmp_path, report):
    """LLAMA_PREFIX_CACHE_MIB=1 holds 32 blocks of gate-llama (512 tokens): four prompts of 300
    tokens push the first one out; the last one stays (asked first: the blocks of the first one,
    cached again when it ends, push the others out in turn)."""
    model = "gate-llama"
    with serve(model, {KNOB: "1", "LLAMA_PREFIX_CACHE_MIB": "1"}, tmp_path, "warm") as srv:
        ps = [prompts(srv, 300, n_tails=1, seed=10 + i)[0] for i in range(4)]
        for i, p in enumerate(ps):
            ask(srv, p, i % 2)
        newest = ask(srv, ps[3] + [13], 0)
        oldest = ask(srv, ps[0] + [13], 1)
    assert oldest["timings"]["cache_n"] < aligned(len(ps[0]))
    assert newest["timings"]["cache_n"] >= aligned(len(ps[3]))
    cold_oldest, cold_newest = cold_answers(model, tmp_path, [(ps[0] + [13], {}), (ps[3] + [13], {})])
    compare(model, cold_oldest, oldest)
    compare(model, cold_newest, newest)
    report(f"LLAMA_PREFIX_CACHE_MIB=1 {model}: after four prompts of ~300 tokens the oldest reused "
           f"{oldest['timings']['cache_n']} tokens, the newest {newest['timings']['cache_n']}")


def test_a_full_kv_cache_gives_up_cached_blocks(tmp_path):
    """-c 1024: the holders soon fill the KV cache; a request that needs room must get it from
    cached blocks no request holds, not fail."""
    model = "gate-llama"
    requests = []
    with serve(model, {KNOB: "1"}, tmp_path, "warm", args=["-c", "1024", "-lv", "5"]) as srv:
        for i in range(6):
            (p,) = prompts(srv, 300, n_tails=1, seed=30 + i)
            requests.append((p, ask(srv, p, i % 2)))
        log = srv.log_path.read_text(errors="replace")
    assert "blocks evicted for room in the KV cache" in log
    cold = cold_answers(model, tmp_path, [(p, {}) for p, _ in requests[-2:]])
    for c, (_, warm) in zip(cold, requests[-2:]):
        compare(model, c, warm)


@pytest.mark.parametrize("knobs,want", [
    ({KNOB: "2"}, f"invalid value '2' for {KNOB}: expected 1"),
    ({KNOB: "yes"}, f"invalid value 'yes' for {KNOB}: expected 1"),
    ({KNOB: "1", "LLAMA_PREFIX_CACHE_MIB": "0"}, "invalid value '0' for LLAMA_PREFIX_CACHE_MIB: expected a whole number of MiB"),
    ({KNOB: "1", "LLAMA_PREFIX_CACHE_MIB": "lots"}, "invalid value 'lots' for LLAMA_PREFIX_CACHE_MIB"),
    ({"LLAMA_PREFIX_CACHE_MIB": "64"}, "LLAMA_PREFIX_CACHE_MIB is set but the prefix cache is off"),
    ({KNOB: "1", "LLAMA_PREFIX_CACHE_KEY_BITS": "65"}, "invalid value '65' for LLAMA_PREFIX_CACHE_KEY_BITS"),
    ({KNOB: "1", "LLAMA_PREFIX_CACHE_STATES": "0"}, "invalid value '0' for LLAMA_PREFIX_CACHE_STATES: expected a whole number of states"),
    ({"LLAMA_PREFIX_CACHE_STATES": "4"}, "LLAMA_PREFIX_CACHE_STATES is set but the prefix cache is off"),
    ({KNOB: "1", "LLAMA_PREFIX_CACHE_STATES_MIB": "0"}, "invalid value '0' for LLAMA_PREFIX_CACHE_STATES_MIB: expected a whole number of MiB"),
    ({"LLAMA_PREFIX_CACHE_STATES_MIB": "64"}, "LLAMA_PREFIX_CACHE_STATES_MIB is set but the prefix cache is off"),
    ({KNOB: "1", "LLAMA_PREFIX_CACHE_MIB": "1", "LLAMA_KV_PAGED": "1", "LLAMA_KV_BLOCK_SIZE": "65536"},
     "LLAMA_PREFIX_CACHE_MIB=1 is below one block of the cache (4096 tokens, 8.00 MiB)"),
], ids=["2", "yes", "mib-0", "mib-lots", "mib-without-cache", "key-bits-65", "states-0", "states-without-cache",
        "states-mib-0", "states-mib-without-cache", "cap-below-a-block"])
def test_a_bad_value_stops_the_server_naming_the_knob(knobs, want):
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", knobs,
                         args=("-c", "4096", "-np", "2", "-kvu"), threads=gate.THREADS)
    assert want in out


def test_a_states_bound_below_one_state_stops_the_server_naming_it():
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf",
                         {**HYBRID_KNOBS, "LLAMA_PREFIX_CACHE_STATES_MIB": "1"},
                         args=("-c", "4096", "-np", "2", "-kvu"), threads=gate.THREADS)
    assert "LLAMA_PREFIX_CACHE_STATES_MIB=1 is below one recurrent state of this model (2 MiB)" in out


@pytest.mark.parametrize("model,args,want", [
    ("gate-llama", ("-np", "2"), "needs a unified KV cache (-kvu)"),
    ("gate-llama", ("-np", "2", "-kvu", "--context-shift"), "cannot be used with --context-shift"),
    ("gate-qwen35", ("-np", "2", "-kvu"), "on a hybrid model needs LLAMA_KV_PAGED=1"),
    ("gate-qwen3next", ("-np", "2", "-kvu"), "on a hybrid model needs LLAMA_KV_PAGED=1"),
], ids=["per-slot-kv", "context-shift", "gate-qwen35", "gate-qwen3next"])
def test_what_the_cache_cannot_serve_is_refused(model, args, want):
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", {KNOB: "1"},
                         args=("-c", "4096", *args), threads=gate.THREADS)
    assert f"{KNOB}=1 {want}" in out


def test_metrics_count_queries_hits_and_blocks(tmp_path):
    model = "gate-llama"
    with serve(model, {KNOB: "1"}, tmp_path, "warm") as srv:
        before = srv.metrics()
        a, b = prompts(srv, 200)
        ra = ask(srv, a, 0)
        rb = ask(srv, b, 1)
        m = srv.metrics()
    assert before["prefix_cache_queries_total"] == 0 and before["prefix_cache_blocks"] == 0
    assert m["prefix_cache_queries_total"] == len(a) + len(b)
    assert m["prefix_cache_hits_total"] == rb["timings"]["cache_n"] == 200
    assert m["prefix_cache_attached_tokens_total"] == 200
    # both requests ended: their prompts and answers are cached (the last token of each was never
    # decoded: full blocks and the partial one they end with), the shared blocks once; nobody holds them
    def n_cached(n):
        return -(-n // BLOCK)
    n_blocks = n_cached(len(a) + N_PREDICT - 1) + n_cached(len(b) + N_PREDICT - 1) - aligned(200) // BLOCK
    assert m["prefix_cache_blocks"] == n_blocks and m["prefix_cache_blocks_held"] == 0
    assert m["prefix_cache_evictions_total"] == 0
    assert m["prefix_cache_bytes"] > 0
    assert ra["timings"]["cache_n"] == 0


HOLDERS = 64  # the holder sequences of up to 4 slots


@pytest.mark.parametrize("knobs,args,bound_mib,bound_count", [
    ({}, (), 8192, None),  # --cache-ram's default: what stock's RAM prompt cache would hold
    ({}, ("--cache-ram", "1"), 1, None),  # below one state of 1.6 MiB: one
    ({}, ("--cache-ram", "0"), None, 16),  # no prompts in RAM: 8 per slot, at least 16
    ({}, ("--cache-ram", "8"), 8, None),
    ({"LLAMA_PREFIX_CACHE_STATES_MIB": "8"}, ("--cache-ram", "4096"), 8, None),
    ({"LLAMA_PREFIX_CACHE_STATES": "5"}, (), 8192, 5),
], ids=["default", "cache-ram-1", "cache-ram-0", "cache-ram-8", "states-mib-8", "states-5"])
def test_hybrid_states_are_bounded_by_memory(knobs, args, bound_mib, bound_count, tmp_path, report):
    """paged/0064: the states a hybrid model's cache keeps are bounded in MiB, by default by what
    --cache-ram would hold, and never beyond the holders; /metrics reports the bound."""
    with serve("gate-qwen35", {**HYBRID_KNOBS, **knobs}, tmp_path, "warm", args=args) as srv:
        (a,) = prompts(srv, 100, n_tails=1)
        ask(srv, a, 0)
        m = srv.metrics()
    assert m["prefix_cache_states"] > 0, m
    per_state = m["prefix_cache_states_bytes"] / m["prefix_cache_states"]
    by_memory = HOLDERS if bound_mib is None else max(1, int((bound_mib << 20) // per_state))
    want = min(HOLDERS, by_memory, bound_count or HOLDERS)
    assert m["prefix_cache_states_max"] == want, (m["prefix_cache_states_max"], want, per_state)
    assert m["prefix_cache_states"] <= want
    report(f"gate-qwen35 {knobs} {' '.join(args)}: states of {per_state / 1024:.1f} KiB, at most "
           f"{m['prefix_cache_states_max']:.0f} kept")


def test_metrics_are_absent_with_the_cache_off(tmp_path):
    with serve("gate-llama", {}, tmp_path, "off") as srv:
        assert not any(name.startswith("prefix_cache") for name in srv.metrics())


SOAK_S = float(os.environ.get("LLAMA_PAGED_SOAK_S", "25"))


@pytest.mark.parametrize("model", ["gate-llama", "gate-qwen35"])
def test_a_soak_of_overlapping_prompts_cancellations_and_pressure(model, tmp_path, report):
    """Clients send prompts that share one of three prefixes (cut at random lengths) for SOAK_S
    seconds in a KV cache of 4096 cells for 4 slots, cancel some streams and erase slots. No
    request fails; a sample of the answers equals a cold run within the tolerance; once every
    slot is erased, no request holds a block and the cells in use are the cached blocks' at most
    (two blocks that begin with the same tokens after the same parent share those cells: a slot
    that reused its own cells for them cached them twice), and the server still serves. That the
    holders keep exactly their blocks' cells is test-server-prefix-cache's (a model of the cache).
    On the hybrid model, the states kept stay within their bound."""
    n_slots, n_clients = 4, 6
    knobs = {**cache_knobs(model), "LLAMA_KV_PAGED": "1"}
    args = ["-np", str(n_slots), "-c", "4096", "--slot-save-path", str(tmp_path)]
    outcomes, answered = [], []
    lock = threading.Lock()
    with serve(model, knobs, tmp_path, "soak", args=args) as srv:
        bases = [tokens_of(srv, gate_words(900, 90 + i))[:600] for i in range(3)]
        tail = tokens_of(srv, gate_words(400, 99))
        stop_at = time.monotonic() + SOAK_S

        def client(seed):
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                base = bases[rng.randrange(3)]
                start = rng.randrange(len(tail) - 40)
                prompt = base[:rng.randint(20, len(base))] + tail[start:start + rng.randint(1, 40)]
                n_predict = rng.randint(1, 16)
                action = rng.random()
                try:
                    if action < 0.25:
                        outcome = sse.stream_and_cancel(srv.port, {"prompt": prompt, "n_predict": n_predict,
                                                                   "temperature": 0, "cache_prompt": True},
                                                        rng.randint(1, 8))
                    elif action < 0.32:
                        srv.post(f"/slots/{rng.randrange(n_slots)}?action=erase", {})
                        outcome = "erased"
                    else:
                        result = srv.post("/completion", {"prompt": prompt, "n_predict": n_predict, "temperature": 0,
                                                          "seed": 1, "cache_prompt": True, "n_probs": 2})
                        outcome = "done"
                        with lock:
                            answered.append((prompt, n_predict, result))
                except Exception as e:  # noqa: BLE001 - every outcome is checked below
                    outcome = f"exception: {e}"
                with lock:
                    outcomes.append(outcome)

        soak.run_clients_then_erase(srv, client, n_clients, n_slots)
        m = srv.metrics()
        after = srv.complete("the server still serves", 4)

    failed = [o for o in outcomes if o not in ("done", "cancelled", "erased")]
    assert not failed, failed[:5]
    assert after["timings"]["predicted_n"] == 4
    block = m["kv_cache_cells"] / m["kv_cache_blocks"]  # LLAMA_KV_PAGED=1 sizes the blocks by the rows
    assert m["prefix_cache_blocks_held"] == 0, m
    assert 0 < m["kv_cache_cells_used"] <= m["prefix_cache_blocks"] * block, m
    if model in gate.HYBRID_GATE_MODELS:
        assert 0 < m["prefix_cache_states"] <= m["prefix_cache_states_max"] <= 64, m  # the holders at most
    reused = sum(r["timings"]["cache_n"] for _, _, r in answered)
    assert reused > 0

    sample = random.Random(1).sample(answered, min(10, len(answered)))
    worst = 0.0
    with serve(model, {}, tmp_path, "cold", args=["-np", "1"]) as cold_srv:
        for prompt, n_predict, warm in sample:
            cold = cold_srv.post("/completion", {"prompt": prompt, "n_predict": n_predict, "temperature": 0,
                                                 "seed": 1, "cache_prompt": False, "n_probs": 2})
            worst = max(worst, compare(model, cold, warm)[1])
    kinds = {k: outcomes.count(k) for k in ("done", "cancelled", "erased")}
    report(f"{KNOB}=1 soak, {model} -np {n_slots} -kvu -c 4096, {n_clients} clients, {SOAK_S:.0f} s: {kinds}; "
           f"{reused} prompt tokens reused; {m['prefix_cache_evictions_total']:.0f} blocks evicted; after the erase "
           f"{m['kv_cache_cells_used']:.0f} cells in use for {m['prefix_cache_blocks']:.0f} cached blocks of {block:.0f}; "
           f"{len(sample)} answers vs cold: largest logprob difference {worst:.3g}")


@pytest.mark.parametrize("model", ["gate-llama", "gate-qwen35"])
def test_requests_arriving_together_compute_their_shared_prefix_once(model, tmp_path, report):
    """In-flight sharing: four prompts that share 600 tokens, admitted in the same step (one
    request carrying the four prompts): the first slot computes the prefix, the others wait for its
    blocks and compute their own tails only. On a hybrid model the first slot's computation ends a
    chunk exactly where the others' prompts leave its own, and the state there is kept for them."""
    with serve(model, cache_knobs(model), tmp_path, "warm", args=["-np", "4"]) as srv:
        ps = prompts(srv, 600, n_tails=4)
        warm = sorted(srv.post("/completion", {"prompt": ps, "n_predict": N_PREDICT, "temperature": 0, "seed": 1,
                                               "cache_prompt": True, "n_probs": 2}), key=lambda r: r["index"])
        m = srv.metrics()
    computed = sum(r["timings"]["prompt_n"] for r in warm)
    tails = sum(len(p) - 600 for p in ps)
    # token-exact: the prefix once, each tail once (the tails differ from their first token on)
    assert computed == 600 + tails, f"{computed} prompt tokens computed for a 600-token prefix and {tails} of tails"
    assert m["prefix_cache_waits_total"] >= 1
    cold = cold_answers(model, tmp_path, [(p, {}) for p in ps])
    worst = max(compare(model, c, w)[1] for c, w in zip(cold, warm))
    report(f"{KNOB}=1 {model}, 4 prompts sharing 600 tokens admitted together: {computed} prompt tokens computed "
           f"(stock: {sum(len(p) for p in ps)}), {m['prefix_cache_waits_total']:.0f} waited; largest logprob "
           f"difference vs cold {worst:.3g}")
