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
