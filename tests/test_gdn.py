"""The gated delta net decode patches: op-level bit-exactness of the in-place and ids forms,
speculative rollback with the knobs on, and the knobs' bad-value and other-arch behaviour.
The greedy-md5 gate (test_gate_md5.py) covers the knobs on whole models."""
import sys

import pytest

from conftest import ROOT, bin_dir, run

sys.path.insert(0, str(ROOT / "verify"))
import gate  # noqa: E402

ALL_GDN_KNOBS = {"LLAMA_GDN_IDS": "1", "LLAMA_GDN_INPLACE": "1", "LLAMA_GDN_SSM_OUT_2D": "1"}


def test_inplace_and_ids_forms_match_the_stock_op():
    proc = run([str(bin_dir("paged") / "test-gdn-inplace")], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert " 0 failed" in proc.stdout


def test_series_ctest_label_passes():
    """The series' C++ tests registered with the ctest label `paged` (test-gdn-cache-layouts:
    the GDN knobs against recurrent cache layouts with holes, forks and re-orders)."""
    build = bin_dir("paged").parent
    proc = run(["ctest", "--test-dir", str(build), "-L", "paged", "--output-on-failure"], timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "tests passed" in proc.stdout


@pytest.fixture(scope="module")
def rollback_models(tmp_path_factory):
    """Upstream's own random qwen35 and qwen35moe models (test-llama-archs, as upstream's ctest
    uses), plus gate-qwen3next. Not gate-qwen35/gate-qwen35moe: stock fails upstream's
    multi-seq split replay check on them (logits differ from pos 16), with or without the series."""
    out = tmp_path_factory.mktemp("archs")
    for arch in ("qwen35", "qwen35moe"):
        run([str(bin_dir("stock") / "test-llama-archs"), "-a", f"^{arch}$", "-s", "42", "-o", str(out)], check=True)
    models = {p.name.split("-")[0]: p for p in out.glob("*.gguf")}
    models["qwen3next"] = gate.MODELS_DIR / "gate-qwen3next.gguf"
    return models


@pytest.mark.parametrize("knobs", [{}, {"LLAMA_GDN_INPLACE": "1"}, ALL_GDN_KNOBS],
                         ids=["no-knob", "inplace", "all-gdn-knobs"])
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next"])
def test_speculative_rollback_still_works(rollback_models, arch, knobs):
    """Rollback keeps snapshots (n_rs_seq > 0), which the knobs leave on the stock path; the
    test also decodes and replays without snapshots, which the knobs do change."""
    cmd = [str(bin_dir("paged") / "test-recurrent-state-rollback"), "-m", str(rollback_models[arch]),
           "-t", str(gate.THREADS)]
    proc = run(cmd, env=knobs, timeout=600)
    assert proc.returncode == 0, f"{' '.join(f'{k}={v}' for k, v in knobs.items())} {' '.join(cmd)}\n" + \
        proc.stdout[-2000:] + proc.stderr[-4000:]


def completion(model, knobs, n_predict=4, extra=()):
    """One complete llama-completion run (rerun like the gate's when its log lost its tail)."""
    cmd = gate.completion_cmd(bin_dir("paged"), gate.MODELS_DIR / f"{model}.gguf", "hello", "on")
    cmd[cmd.index("-n") + 1] = str(n_predict)
    proc = gate.run_completion(cmd + list(extra), knobs)
    proc.stdout, proc.stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    return proc


@pytest.mark.parametrize("knob", sorted(ALL_GDN_KNOBS))
@pytest.mark.parametrize("value", ["2", "yes", "-1"])
def test_bad_knob_value_is_a_clear_error(knob, value):
    proc = completion("gate-qwen35", {knob: value})
    assert proc.returncode != 0
    assert f"invalid value '{value}' for {knob}: expected 0 or 1" in proc.stderr


@pytest.mark.parametrize("knob", sorted(ALL_GDN_KNOBS))
def test_knob_on_another_arch_is_a_logged_no_op(knob):
    on = completion("gate-llama", {knob: "1"})
    assert on.returncode == 0, on.stderr[-3000:]
    assert f"{knob} has no effect on llama models" in on.stderr
    off = completion("gate-llama", {})
    assert on.stdout == off.stdout


@pytest.mark.parametrize("knob", sorted(ALL_GDN_KNOBS))
def test_knob_is_logged_when_it_applies(knob):
    proc = completion("gate-qwen35", {knob: "1"}, extra=["-lv", "4"])  # llama's info lines
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{knob} enabled" in proc.stderr


def _stream_until(srv, body, n_tokens, reached, out):
    """Streams one completion; sets `reached` once n_tokens tokens have arrived; the whole
    text goes to out["content"] (or the failure to out["error"])."""
    import http.client
    import json
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    try:
        conn.request("POST", "/completion", body=json.dumps(dict(body, stream=True)),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text, seen = [], 0
        for line in resp:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[len(b"data: "):])
            text.append(event.get("content", ""))
            seen = event.get("tokens_predicted", seen + 1)
            if seen >= n_tokens:
                reached.set()
            if event.get("stop"):
                break
        out["content"] = "".join(text)
    except Exception as e:  # noqa: BLE001 - reported by the test
        out["error"] = repr(e)
    finally:
        reached.set()
        conn.close()


def _hole_scenario(knobs, kv_unified, tmp_path):
    """Issue 8's reproduction: slot 0 streams; after its 5th token slot 1 runs a short request
    and goes idle (its state stays in the cache, between slots 0 and 2); then slot 2 runs a
    request while slot 0 is still decoding. Returns (slot 2's text, slot 0's text)."""
    import threading
    from server import Server  # noqa: E402 - verify/ is on the path (see gate above)
    args = ["-c", "24576", "-np", "3", "-fa", "on", "-cram", "0", "-t", str(gate.THREADS)]
    if kv_unified:
        args.append("-kvu")
    name = "-".join(f"{k}={v}" for k, v in knobs.items()) or "no-knob"
    log = tmp_path / f"{name}-{'kvu' if kv_unified else 'split'}.log"
    with Server(bin_dir("paged"), gate.MODELS_DIR / "gate-qwen35.gguf", args, env=knobs, log_path=log) as srv:
        common = {"temperature": 0, "seed": 1, "cache_prompt": True}
        reached, slot0 = threading.Event(), {}
        streamer = threading.Thread(target=_stream_until, args=(
            srv, dict(common, prompt=gate._words(30, 1), n_predict=400, id_slot=0), 5, reached, slot0))
        streamer.start()
        try:
            assert reached.wait(300), "slot 0 never produced 5 tokens"
            srv.post("/completion", dict(common, prompt=gate._words(12, 2), n_predict=3, id_slot=1))
            slot2 = srv.post("/completion", dict(common, prompt=gate._words(20, 3), n_predict=60, id_slot=2))
        finally:
            streamer.join(600)
    assert "error" not in slot0, slot0.get("error")
    return slot2["content"], slot0["content"]


@pytest.mark.parametrize("kv_unified", [True, False], ids=["unified-kv", "per-slot-kv"])
@pytest.mark.parametrize("knobs", [{"LLAMA_GDN_IDS": "1"}, {"LLAMA_GDN_INPLACE": "1"}, ALL_GDN_KNOBS],
                         ids=["ids", "inplace", "all-gdn-knobs"])
def test_knob_server_with_an_idle_slot_between_two_decoding_ones(knobs, kv_unified, tmp_path):
    """The layout that made LLAMA_GDN_IDS read another sequence's state (issue 8): a bit-exact
    knob must give the same text as the same binary without it (LLAMA_GDN_SSM_OUT_2D is
    bit-exact on F32 models on the CPU, which the gate model is)."""
    want = _hole_scenario({}, kv_unified, tmp_path)
    got = _hole_scenario(knobs, kv_unified, tmp_path)
    assert got[0] == want[0], f"{knobs}: slot 2 differs from the run without a knob (logs in {tmp_path})"
    assert got[1] == want[1], f"{knobs}: slot 0 differs from the run without a knob (logs in {tmp_path})"
