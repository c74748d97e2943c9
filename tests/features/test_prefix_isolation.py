"""Tenants of the prefix cache (issue 22): a cache_salt keeps tenants apart on every path by which a
slot's cells outlive a request, and every request kind gets stock's answer with the cache on.

The promise: a request reuses only cells computed for its own extra key (its cache_salt, its LoRA
adapters and their scales), from the cache or from its slot. timings.cache_n is token-exact, so a
request that got one cell of another tenant's would let that tenant's prompt be probed token by
token; every test here asserts cache_n against what the same tenant computed before.

Paths walked (each by a directed test below, all of them by the fuzz test):
- a request that fails before its attach (a prompt longer than the context, a cancel while it waits
  for blocks another slot computes): its slot still holds its last request's cells;
- cache_prompt: false: stock leaves that request's cells in the slot;
- slot save / restore / erase: a restored slot holds the saving request's cells;
- slot selection by prompt similarity: only over the slots of the request's own tenant;
- LoRA changes between requests, aLoRA (cells after the invocation start are the adapter's);
- embeddings (mean pooling: a prompt that cannot be split), which never attach a prefix;
- a KV cache full of cached blocks: a slot restore evicts them, as a decode does."""
import http.client
import json
import random
import re
import threading
import time

import pytest

from conftest import bin_dir
from harness import lora, sse
from harness.answers import compare
from harness.errors import HarnessError
from harness.prompts import gate_words
from harness.server import HOST, http_get_json, server_refusal
from test_prefix_cache import ask, cache_knobs, prompts, serve, tokens_of
from verify import gate

pytestmark = pytest.mark.build

MODELS = ["gate-llama", "gate-qwen35"]


def lcp(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def answer_tokens(result):
    return [t["id"] for t in result.get("completion_probabilities", [])]


def http_error(srv, path, body):
    """POSTs body and returns the HTTP status of an answer that must be an error."""
    try:
        srv.post(path, body)
    except HarnessError as err:
        return str(err)
    raise AssertionError(f"POST {path} succeeded where it must fail")


def slot_processing(srv, slot):
    status, body = http_get_json(srv.port, "/slots")
    return status == 200 and any(s["id"] == slot and s["is_processing"] for s in body)


def abandon_while_waiting(port, body, wait_s):
    """A streaming request whose client goes away before its first event: while the request waits
    for its slot (blocks another slot computes, budget) the server has sent nothing yet."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", "/completion", body=json.dumps({**body, "stream": True}),
                     headers={"Content-Type": "application/json"})
        time.sleep(wait_s)
    finally:
        conn.close()


@pytest.mark.parametrize("model", MODELS)
def test_a_request_that_fails_before_its_attach_stores_nothing_under_its_salt(model, tmp_path):
    """Tenant A computes a prompt on slot 0; tenant B's over-long prompt fails on slot 0 before it
    reaches the cache; B then sends A's prompt on slot 1: nothing of A's may come back."""
    with serve(model, cache_knobs(model), tmp_path, "warm", args=["-c", "2048"]) as srv:
        (a,) = prompts(srv, 200, n_tails=1)
        ask(srv, a, 0, cache_salt="tenant-a")
        err = http_error(srv, "/completion", {"prompt": (a * 12)[:2100], "n_predict": 4, "id_slot": 0,
                                              "cache_prompt": True, "cache_salt": "tenant-b"})
        assert "exceeds the available context size" in err, err
        probe = ask(srv, a, 1, cache_salt="tenant-b")
        assert probe["timings"]["cache_n"] == 0, f"tenant-b reused {probe['timings']['cache_n']} of tenant-a's tokens"
        # A's own blocks are still A's
        again = ask(srv, a, 0, cache_salt="tenant-a")
        assert again["timings"]["cache_n"] == len(a) - 1


@pytest.mark.parametrize("model", MODELS)
def test_cells_a_request_left_with_cache_prompt_false_are_its_tenants(model, tmp_path):
    """B runs a prompt with cache_prompt: false on the slot A used; stock leaves B's cells there. A's
    next request on that slot must not reuse them."""
    with serve(model, cache_knobs(model), tmp_path, "warm") as srv:
        a, b = tokens_of(srv, gate_words(150, 7)), tokens_of(srv, gate_words(150, 8))
        ask(srv, a, 0, cache_salt="tenant-a")
        ask(srv, b, 0, cache_salt="tenant-b", cache_prompt=False)
        probe = ask(srv, b, 0, cache_salt="tenant-a")
        assert probe["timings"]["cache_n"] == 0, f"tenant-a reused {probe['timings']['cache_n']} of tenant-b's tokens"
        # B's cells are B's: B's own next request on the slot reuses them, as on stock
        own = ask(srv, b + [5], 0, cache_salt="tenant-b")
        assert own["timings"]["cache_n"] == len(b)


@pytest.mark.parametrize("model", MODELS)
def test_a_request_abandoned_while_it_waits_stores_nothing_under_its_salt(model, tmp_path):
    """B leaves its prompt and answer on slot 1. A computes a long prompt on slot 0, two tokens a step
    (LLAMA_MAX_BATCH_TOKENS=2); A's second request, pinned to slot 1, waits (for those blocks, or for
    the step's budget) and its client goes away while it waits: the release of that request must not
    cache slot 1's cells (B's) as A's."""
    knobs = {**cache_knobs(model), "LLAMA_MAX_BATCH_TOKENS": "2"}
    with serve(model, knobs, tmp_path, "warm") as srv:
        long_a = tokens_of(srv, gate_words(4000, 11))[:3000]
        (b,) = prompts(srv, 120, n_tails=1, seed=9)
        b_turn = ask(srv, b, 1, cache_salt="tenant-b")
        background = threading.Thread(target=ask, args=(srv, long_a, 0), kwargs={"cache_salt": "tenant-a"})
        background.start()
        deadline = time.monotonic() + 30
        while not slot_processing(srv, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        abandon_while_waiting(srv.port, {"prompt": long_a + [7, 8, 9], "n_predict": 4, "id_slot": 1,
                                         "cache_prompt": True, "cache_salt": "tenant-a"}, 0.2)
        background.join()
        # B's whole history and a next message: where B's cells (and, hybrid, its state) end
        probe = ask(srv, b + answer_tokens(b_turn) + [5], 0, cache_salt="tenant-a")
        log = srv.log_path.read_text(errors="replace")
    assert probe["timings"]["cache_n"] == 0, f"tenant-a reused {probe['timings']['cache_n']} of tenant-b's tokens"
    # B's release and the abandoned request's both show B's cells: it was released before it started
    n_b = len(b) + len(answer_tokens(b_turn)) - 1
    released = re.findall(r"release: id  1 \| task \d+ \| stop processing: n_tokens = (\d+),", log)
    assert "cancel task" in log and released.count(str(n_b)) == 2, (
        f"the abandoned request was not released while it waited (slot 1 releases: {released}): the test did not "
        "walk its path")


@pytest.mark.parametrize("model", MODELS)
def test_a_restored_slot_keeps_the_salt_of_the_request_it_was_saved_from(model, tmp_path):
    with serve(model, cache_knobs(model), tmp_path, "warm", args=["--slot-save-path", str(tmp_path)]) as srv:
        (a,) = prompts(srv, 200, n_tails=1)
        # the next turn of a chat: on a hybrid model the restored state is at the history's end
        history = a + answer_tokens(ask(srv, a, 0, cache_salt="tenant-a"))[:-1]
        nxt = history + [5]
        srv.post("/slots/0?action=save", {"filename": "a.bin"})
        srv.post("/slots/0?action=erase", {})
        srv.post("/slots/1?action=restore", {"filename": "a.bin"})
        probe = ask(srv, nxt, 1)  # no salt: a tenant of its own
        assert probe["timings"]["cache_n"] == 0, f"a request without salt reused {probe['timings']['cache_n']} restored tokens"
        srv.post("/slots/0?action=restore", {"filename": "a.bin"})
        attached = srv.metrics()["prefix_cache_attached_tokens_total"]
        own = ask(srv, nxt, 0, cache_salt="tenant-a")
        assert own["timings"]["cache_n"] == len(history)
        assert srv.metrics()["prefix_cache_attached_tokens_total"] == attached, "reused from the cache, not the restored slot"


def test_an_owner_left_by_an_earlier_save_does_not_label_a_later_one(tmp_path):
    """A's slot is saved to x.bin with the cache on (x.bin.prefix-owner says tenant-a); B's is saved to
    the same file by a server with the cache off; restored with the cache on, B's cells are nobody's,
    not tenant-a's."""
    model = "gate-llama"
    save = ["--slot-save-path", str(tmp_path)]
    with serve(model, cache_knobs(model), tmp_path, "first", args=save) as srv:
        (a,) = prompts(srv, 200, n_tails=1, seed=3)
        ask(srv, a, 0, cache_salt="tenant-a")
        srv.post("/slots/0?action=save", {"filename": "x.bin"})
    assert (tmp_path / "x.bin.prefix-owner").exists()
    with serve(model, {}, tmp_path, "off", args=save) as srv:
        (b,) = prompts(srv, 200, n_tails=1, seed=4)
        ask(srv, b, 0)
        srv.post("/slots/0?action=save", {"filename": "x.bin"})
    assert not (tmp_path / "x.bin.prefix-owner").exists()
    with serve(model, cache_knobs(model), tmp_path, "second", args=save) as srv:
        srv.post("/slots/1?action=restore", {"filename": "x.bin"})
        probe = ask(srv, b, 1, cache_salt="tenant-a")
    assert probe["timings"]["cache_n"] == 0, f"tenant-a reused {probe['timings']['cache_n']} tokens of a file it did not save"


@pytest.mark.parametrize("model", MODELS)
def test_a_restore_into_a_kv_cache_full_of_cached_blocks_evicts_them(model, tmp_path):
    """-c 1024: cached blocks fill the KV cache; restoring a slot must make room from blocks no
    request holds, as a decode does, not fail where stock (without the cache) restores."""
    with serve(model, {**cache_knobs(model), "LLAMA_KV_PAGED": "1"}, tmp_path, "warm",
               args=["-c", "1024", "--slot-save-path", str(tmp_path)]) as srv:
        (first,) = prompts(srv, 300, n_tails=1, seed=40)
        history = first + answer_tokens(ask(srv, first, 0))[:-1]  # the last token was never decoded
        srv.post("/slots/0?action=save", {"filename": "first.bin"})
        for i in range(5):
            (p,) = prompts(srv, 300, n_tails=1, seed=41 + i)
            ask(srv, p, i % 2)
        srv.post("/slots/0?action=erase", {})
        srv.post("/slots/1?action=erase", {})
        m = srv.metrics()
        assert m["kv_cache_cells_used"] >= 1024 - 300, f"the cached blocks do not fill the cache: {m}"
        restored = srv.post("/slots/0?action=restore", {"filename": "first.bin"})
        assert restored["n_restored"] == len(history)
        # the next turn: on a hybrid model the restored state is at the history's end
        warm = ask(srv, history + [5], 0)
    assert warm["timings"]["cache_n"] == len(history)


@pytest.mark.parametrize("model", MODELS)
def test_slot_selection_by_similarity_sees_only_the_requests_tenant(model, tmp_path):
    """Stock gives a request the idle slot whose last prompt is most like its own, and answers with
    that slot's id: another tenant would learn that someone sent a similar prompt. With the cache
    on only slots of the same tenant are compared."""
    with serve(model, cache_knobs(model), tmp_path, "warm") as srv:
        (a,) = prompts(srv, 200, n_tails=1)
        body = {"prompt": a, "n_predict": 4, "temperature": 0, "cache_prompt": True}
        first = srv.post("/completion", {**body, "cache_salt": "tenant-a"})
        other = srv.post("/completion", {**body, "cache_salt": "tenant-b"})
        same = srv.post("/completion", {**body, "cache_salt": "tenant-a"})
    assert other["id_slot"] != first["id_slot"], "tenant-b was given the slot of tenant-a's similar prompt"
    assert same["id_slot"] == first["id_slot"], "tenant-a was not given its own similar slot"
    assert other["timings"]["cache_n"] == 0


def test_pooled_embeddings_are_refused_naming_the_knob():
    """A mean-pooled prompt cannot be split (stock computes it whole in one ubatch), so it could never
    take cached blocks; and libllama's graph reserve for pooled outputs aborts where n_ubatch is not a
    multiple of the sequences, which the holders make them (stock aborts at -np 3 too)."""
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", {"LLAMA_PREFIX_CACHE": "1"},
                         args=("-c", "4096", "-np", "2", "-kvu", "--embeddings", "--pooling", "mean"),
                         threads=gate.THREADS)
    assert "LLAMA_PREFIX_CACHE=1 does not serve pooled embeddings" in out, out[-2000:]


@pytest.mark.parametrize("model", MODELS)
def test_last_token_embeddings_take_cached_blocks_and_equal_the_cold_ones(model, tmp_path):
    """Last-token pooling splits like a completion: the second request takes the first one's blocks and
    its embedding is the cold one's."""
    args = ["--embeddings", "--pooling", "last"]
    text = gate_words(300, 3)
    with serve(model, cache_knobs(model), tmp_path, "warm", args=args) as srv:
        first = srv.post("/embedding", {"content": text})
        second = srv.post("/embedding", {"content": text})
        assert srv.metrics()["prefix_cache_hits_total"] > 0, "the second request took no cached block"
    with serve(model, {}, tmp_path, "cold", args=args) as srv:
        cold = srv.post("/embedding", {"content": text})

    def vec(r):
        e = r[0]["embedding"]
        return e[0] if isinstance(e[0], list) else e

    for name, r in (("first", first), ("second", second)):
        diff = max(abs(x - y) for x, y in zip(vec(r), vec(cold)))
        assert diff < 1e-3, f"{model}: the {name} embedding differs from the cache-off one by {diff:.3g}"


def lora_server_args(model, tmp_path):
    """Two adapters for the model: a LoRA and an aLoRA that turns on at tokens 7 8 9; neither
    applies unless a request asks for it."""
    model_path = gate.MODELS_DIR / f"{model}.gguf"
    plain = lora.write_lora(model_path, tmp_path / f"{model}-lora.gguf", seed=1)
    alora = lora.write_lora(model_path, tmp_path / f"{model}-alora.gguf", seed=2, invocation_tokens=INVOCATION)
    return ["--lora", str(plain), "--lora", str(alora), "--lora-init-without-apply"]


INVOCATION = [7, 8, 9]
LORA_OFF = [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]
LORA_ON = [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]
ALORA_ON = [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}]


def test_cells_of_another_adapter_are_never_reused(tmp_path, report):
    """The same prompt with and without a LoRA adapter: neither reuses the other's cells, from the
    cache or from the slot, and each answer is its cold run's."""
    model = "gate-llama"
    args = lora_server_args(model, tmp_path)
    with serve(model, cache_knobs(model), tmp_path, "warm", args=args) as srv:
        (a,) = prompts(srv, 200, n_tails=1)
        ask(srv, a, 0, lora=LORA_OFF)
        on_other_slot = ask(srv, a, 1, lora=LORA_ON)
        on_same_slot = ask(srv, a + [5], 0, lora=LORA_ON)
        off_again = ask(srv, a, 1, lora=LORA_OFF)
    assert on_other_slot["timings"]["cache_n"] == 0
    assert on_same_slot["timings"]["cache_n"] == len(a)  # the adapter's own blocks (prompt and answer), from slot 1
    assert off_again["timings"]["cache_n"] == len(a) - 1
    with serve(model, {}, tmp_path, "cold", args=args) as cold_srv:
        cold_off = ask(cold_srv, a, 1, lora=LORA_OFF)
        cold_on = ask(cold_srv, a, 0, lora=LORA_ON)
    assert answer_tokens(cold_off) != answer_tokens(cold_on), "the adapter changes nothing: the test proves nothing"
    compare(model, cold_off, off_again)
    compare(model, cold_on, on_other_slot)
    report(f"LoRA on/off, same prompt, {model}: reuse across adapters 0, within one {len(a) - 1}")


def test_an_alora_request_reuses_nothing_after_the_invocation_start(tmp_path):
    """Cells after an aLoRA invocation start were computed with the adapter; a later aLoRA request
    whose invocation starts further on needs them without it: it may reuse only up to the first
    request's invocation start, from its slot or from the cache, and its answer is its cold run's."""
    model = "gate-llama"
    args = lora_server_args(model, tmp_path)
    with serve(model, cache_knobs(model), tmp_path, "warm", args=args) as srv:
        (base,) = prompts(srv, 200, n_tails=1)
        middle = tokens_of(srv, " " + gate_words(60, 21))
        first = base + INVOCATION + middle
        second = base + INVOCATION + middle + INVOCATION + [11, 12]
        ask(srv, first, 0, lora=ALORA_ON)
        same_slot = ask(srv, second, 0, lora=ALORA_ON)
    # a fresh server, so that only the first request's blocks are cached
    with serve(model, cache_knobs(model), tmp_path, "warm-2", args=args) as srv:
        ask(srv, first, 0, lora=ALORA_ON)
        other_slot = ask(srv, second, 1, lora=ALORA_ON)
    # stock computes the token before the invocation with the adapter: len(base) - 1 cells are without it
    for name, r in (("same slot", same_slot), ("other slot", other_slot)):
        assert r["timings"]["cache_n"] <= len(base) - 1, (
            f"{name}: {r['timings']['cache_n']} tokens reused; the first request's invocation starts at {len(base)}")
    with serve(model, {}, tmp_path, "cold", args=args) as cold_srv:
        cold = ask(cold_srv, second, 1, lora=ALORA_ON)
    compare(model, cold, same_slot)
    compare(model, cold, other_slot)


FUZZ_S = 20.0


@pytest.mark.parametrize("model", MODELS)
def test_a_fuzz_of_tenants_and_request_kinds_never_crosses_a_salt(model, tmp_path, report):
    """Clients of three tenants (two salts and none), with and without a LoRA adapter (a tenant of
    its own: another extra key), send for FUZZ_S seconds prompts that share prefixes across tenants:
    completions pinned to a random slot or not, cache_prompt false, over-long prompts, streams
    cancelled mid-answer, requests abandoned while they wait, slot erase / save / restore, and the
    next turn of an earlier answer. After every answer: cache_n is at most the longest prefix the
    prompt shares with what an earlier request of the same salt and adapters computed (its prompt
    and answer; a cancelled one's answer is unknown, so anything after its whole prompt may match,
    up to its n_predict). A sample of the answers equals a cold run within the tolerance."""
    n_slots, n_clients = 3, 5
    lora_args = lora_server_args(model, tmp_path) if model == "gate-llama" else []
    args = ["-np", str(n_slots), "-c", "3072", "--slot-save-path", str(tmp_path), *lora_args]
    knobs = {**cache_knobs(model), "LLAMA_KV_PAGED": "1"}
    salts = [None, "tenant-a", "tenant-b"]
    computed = {}  # (salt, lora) -> [(request, tokens, n_unknown_after)] computed so far (sent, not only answered)
    violations, outcomes, answered, chances = [], [], [], []
    lock = threading.Lock()
    saved = {}  # file -> key of the slot's last request when saved (informational)

    with serve(model, knobs, tmp_path, "fuzz", args=args) as srv:
        bases = [tokens_of(srv, gate_words(700, 60 + i))[:400] for i in range(3)]
        tail = tokens_of(srv, gate_words(300, 69))
        stop_at = time.monotonic() + FUZZ_S

        def bound(key, prompt, own):
            best = 0
            for rid, toks, n_unknown in computed.get(key, []):
                if rid == own:
                    continue
                n = lcp(prompt, toks)
                if n == len(toks) and n_unknown:
                    n = min(len(prompt), n + n_unknown)
                best = max(best, n)
            return best

        def record(rid, key, toks, n_unknown=0):
            with lock:
                computed.setdefault(key, []).append((rid, list(toks), n_unknown))

        def check(rid, key, prompt, result):
            # a request may attach what a request of its tenant sent after it computed (it waited for
            # a slot): the bound is taken when the answer is in
            with lock:
                limit = bound(key, prompt, rid)
                cache_n = result["timings"]["cache_n"]
                if cache_n > limit:
                    violations.append(f"{key}: cache_n {cache_n} > {limit} shared with its own tenant and adapters")
                # a chance to leak: another key computed more of this prompt than its own key did
                if any(bound(other, prompt, rid) > limit for other in computed if other != key):
                    chances.append(rid)

        def client(seed):
            rng = random.Random(seed)
            last = None
            while time.monotonic() < stop_at:
                salt = rng.choice(salts)
                adapter = LORA_ON if lora_args and rng.random() < 0.25 else (LORA_OFF if lora_args else None)
                key = (salt, json.dumps(adapter))
                base = bases[rng.randrange(3)]
                start = rng.randrange(len(tail) - 40)
                prompt = base[:rng.randint(10, len(base))] + tail[start:start + rng.randint(1, 40)]
                if last is not None and last[0] == key and rng.random() < 0.3:
                    prompt = last[1] + tail[start:start + rng.randint(1, 10)]  # the next turn of a chat
                n_predict = rng.randint(1, 12)
                body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "seed": 1, "cache_prompt": True,
                        "n_probs": 2}
                if salt is not None:
                    body["cache_salt"] = salt
                if adapter is not None:
                    body["lora"] = adapter
                if rng.random() < 0.5:
                    body["id_slot"] = rng.randrange(n_slots)
                action = rng.random()
                rid = (seed, len(outcomes), time.monotonic())
                try:
                    if action < 0.15:
                        record(rid, key, prompt, n_predict)
                        outcome = sse.stream_and_cancel(srv.port, body, rng.randint(1, 4))
                    elif action < 0.22:
                        record(rid, key, prompt, n_predict)
                        abandon_while_waiting(srv.port, body, rng.uniform(0.0, 0.3))
                        outcome = "abandoned"
                    elif action < 0.27:
                        body["prompt"] = (prompt * (3100 // len(prompt) + 1))[:3100]
                        err = http_error(srv, "/completion", body)
                        outcome = "too long" if "exceeds the available context size" in err else f"unexpected: {err}"
                    elif action < 0.31:
                        srv.post(f"/slots/{rng.randrange(n_slots)}?action=erase", {})
                        outcome = "erased"
                    elif action < 0.36:
                        slot, name = rng.randrange(n_slots), f"fuzz-{rng.randrange(3)}.bin"
                        srv.post(f"/slots/{slot}?action=save", {"filename": name})
                        with lock:
                            saved[name] = slot
                        outcome = "saved"
                    elif action < 0.41 and saved:
                        with lock:
                            name = rng.choice(sorted(saved))
                        srv.post(f"/slots/{rng.randrange(n_slots)}?action=restore", {"filename": name})
                        outcome = "restored"
                    else:
                        if action < 0.5:
                            body["cache_prompt"] = False
                        record(rid, key, prompt, n_predict)
                        result = srv.post("/completion", body)
                        check(rid, key, prompt, result)
                        record(rid, key, prompt + answer_tokens(result))
                        last = (key, prompt + answer_tokens(result))
                        outcome = "done"
                        with lock:
                            answered.append((body, result))
                except Exception as e:  # noqa: BLE001 - every outcome is checked below
                    outcome = f"exception: {e}"
                with lock:
                    outcomes.append(outcome)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = srv.complete("the server still serves", 4)

    kinds = {}
    for o in outcomes:
        kinds[o] = kinds.get(o, 0) + 1
    failed = [o for o in outcomes if o not in ("done", "cancelled", "abandoned", "too long", "erased", "saved",
                                               "restored")]
    assert not violations, f"{len(violations)} requests reused another tenant's cells: {violations[:5]}"
    assert not failed, failed[:5]
    assert after["timings"]["predicted_n"] == 4
    assert len(chances) >= 5, f"only {len(chances)} requests could have reused another tenant's cells: the fuzz proves little"
    reused = sum(r["timings"]["cache_n"] for _, r in answered)
    assert reused > 0, "nothing was reused: the fuzz walked no cache path"

    sample = random.Random(1).sample(answered, min(8, len(answered)))
    worst = 0.0
    with serve(model, {}, tmp_path, "cold", args=["-np", "1", *lora_args]) as cold_srv:
        for body, warm in sample:
            cold = cold_srv.post("/completion", {**body, "cache_prompt": False, "id_slot": 0})
            worst = max(worst, compare(model, cold, warm)[1])
    report(f"prefix-cache tenant fuzz, {model} -np {n_slots} -kvu, {n_clients} clients, {FUZZ_S:.0f} s: {kinds}; "
           f"{reused} prompt tokens reused, none across salts or adapters in {len(chances)} requests that could have; {len(sample)} answers vs cold: largest "
           f"logprob difference {worst:.3g}")
