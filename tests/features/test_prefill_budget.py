"""Decode-first prefill budget in llama-server (LLAMA_PREFILL_BUDGET, LLAMA_MAX_BATCH_TOKENS,
LLAMA_PREFILL_CAP: paged 0024; LLAMA_DECODE_TARGET_MS: 0025; /metrics: 0026): every step's prompt
tokens stay within the budget, prompts take it in arrival order and all of them finish while the
decoders keep producing tokens, the answers agree with stock's, context checkpoints land where
stock puts them, and bad values stop the server with a message naming the knob. The policy's edge
cases are test-server-prefill-budget's (C++); the greedy-md5 and server gates run the knobs of
the trailers on every gate model."""
import re
import threading
import time

import pytest

from conftest import bin_dir
from harness import builds
from harness import server as harness_server
from harness.prompts import gate_words
from harness.server import LlamaServer
from verify import gate

pytestmark = pytest.mark.build

STEP = re.compile(r"prefill budget: a step of (\d+) tokens, (\d+) of them prompt tokens \(budget (\d+), (\w+), "
                  r"prompts finish within (\d+)\)")
CHECKPOINT = re.compile(r"id +(\d+) \| task (\d+) \| created context checkpoint \d+ of \d+ \(pos_min = -?\d+, pos_max = -?\d+, n_tokens = (\d+)")
MODEL = "gate-qwen35"
N_BATCH = 2048  # llama-server's default -b


def server_refusal(knobs):
    """The output of llama-server started with knobs, which must stop with an error."""
    return harness_server.server_refusal(bin_dir("paged"), gate.MODELS_DIR / f"{MODEL}.gguf", knobs, threads=gate.THREADS)


@pytest.mark.parametrize("knob,what,top", [
    ("LLAMA_PREFILL_BUDGET", "tokens", 16777216),
    ("LLAMA_MAX_BATCH_TOKENS", "tokens", 16777216),
    ("LLAMA_PREFILL_CAP", "tokens", 16777216),
    ("LLAMA_DECODE_TARGET_MS", "milliseconds", 3600000),
])
@pytest.mark.parametrize("value", ["0", "-8", "many", "99999999999"])
def test_a_bad_value_stops_the_server_naming_the_knob(knob, what, top, value):
    want = f"invalid value '{value}' for {knob}: expected a whole number of {what} from 1 to {top}"
    assert want in server_refusal({knob: value})


def wait_decoding(srv, n_decoders, timeout_s=60.0):
    """Waits until n_decoders slots have produced a token and are still decoding, so that the
    prompts sent next meet them whatever the speed of the machine (a fixed sleep let fast machines
    finish the decoders first: no step mixed decode and prompt tokens)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, slots = harness_server.http_get_json(srv.port, "/slots")
        decoding = [s for s in slots or [] if s.get("is_processing")
                    and s.get("next_token", [{}])[0].get("n_decoded", 0) >= 1]
        if len(decoding) >= n_decoders:
            return
        time.sleep(0.01)
    raise AssertionError(f"the {n_decoders} decoders did not start within {timeout_s:.0f} s: /slots {slots}")


def serve(knobs, tmp_path, name, decoders, prompts, n_predict_decode=48, n_predict_prompt=8, prompt_slots=None,
          metrics=False, extra_args=()):
    """Starts the decoders and, once they decode, the long prompts 0.3 s apart (in prompt_slots, if given); returns
    (results of the decoders, results of the prompts, per-step (tokens, prompt tokens, budget,
    knob in force) from the debug log, the log, /metrics at the end if asked). Each result gets
    "done_at", when its answer arrived."""
    args = ["-c", "16384", "-np", str(len(decoders) + len(prompts)), "-t", str(gate.THREADS), "-lv", "5", "-cram", "0"]
    if metrics:
        args.append("--metrics")
    args += list(extra_args)
    log_path = tmp_path / f"{name}.log"
    results = {}
    with LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{MODEL}.gguf", args, env=builds.run_env("paged", knobs),
                     log_path=log_path) as srv:
        def one(key, prompt, n_predict, extra=None):
            result = srv.complete(prompt, n_predict, ignore_eos=True, **(extra or {}))
            result["done_at"] = time.monotonic()
            results[key] = result

        threads = [threading.Thread(target=one, args=(("decoder", i), p, n_predict_decode)) for i, p in enumerate(decoders)]
        for t in threads:
            t.start()
        wait_decoding(srv, len(decoders))
        for i, p in enumerate(prompts):
            extra = {"id_slot": prompt_slots[i]} if prompt_slots else None
            t = threading.Thread(target=one, args=(("prompt", i), p, n_predict_prompt, extra))
            threads.append(t)
            t.start()
            time.sleep(0.3)
        for t in threads:
            t.join()
        scraped = srv.metrics() if metrics else None
    log = log_path.read_text(errors="replace")
    steps = [(int(a), int(b), int(c), d) for a, b, c, d, _ in STEP.findall(log)]
    return ([results.get(("decoder", i)) for i in range(len(decoders))],
            [results.get(("prompt", i)) for i in range(len(prompts))], steps, log, scraped)


def workload():
    decoders = [f"{i} " + gate_words(8, 300 + i) for i in range(3)]
    prompts = [f"{i} " + gate_words(700, 400 + i) for i in range(2)]  # about 860 tokens each
    return decoders, prompts


def assert_all_finished(dec, pro, log):
    assert all(r is not None for r in dec + pro), log[-3000:]
    for r in dec:
        assert r["timings"]["predicted_n"] == 48, r["timings"]  # the decoders went on to the end
    for r in pro:
        assert r["timings"]["prompt_n"] > 800 and r["timings"]["predicted_n"] == 8, r["timings"]


# the third item: at most 32 prompt tokens a step, so the 48 tokens of each decoder come out while
# the 1720 tokens of the two prompts are still being computed (stock computes them in 3 steps)
@pytest.mark.parametrize("knobs,limit,decoders_first", [
    ({"LLAMA_PREFILL_BUDGET": "32"}, lambda n_tokens, n_decode: 32, True),
    ({"LLAMA_MAX_BATCH_TOKENS": "48"}, lambda n_tokens, n_decode: max(48 - n_decode, 6), False),
    ({"LLAMA_PREFILL_BUDGET": "64", "LLAMA_PREFILL_CAP": "16"}, lambda n_tokens, n_decode: 64, True),
], ids=["budget-32", "max-batch-48", "budget-64-cap-16"])
def test_steps_keep_to_the_budget_and_every_request_finishes(knobs, limit, decoders_first, tmp_path, report):
    decoders, prompts = workload()
    dec, pro, steps, log, _ = serve(knobs, tmp_path, "budget", decoders, prompts)
    assert_all_finished(dec, pro, log)
    assert steps, "no step logged (needs -lv 5)"
    over = [(n, p) for n, p, _, _ in steps if p > limit(n, n - p)]
    mixed = [p for n, p, _, _ in steps if 0 < p < n]  # steps with decoders and prompt tokens
    report(f"{' '.join(f'{k}={v}' for k, v in knobs.items())} {MODEL}: {len(steps)} steps, prompt tokens per step "
           f"max {max(p for _, p, _, _ in steps)}, {len(mixed)} steps mixed decode and prompt tokens; every request finished")
    assert not over, f"steps past the budget: {over[:10]}"
    if "LLAMA_PREFILL_CAP" in knobs:
        assert all(p <= 16 * len(prompts) for _, p, _, _ in steps), steps
    assert mixed, "no step mixed decode and prompt tokens: the workload did not test the budget"
    if decoders_first:  # the decoders kept producing tokens while the prompts were computed
        assert max(r["done_at"] for r in dec) < max(r["done_at"] for r in pro), "the decoders waited for the prompts"


def test_prompts_take_the_budget_in_arrival_order(tmp_path):
    """Two long prompts under a small budget, the first to arrive in the higher slot: it still
    gets the budget first and finishes first (stock batches prompts in slot order)."""
    decoders, prompts = workload()
    _, pro, _, log, _ = serve({"LLAMA_PREFILL_BUDGET": "32"}, tmp_path, "order", decoders[:1], prompts, prompt_slots=[2, 1])
    assert all(r is not None for r in pro), log[-3000:]
    first, second = pro
    assert first["done_at"] < second["done_at"], "the later prompt, in the lower slot, finished first"


def test_answers_agree_with_stock(tmp_path, report):
    """Splitting prompts in smaller chunks can change the last bits of the arithmetic; with greedy
    sampling the answers of every request still agree with those of stock batching (no knob)."""
    decoders, prompts = workload()
    dec_stock, pro_stock, _, _, _ = serve({}, tmp_path, "stock", decoders, prompts)
    dec, pro, _, _, _ = serve({"LLAMA_PREFILL_BUDGET": "32"}, tmp_path, "budget", decoders, prompts)
    pairs = list(zip(dec_stock + pro_stock, dec + pro))
    same = sum(1 for a, b in pairs if a["content"] == b["content"])
    agreement = [gate.agreement(a["content"].encode(), b["content"].encode()) for a, b in pairs]
    report(f"LLAMA_PREFILL_BUDGET=32 {MODEL}: {same} of {len(pairs)} answers identical to stock batching, "
           f"byte agreement min {min(agreement):.3f}")
    assert min(agreement) >= 0.8, agreement


def test_checkpoints_land_where_stock_puts_them(tmp_path, report):
    """A hybrid model checkpoints its recurrent state 4 + n_ubatch and 4 tokens before a prompt's
    end; under a budget the last n_ubatch tokens come in many chunks, and a checkpoint at each
    would copy the whole state every step. The checkpoints are stock's, in number and position."""
    decoders, prompts = workload()
    got = {}
    for name, knobs in [("stock", {}), ("budget", {"LLAMA_PREFILL_BUDGET": "32"})]:
        dec, pro, _, log, _ = serve(knobs, tmp_path, f"ckpt-{name}", decoders, prompts)
        assert_all_finished(dec, pro, log)
        by_slot = {}
        for slot, _, n_tokens in CHECKPOINT.findall(log):
            by_slot.setdefault(int(slot), []).append(int(n_tokens))
        got[name] = [sorted(by_slot.get(r["id_slot"], [])) for r in pro]
    report(f"LLAMA_PREFILL_BUDGET=32 {MODEL}: checkpoints of the two long prompts at {got['budget']} "
           f"(stock: {got['stock']})")
    assert got["stock"] and all(got["stock"]), f"stock made no checkpoint: {got['stock']}"
    assert got["budget"] == got["stock"]


def test_a_latency_target_sizes_the_chunks(tmp_path, report):
    """LLAMA_DECODE_TARGET_MS: prompts next to decoders go in chunks sized from the measured step
    cost (the debug log names the knob in force); with no decoder running, a prompt goes at full
    speed; every request finishes; /metrics reports the steps and the estimate."""
    decoders, prompts = workload()
    dec, pro, steps, log, scraped = serve({"LLAMA_DECODE_TARGET_MS": "5"}, tmp_path, "target", decoders, prompts,
                                          metrics=True)
    assert_all_finished(dec, pro, log)
    sized = [(n, p, b) for n, p, b, knob in steps if knob == "LLAMA_DECODE_TARGET_MS"]
    alone = [(n, p, b, knob) for n, p, b, knob in steps if n == p]
    report(f"LLAMA_DECODE_TARGET_MS=5 {MODEL}: {len(steps)} steps, {len(sized)} sized by the target "
           f"(prompt budget {min(b for _, _, b in sized)}..{max(b for _, _, b in sized)} tokens), "
           f"estimate {scraped['step_cost_fixed_ms']:.2f} ms + {scraped['step_cost_decode_token_ms']:.3f} ms/decode token "
           f"+ {scraped['step_cost_prompt_token_ms']:.4f} ms/prompt token")
    assert sized, "no step was sized by the target"
    # past the target's chunk only to finish prompts whole (paged 0038): within a quarter more than
    # the chunk the target gives (the dither's half-size chunk: 2.5 times it; chunks are whole tokens)
    finish = [(int(p), int(b), int(f)) for _, p, b, knob, f in STEP.findall(log) if knob == "LLAMA_DECODE_TARGET_MS"]
    assert all(p <= f <= 2.5 * (b + 1) for p, b, f in finish), [x for x in finish if not x[0] <= x[2] <= 2.5 * (x[1] + 1)]
    assert all(b == N_BATCH and knob == "n_batch" for _, _, b, knob in alone), f"a prompt alone was held back: {alone}"
    assert scraped["step_cost_prompt_token_ms"] > 0 and scraped["steps_total"] == len(steps), scraped


def test_metrics_report_the_steps(tmp_path, report):
    decoders, prompts = workload()
    _, pro, steps, log, m = serve({"LLAMA_PREFILL_BUDGET": "32"}, tmp_path, "metrics", decoders, prompts, metrics=True)
    n_prompt = sum(p for _, p, _, _ in steps)
    n_decode = sum(n - p for n, p, _, _ in steps)
    report(f"LLAMA_PREFILL_BUDGET=32 {MODEL} /metrics: {m['steps_total']:.0f} steps in {m['step_seconds_total']:.2f} s "
           f"(max {m['step_seconds_max'] * 1000:.1f} ms), {m['step_prompt_tokens_total']:.0f} prompt and "
           f"{m['step_decode_tokens_total']:.0f} decode tokens, {m['prompts_total']:.0f} prompts waited "
           f"{m['prompt_wait_seconds_total']:.2f} s (max {m['prompt_wait_seconds_max']:.2f} s)")
    assert m["steps_total"] == len(steps)
    assert m["step_prompt_tokens_total"] == n_prompt and m["step_decode_tokens_total"] == n_decode
    assert m["prefill_budget_tokens"] <= 32
    assert m["prompts_total"] == 5  # three decoders' prompts and two long ones
    assert 0 < m["step_seconds_max"] <= m["step_seconds_total"]
    assert max(r["timings"]["prompt_ms"] for r in pro) / 1000 <= m["prompt_wait_seconds_max"] * 1.01 + 0.01


def test_no_knob_leaves_metrics_as_stock(tmp_path):
    _, _, steps, _, m = serve({}, tmp_path, "no-knob", *workload(), metrics=True)
    assert not steps, "a step was logged without a knob"
    assert "steps_total" not in m and "prefill_budget_tokens" not in m


def test_speculative_decoding_under_a_budget(tmp_path, report):
    """Drafts are decode tokens: claimed before the prompts, never cut by the prefill budget. With
    n-gram self-speculation (on a hybrid model: drafts roll back through checkpoints) every request
    finishes and the answers agree with the same server without the knob."""
    decoders, prompts = workload()
    # one-token n-grams: random-weight answers repeat no longer ones, and every step drafts
    spec = ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "1", "--spec-ngram-simple-size-m", "4"]
    dec_ref, pro_ref, _, _, _ = serve({}, tmp_path, "spec-ref", decoders, prompts, extra_args=spec)
    dec, pro, steps, log, _ = serve({"LLAMA_PREFILL_BUDGET": "32"}, tmp_path, "spec", decoders, prompts, extra_args=spec)
    assert_all_finished(dec, pro, log)
    drafted = sum(r["timings"].get("draft_n", 0) for r in dec + pro)
    over = [(n, p) for n, p, _, _ in steps if p > 32]
    agreement = [gate.agreement(a["content"].encode(), b["content"].encode()) for a, b in zip(dec_ref + pro_ref, dec + pro)]
    report(f"LLAMA_PREFILL_BUDGET=32 --spec-type ngram-simple {MODEL}: {drafted} draft tokens, byte agreement with "
           f"no knob min {min(agreement):.3f}")
    assert not over, over[:10]
    assert drafted > 0, "nothing was drafted: the test did not test speculative decoding"
    assert min(agreement) >= 0.8, agreement


def test_embeddings_are_never_split(tmp_path):
    """An embedding pooled over all its tokens must be computed in one ubatch: the budget counts it
    but never cuts it, and the vector is stock's to the last bit."""
    text = gate_words(200, 77)
    args = ["-c", "2048", "-np", "2", "-t", str(gate.THREADS), "-ub", "1024", "-b", "1024", "--embeddings",
            "--pooling", "mean"]
    vectors = {}
    for config, knobs in [("stock", {}), ("paged", {"LLAMA_PREFILL_BUDGET": "8", "LLAMA_PREFILL_CAP": "4"})]:
        with LlamaServer(bin_dir(config), gate.MODELS_DIR / "gate-llama.gguf", args, env=builds.run_env(config, knobs),
                         keep_dir=tmp_path, label=config) as srv:
            vectors[config] = srv.post("/embedding", {"content": text})
    assert vectors["paged"] == vectors["stock"]
