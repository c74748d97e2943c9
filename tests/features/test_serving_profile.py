"""LLAMA_SERVING=1, the serving profile (paged 0062, issue 28 item 5): one setting turns on the
series' serving knobs together (paged KV, the prefix cache, the latency target, the GDN knobs) with
defaults a user can override, and --kv-unified for the prefix cache. The server gate runs it on
every gate model in both KV modes (its Knob: trailer) and the upstream suite's serving run uses it;
this file checks what it turns on, what the user keeps, what it prints, and its refusals."""
import pytest

from conftest import bin_dir
from harness import builds
from harness.answers import compare
from harness.prompts import gate_words
from harness.server import LlamaServer, server_refusal
from verify import gate

pytestmark = pytest.mark.build

N_PREDICT = 8


def serve(model, knobs, tmp_path, name, args=()):
    # no -kvu: the profile turns it on for the prefix cache
    base = ["-np", "2", "-c", "8192", "-t", str(gate.THREADS), "--metrics", *args]
    return LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", base, env=builds.run_env("paged", knobs),
                       log_path=tmp_path / f"{name}.log", label=name)


@pytest.mark.parametrize("model", ["gate-llama", "gate-qwen35"])
def test_one_setting_turns_the_profile_on(model, tmp_path, report):
    """Without -kvu and with no other knob: the caches are paged, the prefix cache serves a prompt
    computed on one slot to another (a hybrid model too: the profile pages its states), the
    latency target is in force, and the start-up log says so, part by part. Answers agree with a
    server without the profile."""
    prompt = gate_words(300, 11)
    with serve(model, {"LLAMA_SERVING": "1"}, tmp_path, "profile") as srv:
        first = srv.complete(prompt, N_PREDICT, n_probs=2, id_slot=0)
        again = srv.complete(prompt, N_PREDICT, n_probs=2, id_slot=1)
        m = srv.metrics()
        log = srv.log_path.read_text(errors="replace")
    line = next(ln for ln in log.splitlines() if "LLAMA_SERVING=1:" in ln)
    report(f"LLAMA_SERVING=1 {model} -np 2: {line.split('LLAMA_SERVING=1:', 1)[1].strip()[:400]}; the prompt again on "
           f"the other slot reused {again['timings']['cache_n']} of {first['timings']['prompt_n']}")
    for part in ("LLAMA_KV_PAGED=1 (profile", "LLAMA_PREFIX_CACHE=1 (profile", "LLAMA_DECODE_TARGET_MS=1000 (profile",
                 "LLAMA_GDN_IDS=1 (profile", "LLAMA_GDN_SSM_OUT_2D=1 (profile", "--kv-unified (profile",
                 "LLAMA_KV_MAX_MIB not set"):
        assert part in line, f"{part!r} not in the start-up line: {line}"
    assert "prefill budget: LLAMA_DECODE_TARGET_MS=1000" in log
    assert "kv_cache_used_bytes" in m and "prefix_cache_hits_total" in m and "steps_total" in m, sorted(m)
    assert again["timings"]["cache_n"] >= first["timings"]["prompt_n"] - 17, again["timings"]
    with serve(model, {}, tmp_path, "stock-knobs") as srv:
        cold = srv.complete(prompt, N_PREDICT, n_probs=2, id_slot=1)
    compare(model, cold, again)


def test_a_knob_the_user_sets_wins(tmp_path):
    with serve("gate-llama", {"LLAMA_SERVING": "1", "LLAMA_PREFIX_CACHE": "0", "LLAMA_DECODE_TARGET_MS": "250"},
               tmp_path, "override") as srv:
        srv.complete("hello", N_PREDICT)
        m = srv.metrics()
        log = srv.log_path.read_text(errors="replace")
    line = next(ln for ln in log.splitlines() if "LLAMA_SERVING=1:" in ln)
    assert "LLAMA_PREFIX_CACHE=0 (yours)" in line and "LLAMA_DECODE_TARGET_MS=250 (yours)" in line, line
    assert "--kv-unified" not in line  # nothing needs it
    assert "prefix_cache_hits_total" not in m and "kv_cache_used_bytes" in m


@pytest.mark.parametrize("value", ["2", "yes", "on"])
def test_a_bad_value_stops_the_server_naming_the_knob(value):
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", {"LLAMA_SERVING": value},
                         args=("-c", "4096", "-np", "2"), threads=gate.THREADS)
    assert f"invalid value '{value}' for LLAMA_SERVING: expected 1" in out


@pytest.mark.parametrize("args,flag", [
    (("--context-shift",), "--context-shift"),
    (("--embeddings", "--pooling", "mean"), "--embeddings"),
], ids=["context-shift", "pooled-embeddings"])
def test_a_flag_the_profile_cannot_serve_is_named_with_it(args, flag):
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", {"LLAMA_SERVING": "1"},
                         args=("-c", "4096", "-np", "2", *args), threads=gate.THREADS)
    assert "LLAMA_SERVING=1 turns on LLAMA_PREFIX_CACHE=1" in out and flag in out, out[-1500:]
    assert "set LLAMA_PREFIX_CACHE=0 for the rest of the profile" in out
