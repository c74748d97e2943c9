"""Paged KV memory (LLAMA_KV_PAGED, paged 0007-0008): the KV cache and the recurrent state take
physical memory only where they are written. The knob is bit-exact, so the greedy-md5 and server
gates run it on every gate model against stock; this file checks the memory itself, and the
knob's bad values."""
import os
import subprocess

import pytest

from conftest import bin_dir
from harness import builds, procmem, server_log
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


@pytest.mark.parametrize("value", ["2", "yes", "-1"])
def test_a_bad_value_is_a_clear_error(value):
    """Every time: the tool's log can lose its tail at exit (upstream issue 22142), the refusal
    itself must not be lost with it."""
    cmd = gate.completion_cmd(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", "hello", "on")
    for _ in range(5):
        proc = subprocess.run(cmd, env={**os.environ, KNOB: value}, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=120)
        assert proc.returncode != 0
        assert f"invalid value '{value}' for {KNOB}: expected 0 or 1" in proc.stderr.decode(errors="replace")
