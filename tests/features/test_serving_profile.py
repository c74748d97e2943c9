"""LLAMA_SERVING=1, the serving profile (paged 0062, issue 28 item 5): one setting turns on the
series' serving knobs together (paged KV, the prefix cache, the latency target, the GDN knobs) with
defaults a user can override, and --kv-unified for the prefix cache. The server gate runs it on
every gate model in both KV modes (its Knob: trailer) and the upstream suite's serving run uses it;
this file checks what it turns on, what the user keeps, what it prints, and its refusals."""
import re
import subprocess

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
    assert "LLAMA_SERVING=1 turns on the prefix cache, which cannot serve this server: LLAMA_PREFIX_CACHE=1" in out, out[-1500:]
    assert flag in out, out[-1500:]
    assert "set LLAMA_PREFIX_CACHE=0 for the rest of the profile" in out


@pytest.fixture(scope="module")
def models_the_cache_cannot_serve(tmp_path_factory):
    """Upstream's random mamba (recurrent) and gemma3 (sliding-window attention) models."""
    out = tmp_path_factory.mktemp("archs")
    for arch in ("mamba", "gemma3"):
        subprocess.run([str(bin_dir("paged") / "test-llama-archs"), "-a", f"^{arch}$", "-s", "3", "-o", str(out)],
                       check=True, capture_output=True, timeout=300)
    return {p.name.split("-")[0]: p for p in out.glob("*.gguf")}


@pytest.mark.parametrize("arch,why", [("mamba", "a recurrent model has no attention cells to share"),
                                      ("gemma3", "it does not serve sliding-window attention models yet")])
def test_a_model_the_cache_cannot_serve_runs_the_rest_of_the_profile(arch, why, models_the_cache_cannot_serve, tmp_path):
    """Decided from the model file before the context exists: no holder sequences, no unified KV
    for a cache that is off, the rest of the profile on. Set by the user, the cache still refuses."""
    model = models_the_cache_cannot_serve[arch]
    base = ["-np", "2", "-c", "4096", "-t", str(gate.THREADS), "--metrics", "-lv", "4"]
    with LlamaServer(bin_dir("paged"), model, base, env=builds.run_env("paged", {"LLAMA_SERVING": "1"}),
                     log_path=tmp_path / f"{arch}.log", label=arch) as srv:
        r = srv.complete("hello", N_PREDICT)
        m = srv.metrics()
        log = srv.log_path.read_text(errors="replace")
    assert r["timings"]["predicted_n"] == N_PREDICT
    assert f"LLAMA_SERVING=1: the prefix cache is off: {why}; the rest of the profile applies" in log, log[-3000:]
    assert "--kv-unified (profile" not in log and re.search(r"n_seq_max +=  *2$", log, re.M), log[-3000:]
    assert "prefix_cache_hits_total" not in m and "kv_cache_used_bytes" in m
    out = server_refusal(bin_dir("paged"), model, {"LLAMA_PREFIX_CACHE": "1", "LLAMA_KV_PAGED": "1"},
                         args=("-c", "4096", "-np", "2", "-kvu"), threads=gate.THREADS)
    assert "LLAMA_PREFIX_CACHE=1 does not support" in out, out[-1500:]
