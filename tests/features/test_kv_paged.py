"""Paged KV memory (LLAMA_KV_PAGED, paged 0007-0017): the KV cache and the recurrent state take
physical memory only where they are written and give it back when their sequences end. The
greedy-md5 and server gates run the knob on every gate model against stock (bit-exact per slot);
this file checks the memory itself, what /metrics says of it, the block placement, the budget
(LLAMA_KV_MAX_MIB), a soak of random requests, and the knobs' bad values."""
import math
import os
import random
import subprocess
import threading
import time

import pytest

from conftest import bin_dir
from harness import builds, procmem, server_log, soak, sse
from harness.metrics_poller import MetricsPoller
from harness.answers import compare
from harness.prompts import gate_words
from harness.server import LlamaServer
from verify import gate

pytestmark = pytest.mark.build

KNOB = "LLAMA_KV_PAGED"


def idle_server(knobs, tmp_path):
    """(VmRSS in MiB of an idle server after start-up, its KV + recurrent-state buffers in MiB)."""
    log = tmp_path / f"server-{'-'.join(knobs) or 'no-knob'}.log"
    # -lv 4: the buffer sizes are llama INFO lines; 8 slots of 8192 tokens, the model's maximum
    args = ["-c", "65536", "-np", "8", "-t", str(gate.THREADS), "-lv", "4"]
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args,
                     env=builds.run_env("paged", knobs), log_path=log) as srv:
        rss = procmem.vm_status(srv.pid)["VmRSS"] / 1024
        srv.complete("warm up the caches", 8)  # a request, then idle again
        after = procmem.vm_status(srv.pid)["VmRSS"] / 1024
    sizes = server_log.buffer_sizes(log.read_text(errors="replace"))["by_kind"]
    return rss, after, sizes.get("KV", 0.0) + sizes.get("RS", 0.0), log.read_text(errors="replace")


def test_an_idle_server_holds_no_cache_memory(tmp_path, report):
    full, full_after, cache_mib, _ = idle_server({}, tmp_path)
    paged, paged_after, paged_cache_mib, log = idle_server({KNOB: "1"}, tmp_path)
    report(f"{KNOB}=1, gate-qwen35 -c 65536 -np 8: KV + RS buffers {cache_mib:.0f} MiB; resident at idle "
           f"{full:.0f} -> {paged:.0f} MiB, after a request {full_after:.0f} -> {paged_after:.0f} MiB")
    assert cache_mib == paged_cache_mib and cache_mib >= 100, f"KV + RS buffers: {cache_mib} / {paged_cache_mib} MiB"
    assert "CPU_Paged KV buffer size" in log and "CPU_Paged RS buffer size" in log, "the caches are not paged"
    # without the knob the clear makes the whole cache resident; with it, none of it is
    saved = full - paged
    assert saved >= 0.95 * cache_mib, (f"{KNOB}=1 saved {saved:.0f} MiB of resident memory at idle, "
                                       f"the caches are {cache_mib:.0f} MiB (RSS {full:.0f} -> {paged:.0f} MiB)")
    # a short request commits a few pages, not the cache
    assert full_after - paged_after >= 0.9 * cache_mib, (full_after, paged_after, cache_mib)


def refusal(knobs, model="gate-llama", extra_args=()):
    """The stderr of llama-completion started with knobs (and extra_args), which must refuse to run."""
    cmd = gate.completion_cmd(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", "hello", "on") + list(extra_args)
    proc = subprocess.run(cmd, env={**os.environ, **knobs}, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode != 0, gate.shell_line(cmd, knobs)
    return proc.stderr.decode(errors="replace")


@pytest.mark.parametrize("value", ["2", "yes", "-1"])
def test_a_bad_value_is_a_clear_error(value):
    """Every time: the tool's log can lose its tail at exit (upstream issue 22142), the refusal
    itself must not be lost with it."""
    for _ in range(5):
        assert f"invalid value '{value}' for {KNOB}: expected 0 or 1" in refusal({KNOB: value})


@pytest.mark.parametrize("model", ["gate-llama", "gate-qwen35"])
def test_memory_follows_the_sequences_and_comes_back(model, report):
    """paged 0009: 4 sequences fill a cache, are cut and removed; the paged mappings' resident
    pages (smaps) follow, in both KV modes, flash attention on and off, f16, q8_0 and q4_0."""
    cmd = [str(bin_dir("paged") / "test-kv-paged-release"), "-m", str(gate.MODELS_DIR / f"{model}.gguf"),
           "-t", str(gate.THREADS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in proc.stdout.splitlines():
        if "removing it gave back" in line or "grew" in line:
            report(f"{KNOB}=1 {model} {line}")


def server_prompts(n, words):
    """n prompts that share nothing, so every slot writes its own cells."""
    return [f"{i} " + gate_words(words, i + 100) for i in range(n)]


@pytest.mark.parametrize("kv_unified", [False, True], ids=["per-slot-KV", "unified-KV"])
def test_a_server_gives_back_what_erased_slots_held(kv_unified, tmp_path, report):
    """Slots that finish keep their cache for the next prompt; erasing them gives it back. /metrics
    (paged 0011) says the same as the kernel."""
    n_slots = 4
    # --slot-save-path: the server takes slot actions (erase) only with one
    args = ["-c", "16384", "-np", str(n_slots), "-t", str(gate.THREADS), "-lv", "4", "--slot-save-path", str(tmp_path),
            "--metrics", *(["-kvu"] if kv_unified else [])]
    log = tmp_path / "server.log"
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args,
                     env=builds.run_env("paged", {KNOB: "1"}), log_path=log) as srv:
        idle, n_mappings = procmem.paged_resident(srv.pid)
        assert n_mappings > 0, "no paged mapping in the server's smaps"
        idle_metrics = srv.metrics()
        results = srv.complete_concurrently(server_prompts(n_slots, 600), n_predict=16)
        busy, busy_metrics = procmem.paged_resident(srv.pid)[0], srv.metrics()
        for slot in range(n_slots):
            srv.post(f"/slots/{slot}?action=erase", {})
        erased, erased_metrics = procmem.paged_resident(srv.pid)[0], srv.metrics()
    # the last generated token is sampled, never decoded: it has no cell
    tokens = sum(r["timings"]["prompt_n"] + r["timings"]["predicted_n"] - 1 for r in results)
    sizes = server_log.buffer_sizes(log.read_text(errors="replace"))["by_kind"]
    needed = tokens * sizes["KV"] / 16384 + n_slots * sizes["RS"] / n_slots
    mode = "unified" if kv_unified else "per-slot"
    report(f"{KNOB}=1 gate-qwen35 {mode} KV, {n_slots} slots, {tokens} tokens: caches resident idle {idle / 1024:.1f} "
           f"MiB, after the requests {busy / 1024:.1f} MiB (they need {needed:.1f}), slots erased {erased / 1024:.1f} MiB")
    assert busy / 1024 >= 0.9 * needed and busy / 1024 <= 1.1 * needed + 1, (busy / 1024, needed)
    assert erased <= idle + 0.05 * (busy - idle), (idle, busy, erased)

    # /metrics: cells and states in use, and bytes in use within a page per row of the kernel's count
    assert idle_metrics["kv_cache_cells_used"] == 0 and idle_metrics["kv_cache_used_bytes"] == 0, idle_metrics
    assert busy_metrics["kv_cache_cells_used"] == tokens, (busy_metrics, tokens)
    assert busy_metrics["recurrent_states_used"] == n_slots, busy_metrics
    # the server prints 6 significant digits
    assert busy_metrics["kv_cache_usage_perc"] == pytest.approx(tokens / busy_metrics["kv_cache_cells"], rel=1e-5), \
        busy_metrics
    assert busy_metrics["kv_cache_bytes"] / 2**20 == pytest.approx(sizes["KV"] + sizes["RS"], rel=1e-3), busy_metrics
    used_kib = busy_metrics["kv_cache_used_bytes"] / 1024
    assert 0.97 * busy <= used_kib <= busy, (used_kib, busy)
    assert erased_metrics["kv_cache_cells_used"] == 0 and erased_metrics["recurrent_states_used"] == 0, erased_metrics
    assert erased_metrics["kv_cache_used_bytes"] == 0, erased_metrics

    # blocks (paged 0016, 0017): each slot's tokens in blocks of its own, in both KV modes; 16 cells
    # a block or more, where 16 of this small model's rows do not span 4 pages
    block = busy_metrics["kv_cache_cells"] / busy_metrics["kv_cache_blocks"]
    assert block >= 16 and block == 2 ** int(math.log2(block)), busy_metrics
    blocks = sum(-(-(r["timings"]["prompt_n"] + r["timings"]["predicted_n"] - 1) // int(block)) for r in results)
    assert busy_metrics["kv_cache_blocks_used"] == blocks, (busy_metrics, blocks)
    assert erased_metrics["kv_cache_blocks_used"] == 0, erased_metrics


def test_metrics_of_caches_that_are_not_paged_are_stock(tmp_path):
    """Without the knob /metrics is stock's: no cache lines."""
    args = ["-c", "4096", "-np", "2", "-t", str(gate.THREADS), "--metrics"]
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", args, log_path=tmp_path / "server.log") as srv:
        names = set(srv.metrics())
    assert names and not {n for n in names if n.startswith("kv_cache") or n.startswith("recurrent_states")}, names


def cache_sizes(tmp_path, args):
    """{kind: MiB} of the caches a gate-qwen35 server with args allocates (a paged start, no request)."""
    log = tmp_path / "sizes.log"
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", [*args, "-lv", "4"],
                     env=builds.run_env("paged", {KNOB: "1"}), log_path=log):
        pass
    return server_log.buffer_sizes(log.read_text(errors="replace"))["by_kind"]


def budget_args(kv_unified, n_slots, ctx):
    return ["-c", str(ctx), "-np", str(n_slots), *(["-kvu"] if kv_unified else []),
            "-t", str(gate.THREADS), "--metrics", "-cram", "0"]


def run_concurrently(fns):
    """Runs each fn in its own thread; [("ok", result) or ("error", message)] in order."""
    outcomes = [None] * len(fns)

    def one(i):
        try:
            outcomes[i] = ("ok", fns[i]())
        except Exception as e:  # noqa: BLE001 - each outcome is checked by the caller
            outcomes[i] = ("error", str(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
        time.sleep(0.2)  # arrival order is the order of fns
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.parametrize("kv_unified", [True, False], ids=["kvu", "per-slot"])
def test_under_a_budget_requests_wait_for_memory_and_all_are_served(kv_unified, tmp_path, report):
    """LLAMA_KV_MAX_MIB (paged 0012, 0019): 4 concurrent prompts, a budget for about two of them.
    The server starts a prompt only when all of it fits and the others wait: every request is
    served, with the text the same requests get without a budget; the caches never pass the
    budget; llama_decode never has to refuse a batch."""
    n_slots, ctx, n_predict = 4, 16384, 16
    args = budget_args(kv_unified, n_slots, ctx)
    sizes = cache_sizes(tmp_path, args)
    per_token = sizes["KV"] * 2**20 / ctx
    per_state = sizes["RS"] * 2**20 / n_slots
    prompts = server_prompts(n_slots, 600)  # about 740 tokens each
    budget_mib = int((n_slots * per_state + 2 * 760 * per_token) / 2**20) + 1
    model = gate.MODELS_DIR / "gate-qwen35.gguf"

    with LlamaServer(bin_dir("paged"), model, args, env=builds.run_env("paged", {KNOB: "1"}),
                     log_path=tmp_path / "reference.log") as srv:
        reference = [srv.complete(p, n_predict, n_probs=2) for p in prompts]

    env = builds.run_env("paged", {KNOB: "1", "LLAMA_KV_MAX_MIB": str(budget_mib)})
    with LlamaServer(bin_dir("paged"), model, args, env=env, log_path=tmp_path / "server.log") as srv:
        with MetricsPoller(srv, ["kv_cache_used_bytes"]) as poll:
            outcomes = run_concurrently([lambda p=p: srv.complete(p, n_predict, n_probs=2) for p in prompts])
        after = srv.metrics()
        log = srv.log_tail(400)
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert not errors, errors
    same = sum(1 for (_, got), want in zip(outcomes, reference) if got["content"] == want["content"])
    report(f"LLAMA_KV_MAX_MIB={budget_mib} gate-qwen35 -np {n_slots}{' -kvu' if kv_unified else ''}, 4 prompts of ~740 tokens: "
           f"4 served, {same} of 4 texts as without the budget; {log.count('no room for its prompt yet')} waited for room, "
           f"caches at most {poll.peak['kv_cache_used_bytes'] / 2**20:.1f} MiB")
    assert "no room for its prompt yet" in log and "room found, going on" in log, "no request waited: the budget did not bind"
    assert poll.peak["kv_cache_used_bytes"] <= budget_mib * 2**20 * (1 + 1e-5), (poll.peak, budget_mib)  # 6 digits
    assert "would take the caches to" not in log, "llama_decode refused a batch the server planned"
    assert after["kv_budget_bytes"] == pytest.approx(budget_mib * 2**20, rel=1e-5)  # Prometheus text: 6 digits
    assert after["kv_budget_requests_waiting"] == 0
    assert after["kv_budget_preemptions_total"] == 0
    # a request that waited for room starts next to other slots' tokens, so its prompt is split
    # into other ubatches (recurrent layers need equal splits): last-bit changes, in stock too
    # (stock, per-slot KV, gate-qwen35 on the AVX-512 CI machine: a prompt arriving while another
    # slot decodes gets another text than alone). Every answer agrees with its reference within the
    # order-of-sums tolerance, any first difference a near tie, and most texts are the same.
    for (_, got), want in zip(outcomes, reference):
        compare("gate-qwen35", want, got, "the answer under a budget")
    assert same >= n_slots - 1, (outcomes, reference)


def stream_with_probs(port, body):
    """A streaming /completion of body: (every event, the final one's timings). Each event must
    carry one new token: a client that sees a gap or a repeat fails here."""
    events = []

    def keep(event):
        events.append(event)
    rec = sse.stream_completion(port, body, time.perf_counter(), on_event=keep)
    assert rec["error"] is None, rec["error"]
    tokens = [e for e in events if e.get("completion_probabilities")]
    counts = [e["tokens_predicted"] for e in tokens]
    assert counts == list(range(1, len(counts) + 1)), f"the stream's token counts go {counts[:8]} ... {counts[-8:]}"
    return {"content": "".join(e.get("content", "") for e in events),
            "completion_probabilities": [p for e in tokens for p in e["completion_probabilities"]],
            "timings": rec["timings"], "final": events[-1]}


@pytest.mark.parametrize("kv_unified", [True, False], ids=["kvu", "per-slot"])
def test_when_no_request_can_go_on_the_newest_is_preempted_and_goes_on_later(kv_unified, tmp_path, report):
    """LLAMA_KV_MAX_MIB (issue 28 item 2): two generations that together outgrow the budget. When
    neither has room for its next token the newest gives its cells back and waits; once the older
    one is done it computes its prompt and what it had generated again and goes on. Both reach
    their n_predict (finish "length" from n_predict, never truncated), the newest's stream has no
    gap and no repeat, and each answer is the one the same request gets alone on a server without
    a budget (within the order-of-sums tolerance: the generated tokens are computed again in a
    batch). The usage it reports is its own prompt's."""
    n_slots, ctx = 2, 8192
    args = budget_args(kv_unified, n_slots, ctx)
    sizes = cache_sizes(tmp_path, args)
    per_token = sizes["KV"] * 2**20 / ctx
    per_state = sizes["RS"] * 2**20 / n_slots
    budget_mib = math.ceil((n_slots * per_state + 1000 * per_token) / 2**20)
    room = int((budget_mib * 2**20 - n_slots * per_state) / per_token)  # cells, about 1000 or more
    prompts = server_prompts(n_slots, 60)
    n_predict = room - 400  # one alone fits; both together do not
    body = {"n_predict": n_predict, "ignore_eos": True, "temperature": 0, "n_probs": 2, "cache_prompt": True}
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args,
                     env=builds.run_env("paged", {KNOB: "1"}), log_path=tmp_path / "alone.log") as srv:
        alone = [srv.post("/completion", {**body, "prompt": p}) for p in prompts]
    env = builds.run_env("paged", {KNOB: "1", "LLAMA_KV_MAX_MIB": str(budget_mib)})
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args, env=env,
                     log_path=tmp_path / "server.log") as srv:
        outcomes = run_concurrently([lambda: srv.post("/completion", {**body, "prompt": prompts[0]}),
                                     lambda: stream_with_probs(srv.port, {**body, "prompt": prompts[1]})])
        after = srv.metrics()
        served = srv.complete("a short prompt after that", 8)
        log = srv.log_tail(400)
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert not errors, errors
    older, newest = (result for _, result in outcomes)
    report(f"LLAMA_KV_MAX_MIB={budget_mib} ({room} cells) gate-qwen35 -np 2{' -kvu' if kv_unified else ''}, n_predict "
           f"{n_predict} each: older {older['timings']['predicted_n']} tokens, newest {newest['timings']['predicted_n']} "
           f"({after['kv_budget_preemptions_total']:.0f} preempted, {after.get('kv_budget_recomputed_tokens_total', 0):.0f} tokens "
           f"computed again)")
    assert older["timings"]["predicted_n"] == n_predict and not older["truncated"], older["timings"]
    final = newest["final"]
    assert final["stop_type"] == "limit" and not final["truncated"], {k: final.get(k) for k in ("stop_type", "truncated")}
    assert newest["timings"]["predicted_n"] == n_predict == len(newest["completion_probabilities"]), newest["timings"]
    assert after["kv_budget_preemptions_total"] == 1, after
    assert after["kv_budget_recomputed_tokens_total"] > 60, after
    assert "gives its" in log and "cells back and goes on from its" in log
    compare("gate-qwen35", alone[0], older, "the older answer under a budget")
    compare("gate-qwen35", alone[1], newest, "the preempted answer")
    # usage: the prompt it came with, and its timings as they were before it was preempted
    assert final["tokens_evaluated"] == alone[1]["tokens_evaluated"], (final["tokens_evaluated"], alone[1]["tokens_evaluated"])
    assert newest["timings"]["prompt_n"] == alone[1]["timings"]["prompt_n"], newest["timings"]
    assert served["content"] is not None


def test_a_generation_the_budget_cannot_hold_alone_ends_at_its_limit(tmp_path, report):
    """LLAMA_KV_MAX_MIB (paged 0067): preemption makes room for older requests; a generation alone
    that outgrows the whole budget cannot go on anywhere, so it ends where the budget does, as at
    its length limit (finish "length", truncated, all it generated sent), instead of being
    preempted and computed again for ever; the server goes on serving."""
    args = budget_args(True, 2, 8192)
    sizes = cache_sizes(tmp_path, args)
    per_token = sizes["KV"] * 2**20 / 8192
    per_state = sizes["RS"] * 2**20 / 2
    budget_mib = math.ceil((2 * per_state + 600 * per_token) / 2**20)
    room = int((budget_mib * 2**20 - 2 * per_state) / per_token)
    env = builds.run_env("paged", {KNOB: "1", "LLAMA_KV_MAX_MIB": str(budget_mib)})
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args, env=env,
                     log_path=tmp_path / "server.log") as srv:
        alone = srv.complete(server_prompts(1, 40)[0], 2 * room, ignore_eos=True)
        after = srv.metrics()
        served = srv.complete("a short prompt after that", 8)
        log = srv.log_tail(400)
    report(f"LLAMA_KV_MAX_MIB={budget_mib} ({room} cells) gate-qwen35, one generation of {2 * room}: ended at "
           f"{alone['timings']['prompt_n'] + alone['timings']['predicted_n']} tokens ({alone['stop_type']}, "
           f"truncated={alone['truncated']})")
    assert alone["stop_type"] == "limit" and alone["truncated"], alone
    assert 0 < alone["timings"]["predicted_n"] < 2 * room and alone["content"], alone["timings"]
    assert after["kv_budget_preemptions_total"] == 1 and after["kv_budget_recomputed_tokens_total"] == 0, after
    assert "could not go on alone; it ends here, as at its length limit" in log
    assert served["content"] is not None


def test_a_prompt_the_budget_cannot_hold_fails_at_once(tmp_path, report):
    """LLAMA_KV_MAX_MIB (0019): a prompt larger than the whole budget would wait for ever; it fails
    at once with an error that names the knob, and the server goes on."""
    args = budget_args(True, 2, 16384)
    sizes = cache_sizes(tmp_path, args)
    per_token = sizes["KV"] * 2**20 / 16384
    per_state = sizes["RS"] * 2**20 / 2
    budget_mib = math.ceil((2 * per_state + 64 * per_token) / 2**20)
    n_words = int(budget_mib * 2**20 / per_token)  # more tokens than the budget holds
    env = builds.run_env("paged", {KNOB: "1", "LLAMA_KV_MAX_MIB": str(budget_mib)})
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args, env=env,
                     log_path=tmp_path / "server.log") as srv:
        with pytest.raises(Exception) as refused:
            srv.complete(server_prompts(1, n_words)[0], 8)
        served = srv.complete("a short prompt after that", 8)
    report(f"LLAMA_KV_MAX_MIB={budget_mib}, a prompt of ~{n_words} words: {str(refused.value)[:160]}")
    assert f"more than LLAMA_KV_MAX_MIB={budget_mib} allows" in str(refused.value)
    assert served["content"] is not None


@pytest.mark.parametrize("value,message", [
    ("0", "invalid value '0' for LLAMA_KV_MAX_MIB: expected a positive whole number of MiB"),
    ("12x", "invalid value '12x' for LLAMA_KV_MAX_MIB: expected a positive whole number of MiB"),
    ("1", "LLAMA_KV_MAX_MIB=1 is below what 8 sequences need to start"),
])
def test_a_bad_budget_is_a_clear_error(value, message):
    assert message in refusal({KNOB: "1", "LLAMA_KV_MAX_MIB": value}, "gate-qwen35", ["-np", "8", "-c", "8192"])


def test_a_budget_without_paged_caches_is_a_clear_error():
    assert "LLAMA_KV_MAX_MIB=64 needs LLAMA_KV_PAGED=1" in refusal({"LLAMA_KV_MAX_MIB": "64"})


@pytest.mark.parametrize("value", ["0", "12", "-16", "sixteen", "131072"])
def test_a_bad_block_size_is_a_clear_error(value):
    assert (f"invalid value '{value}' for LLAMA_KV_BLOCK_SIZE: expected a power of two from 1 to 65536"
            in refusal({KNOB: "1", "LLAMA_KV_BLOCK_SIZE": value}))


def test_a_block_size_without_paged_caches_is_a_clear_error():
    assert "LLAMA_KV_BLOCK_SIZE=32 needs LLAMA_KV_PAGED=1" in refusal({"LLAMA_KV_BLOCK_SIZE": "32"})


def stream_and_cancel(port, prompt, n_predict, after_tokens):
    return sse.stream_and_cancel(port, {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "cache_prompt": True},
                                 after_tokens)


SOAK_S = float(os.environ.get("LLAMA_PAGED_SOAK_S", "25"))


@pytest.mark.parametrize("kv_unified,budget", [(False, False), (True, False), (True, True)],
                         ids=["per-slot-KV", "unified-KV", "unified-KV-budget"])
def test_a_soak_of_random_requests_cancellations_and_erases_leaks_nothing(kv_unified, budget, tmp_path, report):
    """Clients send prompts of random lengths for SOAK_S seconds (LLAMA_PAGED_SOAK_S), cancel some
    streams midway and erase random slots. Every request completes, or fails with an HTTP error
    that says why (none should here); afterwards, the slots erased, the caches hold nothing: no cell, state or block
    in use, the paged memory back at its idle level, and the server still serves. With a budget
    (LLAMA_KV_MAX_MIB) of about two of the largest requests, requests wait for room; the caches
    never pass it; a request preempted to make room goes on later: none is stopped or truncated."""
    n_slots, n_clients = 4, 6
    args = ["-c", str(n_slots * 2048), "-np", str(n_slots), "-t", str(gate.THREADS), "--metrics",
            "--slot-save-path", str(tmp_path), *(["-kvu"] if kv_unified else [])]
    knobs = {KNOB: "1"}
    if budget:
        sizes = cache_sizes(tmp_path, args)
        per_token = sizes["KV"] * 2**20 / (n_slots * 2048)
        per_state = sizes["RS"] * 2**20 / n_slots
        knobs["LLAMA_KV_MAX_MIB"] = str(math.ceil((n_slots * per_state + 2 * 950 * per_token) / 2**20))
    outcomes = []
    lock = threading.Lock()
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args,
                     env=builds.run_env("paged", knobs), log_path=tmp_path / "server.log") as srv, \
            MetricsPoller(srv, ["kv_cache_used_bytes"], period_s=0.5) as poll:
        idle = procmem.paged_resident(srv.pid)[0]
        stop_at = time.monotonic() + SOAK_S

        def client(seed):
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                prompt = f"{seed} " + gate_words(rng.randint(5, 700), rng.randint(0, 10**6))
                n_predict = rng.randint(1, 48)
                action = rng.random()
                try:
                    if action < 0.3:
                        outcome = stream_and_cancel(srv.port, prompt, n_predict, rng.randint(1, 8))
                    elif action < 0.4:
                        srv.post(f"/slots/{rng.randrange(n_slots)}?action=erase", {})
                        outcome = "erased"
                    else:
                        result = srv.complete(prompt, n_predict)
                        outcome = "done" if result["timings"]["predicted_n"] >= 1 else f"no token: {result}"
                        if result["truncated"]:
                            outcome = f"truncated: {result['timings']}"
                except Exception as e:  # noqa: BLE001 - every outcome is checked below
                    outcome = f"exception: {e}"
                with lock:
                    outcomes.append(outcome)

        soak.run_clients_then_erase(srv, client, n_clients, n_slots)
        metrics = srv.metrics()
        erased = procmem.paged_resident(srv.pid)[0]
        after = srv.complete("the server still serves", 4)

    kinds = {}
    for o in outcomes:
        key = o if o in ("done", "cancelled", "erased") else "error"
        kinds[key] = kinds.get(key, 0) + 1
    mode = "unified" if kv_unified else "per-slot"
    mode += " KV"
    if budget:
        mode += f" LLAMA_KV_MAX_MIB={knobs['LLAMA_KV_MAX_MIB']} (peak {poll.peak['kv_cache_used_bytes'] / 2**20:.1f} MiB, " \
                f"{metrics.get('kv_budget_preemptions_total', 0):.0f} preempted to make room, " \
                f"{metrics.get('kv_budget_recomputed_tokens_total', 0):.0f} tokens computed again)"
    report(f"{KNOB}=1 soak, gate-qwen35 {mode}, {n_slots} slots, {n_clients} clients, {SOAK_S:.0f} s: {kinds}; "
           f"after the erase: {metrics['kv_cache_cells_used']:.0f} cells, {metrics['recurrent_states_used']:.0f} states, "
           f"{metrics.get('kv_cache_blocks_used', 0):.0f} blocks in use, paged memory {idle / 1024:.1f} -> {erased / 1024:.1f} MiB")
    # the server defers an erase of a busy slot until it is idle: no request may fail here
    failed = [o for o in outcomes if o not in ("done", "cancelled", "erased")]
    assert not failed, failed[:5]
    assert kinds.get("done", 0) >= n_clients and kinds.get("cancelled", 0) >= 1, kinds
    assert metrics["kv_cache_cells_used"] == 0 and metrics["recurrent_states_used"] == 0, metrics
    assert metrics["kv_cache_used_bytes"] == 0 and metrics.get("kv_cache_blocks_used", 0) == 0, metrics
    assert erased <= idle + 256, (idle, erased)  # KiB: the partial pages at the edges of the caches
    assert after["timings"]["predicted_n"] >= 1
    if budget:
        # the Prometheus text has 6 significant digits
        assert poll.peak["kv_cache_used_bytes"] <= int(knobs["LLAMA_KV_MAX_MIB"]) * 2**20 * (1 + 1e-5), poll.peak
