"""The prefix cache inside the KV memory budget (LLAMA_PREFIX_CACHE=1 with LLAMA_KV_MAX_MIB, paged
0060-0061, issue 28 item 1).

Cached blocks and the states kept at their ends count in the budget like any cell, as memory to
take back: what no request holds (vLLM's free queue of blocks that still hold their contents) goes,
the cells idle slots keep first and then cached blocks least recently used first, before a request
waits for room. So the cache fills the budget and gives it up on demand: requests are served as
without the cache, the caches never pass the budget, and what fits stays cached.

Before paged/0061 the server refused the pair at start ("cached blocks are not counted in its
budget"); before paged/0060 the budget's minimum counted the cache's holder sequences as sequences
that must be able to start (105 MiB for two slots of gate-qwen35)."""
import math
import os
import random
import re
import threading
import time

import pytest

from conftest import bin_dir
from harness import builds, server_log, soak, sse
from harness.answers import compare
from harness.metrics_poller import MetricsPoller
from harness.prompts import gate_words
from harness.server import LlamaServer
from verify import gate

pytestmark = pytest.mark.build

MODELS = ["gate-llama", "gate-qwen35"]
N_SLOTS, CTX, N_PREDICT = 2, 8192, 8
BLOCK = 16
N_PROMPTS = 8
PROMPT_WORDS = 260  # about 330 tokens


def args():
    return ["-c", str(CTX), "-np", str(N_SLOTS), "-kvu", "-t", str(gate.THREADS), "--metrics", "-cram", "0"]


def knobs(budget_mib=None):
    k = {"LLAMA_PREFIX_CACHE": "1", "LLAMA_KV_PAGED": "1", "LLAMA_KV_BLOCK_SIZE": str(BLOCK)}
    if budget_mib is not None:
        k["LLAMA_KV_MAX_MIB"] = str(budget_mib)
    return k


def bytes_per_token_and_state(model, tmp_path):
    """The KV bytes of a token and the bytes of a recurrent state (0 without), from the buffers a
    paged server allocates with N_SLOTS sequences."""
    log = tmp_path / f"sizes-{model}.log"
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", [*args(), "-lv", "4"],
                     env=builds.run_env("paged", {"LLAMA_KV_PAGED": "1"}), log_path=log):
        pass
    sizes = server_log.buffer_sizes(log.read_text(errors="replace"))["by_kind"]
    return sizes["KV"] * 2**20 / CTX, sizes.get("RS", 0.0) * 2**20 / N_SLOTS


def distinct_prompts():
    return [f"{i} " + gate_words(PROMPT_WORDS, 300 + i) for i in range(N_PROMPTS)]


def ask(srv, prompt, slot):
    return srv.complete(prompt, N_PREDICT, n_probs=2, id_slot=slot)


@pytest.mark.parametrize("model", MODELS)
def test_the_cache_fills_the_budget_and_gives_it_up_before_a_request_waits(model, tmp_path, report):
    """8 prompts of ~330 tokens one after another, alternating slots, under a budget that holds
    the slots' states and about two and a half of them: every request is served at once (none
    waits, none is stopped), the caches stay inside the budget, cached blocks are evicted for room,
    and the last prompt asked again is a hit with the answer of a server without the cache."""
    per_token, per_state = bytes_per_token_and_state(model, tmp_path)
    # the slots' states, two kept ones, and about 850 tokens of cells
    budget_mib = int((N_SLOTS + 2) * per_state / 2**20 + 850 * per_token / 2**20) + 1
    prompts = distinct_prompts()
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", args(), env=builds.run_env("paged", knobs(budget_mib)),
                     log_path=tmp_path / "budget.log", label="budget") as srv:
        answers, reclaimable = [], []
        with MetricsPoller(srv, ["kv_cache_used_bytes"]) as poll:
            for i, p in enumerate(prompts):
                answers.append(ask(srv, p, i % N_SLOTS))
                m = srv.metrics()
                reclaimable.append((m["kv_budget_reclaimable_bytes"], m["kv_cache_used_bytes"]))
            again = ask(srv, prompts[-1], 0)
        peak = max(poll.peak["kv_cache_used_bytes"], m["kv_cache_used_bytes"])
        m = srv.metrics()
        log = srv.log_path.read_text(errors="replace")
    n_tokens = sum(a["timings"]["prompt_n"] + a["timings"]["predicted_n"] for a in answers)
    report(f"LLAMA_PREFIX_CACHE=1 LLAMA_KV_MAX_MIB={budget_mib} {model} -np {N_SLOTS} -kvu: {N_PROMPTS} prompts, "
           f"{n_tokens} tokens in all ({n_tokens * per_token / 2**20:.1f} MiB of cells): peak {peak / 2**20:.2f} MiB, "
           f"{m['kv_budget_reclaimed_blocks_total']:.0f} cached blocks evicted for room, the last prompt again reused "
           f"{again['timings']['cache_n']} of its {answers[-1]['timings']['prompt_n']} tokens")
    assert "does not work with LLAMA_KV_MAX_MIB" not in log
    assert all(a["timings"]["predicted_n"] == N_PREDICT and not a["truncated"] for a in answers + [again])
    room_for_cells = budget_mib * 2**20 - (N_SLOTS + 2) * per_state
    assert n_tokens * per_token > 2 * room_for_cells, "the prompts fit the budget: nothing had to be evicted"
    assert m["kv_budget_reclaimed_blocks_total"] > 0
    assert m["kv_budget_preemptions_total"] == 0
    assert "no room for" not in log, "a request waited while cached blocks could have gone"
    # the Prometheus text has 6 significant digits
    assert peak <= budget_mib * 2**20 * (1 + 1e-5)
    # between requests no request holds anything: what the cache keeps is reclaimable, a good part
    # of what the caches hold (all but the slots' own states)
    assert all(r > 0.25 * used for r, used in reclaimable), reclaimable
    # what fits stays cached: the last prompt is a hit (its last token is computed for its logits;
    # on a hybrid model from the state kept before it)
    assert again["timings"]["cache_n"] >= answers[-1]["timings"]["prompt_n"] - BLOCK - 1, again["timings"]
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", args(), env=builds.run_env("paged", {}),
                     log_path=tmp_path / "cold.log", label="cold") as srv:
        cold = ask(srv, prompts[-1], 0)
    compare(model, cold, again)


def test_a_waiting_prompt_keeps_the_cached_blocks_it_starts_with(tmp_path, report):
    """A prompt that needs cached blocks evicted to fit keeps the ones it starts with, even when
    they are the least recently used: A (a prefix P and a short tail), then X (another prompt),
    fill the budget; B (P and a long tail) needs room, which A's tail and X's blocks give, not P's."""
    model = "gate-llama"
    per_token, _ = bytes_per_token_and_state(model, tmp_path)
    budget_mib = 2  # about 1000 tokens of gate-llama's cells
    n_room = int(budget_mib * 2**20 / per_token)
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", args(), env=builds.run_env("paged", knobs(budget_mib)),
                     log_path=tmp_path / "hold.log", label="hold") as srv:
        def tokens(text):
            return srv.post("/tokenize", {"content": text})["tokens"]
        p = tokens(gate_words(330, 801))[:400]
        a = p + tokens(" " + gate_words(12, 802))
        x = tokens("x " + gate_words(330, 803))[:n_room - len(a) - 2 * N_PREDICT - 60]
        b = p + tokens(" " + gate_words(200, 804))[:250]
        ask(srv, a, 0)
        ask(srv, x, 1)
        before = srv.metrics()
        warm = ask(srv, b, 1)
        m = srv.metrics()
    report(f"LLAMA_KV_MAX_MIB={budget_mib} ({n_room} tokens) {model}: A {len(a)} tokens, X {len(x)}, then B {len(b)} "
           f"starting with A's {len(p)}: {m['kv_budget_reclaimed_blocks_total'] - before['kv_budget_reclaimed_blocks_total']:.0f} "
           f"blocks evicted for B, B reused {warm['timings']['cache_n']}")
    assert m["kv_budget_reclaimed_blocks_total"] > before["kv_budget_reclaimed_blocks_total"], "B fitted without evicting"
    assert warm["timings"]["cache_n"] == len(p), warm["timings"]
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", args(), env=builds.run_env("paged", {}),
                     log_path=tmp_path / "cold.log", label="cold") as srv:
        cold = ask(srv, b, 1)
    compare(model, cold, warm)


def test_the_budgets_minimum_counts_the_slots_not_the_caches_holders():
    """paged/0060: the holders (64 sequences for 2 slots) take nothing until the cache keeps
    something under them; 8 MiB hold gate-qwen35's 2 slots (3.2 MiB to start)."""
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args(), env=builds.run_env("paged", knobs(8)),
                     label="minimum") as srv:
        r = srv.complete("the budget holds two slots", N_PREDICT)
        m = srv.metrics()
    assert r["timings"]["predicted_n"] == N_PREDICT
    assert m["kv_budget_bytes"] == pytest.approx(8 * 2**20, rel=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_a_prompt_larger_than_the_budget_is_refused_at_once(model):
    """Cached blocks cannot make room for what the whole budget cannot hold: HTTP 400 naming the
    knob, not a wait for ever."""
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", args(), env=builds.run_env("paged", knobs(4)),
                     label="too-large") as srv:
        with pytest.raises(Exception) as refused:
            srv.complete(gate_words(2500, 9), N_PREDICT)
        ok = srv.complete("and the server goes on", N_PREDICT)
    assert "more than LLAMA_KV_MAX_MIB=4 allows" in str(refused.value)
    assert ok["timings"]["predicted_n"] == N_PREDICT


SOAK_S = float(os.environ.get("LLAMA_PAGED_SOAK_S", "25"))


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("model", MODELS)
def test_a_preempted_request_goes_on_from_what_the_cache_kept_of_it(model, tmp_path, report):
    """Issue 28 item 2 with the cache: two generations of ~930 tokens under a budget for ~1000.
    When neither has room the newest is preempted: its blocks stay cached but no longer held, the
    older one takes back what it needs of them, and the newest goes on from what survived (on an
    attention model; a hybrid model needs a state there and none is kept at preemption: it computes
    its tokens again from the start). Both answers are whole and each is the one the same request
    gets alone."""
    per_token, per_state = bytes_per_token_and_state(model, tmp_path)
    # on a hybrid model the slots' states, and two the cache keeps (the second prompt starts next to
    # the states the first one left)
    n_states = N_SLOTS + 2 if per_state else 0
    budget_mib = math.ceil((n_states * per_state + 1000 * per_token) / 2**20)
    room = int((budget_mib * 2**20 - n_states * per_state) / per_token)
    prompts = distinct_prompts()[:2]
    n_predict = room - 400
    body = {"n_predict": n_predict, "ignore_eos": True, "temperature": 0, "n_probs": 2, "cache_prompt": True}
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", args(), env=builds.run_env("paged", knobs()),
                     log_path=tmp_path / "alone.log") as srv:
        alone = [srv.post("/completion", {**body, "prompt": p}) for p in prompts]
    results = [None, None]
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", args(),
                     env=builds.run_env("paged", knobs(budget_mib)), log_path=tmp_path / "server.log") as srv:
        def one(i):
            results[i] = srv.post("/completion", {**body, "prompt": prompts[i]})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.2)  # the second is the newest
        for t in threads:
            t.join()
        m = srv.metrics()
        log = (tmp_path / "server.log").read_text(errors="replace")
    resumed = [int(x) for x in re.findall(r"goes on from its (\d+) prompt and generated tokens", log)]
    report(f"LLAMA_PREFIX_CACHE=1 LLAMA_KV_MAX_MIB={budget_mib} ({room} cells) {model} -np 2 -kvu, n_predict {n_predict} "
           f"each: {m['kv_budget_preemptions_total']:.0f} preempted at {resumed} tokens, "
           f"{m['kv_budget_recomputed_tokens_total']:.0f} computed again, {m['kv_budget_reclaimed_blocks_total']:.0f} "
           f"blocks taken back")
    assert all(r is not None for r in results), results
    for r in results:
        assert r["timings"]["predicted_n"] == n_predict and not r["truncated"], r["timings"]
    assert m["kv_budget_preemptions_total"] >= 1 and resumed, m
    for want, got, what in zip(alone, results, ("the older answer", "the preempted answer")):
        compare(model, want, got, what)
    assert results[1]["tokens_evaluated"] == alone[1]["tokens_evaluated"]
    if model not in gate.HYBRID_GATE_MODELS:
        # what the older one did not take back of the newest's blocks serves it again
        assert m["kv_budget_recomputed_tokens_total"] < sum(resumed), (m["kv_budget_recomputed_tokens_total"], resumed)


@pytest.mark.parametrize("model", MODELS)
def test_a_soak_of_shared_prefixes_under_a_budget_serves_everything(model, tmp_path, report):
    """4 slots, 6 clients for SOAK_S seconds: prompts that start with one of 3 shared prefixes (so
    the cache has hits to give), two tenants (cache_salt), streams cancelled midway, slots erased,
    under a budget of the slots' states and about two of the largest requests. Every request is
    served whole: when the budget cannot hold the work under way the newest is preempted and goes
    on later (issue 28 item 2), never stopped or truncated; the caches never pass the budget;
    cached blocks hit and are evicted for room; afterwards the server still serves."""
    n_slots, n_clients = 4, 6
    soak_args = ["-c", str(n_slots * 2048), "-np", str(n_slots), "-kvu", "-t", str(gate.THREADS), "--metrics",
                 "--slot-save-path", str(tmp_path)]
    per_token, per_state = bytes_per_token_and_state(model, tmp_path)
    budget_mib = math.ceil((n_slots * per_state + 2 * 950 * per_token) / 2**20)
    prefixes = [gate_words(150 + 100 * i, 700 + i) for i in range(3)]
    outcomes, sent, reused, lock = [], [], [], threading.Lock()
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", soak_args,
                     env=builds.run_env("paged", knobs(budget_mib)), log_path=tmp_path / "soak.log", label="soak") as srv:
        stop_at = time.monotonic() + SOAK_S

        def client(seed):
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                prompt = rng.choice(prefixes) + " " + gate_words(rng.randint(5, 300), rng.randint(0, 10**6))
                salt = rng.choice(["a", "b"])
                body = {"prompt": prompt, "n_predict": rng.randint(1, 32), "temperature": 0, "cache_prompt": True,
                        "cache_salt": salt}
                with lock:
                    sent.append((salt, prompt))
                    n_sent = len(sent)
                action = rng.random()
                try:
                    if action < 0.25:
                        outcome = sse.stream_and_cancel(srv.port, body, rng.randint(1, 6))
                    elif action < 0.32:
                        srv.post(f"/slots/{rng.randrange(n_slots)}?action=erase", {})
                        outcome = "erased"
                    else:
                        result = srv.post("/completion", body)
                        with lock:
                            # any prompt sent before this answer came may have been computed before it
                            reused.append((n_sent - 1, result["timings"]["cache_n"], len(sent)))
                        outcome = "done" if result["timings"]["predicted_n"] >= 1 else f"no token: {result}"
                        if result["truncated"]:
                            outcome = "truncated"  # stopped to make room: preemption lets none be
                except Exception as e:  # noqa: BLE001 - every outcome is checked below
                    outcome = f"exception: {e}"
                if "503" in outcome and "LLAMA_KV_MAX_MIB" in outcome:
                    outcome = "stopped"
                with lock:
                    outcomes.append(outcome)

        with MetricsPoller(srv, ["kv_cache_used_bytes"], period_s=0.2) as poll:
            soak.run_clients_then_erase(srv, client, n_clients, n_slots)
        peak = [poll.peak["kv_cache_used_bytes"]]
        m = srv.metrics()
        after = srv.complete("the server still serves", 4)
        # what each request reused must be a prefix it shares with a prompt its own tenant sent before
        # its answer came (prompts with the BOS the server adds)
        tokenized = [srv.post("/tokenize", {"content": p, "add_special": True})["tokens"] for _, p in sent]
    crossed = []
    for i, cache_n, n_before in reused:
        own = max((common_prefix(tokenized[i], tokenized[j]) for j in range(n_before) if j != i and sent[j][0] == sent[i][0]),
                  default=0)
        if cache_n > own:
            crossed.append((i, cache_n, own))
    kinds = {}
    for o in outcomes:
        key = o if o in ("done", "cancelled", "erased", "stopped", "truncated") else "error"
        kinds[key] = kinds.get(key, 0) + 1
    report(f"LLAMA_PREFIX_CACHE=1 LLAMA_KV_MAX_MIB={budget_mib} soak, {model} -np {n_slots} -kvu, {n_clients} clients, "
           f"{SOAK_S:.0f} s: {kinds}; peak {peak[0] / 2**20:.2f} MiB; {m['prefix_cache_hits_total']:.0f} of "
           f"{m['prefix_cache_queries_total']:.0f} prompt tokens hit, {m['kv_budget_reclaimed_blocks_total']:.0f} blocks "
           f"evicted for room, {m['kv_budget_preemptions_total']:.0f} requests preempted, "
           f"{m['kv_budget_recomputed_tokens_total']:.0f} tokens computed again")
    failed = [o for o in outcomes if o not in ("done", "cancelled", "erased")]
    assert not failed, [f[:400] for f in failed[:5]]
    assert not crossed, f"requests reused more than their tenant's earlier prompts share with them: {crossed[:5]}"
    assert kinds.get("done", 0) >= n_clients, kinds
    assert m["kv_budget_reclaimed_blocks_total"] > 0, m
    if model not in gate.HYBRID_GATE_MODELS:
        # on a hybrid model a hit needs a kept state, of which this budget holds few (about six of
        # 1.57 MiB): 0-4% of prompt tokens hit there, sometimes none (docs/PREFIX_CACHE.md)
        assert m["prefix_cache_hits_total"] > 0, m
    # the Prometheus text has 6 significant digits
    assert peak[0] <= budget_mib * 2**20 * (1 + 1e-5)
    assert after["timings"]["predicted_n"] >= 1
