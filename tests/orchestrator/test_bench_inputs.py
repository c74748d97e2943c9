"""The benchmark tools refuse bad inputs before they run anything, with a clear
message and no traceback: an unknown workload key, a missing binary or model,
an interpreter without matplotlib. No build needed."""
import json
import sys

import pytest

from benchtools import BENCH, SMOKE_WORKLOADS, bench, fake_bin_dir
from harness import workload as wl

pytestmark = pytest.mark.fast


def test_unknown_workload_key_is_an_error(tmp_path):
    workload = json.loads((SMOKE_WORKLOADS / "burst.json").read_text())
    workload["n_slot"] = 2  # typo of n_slots
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(workload))
    proc = bench("loadgen.py", "--model", tmp_path / "m.gguf", "--workload", path, "--out", tmp_path / "out")
    assert proc.returncode != 0
    assert "unknown key" in proc.stderr and "'n_slot'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script,tool,model_flag", [
    ("batched.py", "llama-batched-bench", "--models"),
    ("loadgen.py", "llama-server", "--model"),
    ("memory.py", "llama-server", "--model"),
])
def test_missing_binary_is_an_error(tmp_path, script, tool, model_flag):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    extra = ["--workload", SMOKE_WORKLOADS / "burst.json"] if script == "loadgen.py" else []
    proc = bench(script, model_flag, model, *extra, "--stock-bin", empty, "--paged-bin", fake_bin_dir(tmp_path / "bin"),
                 "--out", tmp_path / "out")
    assert proc.returncode != 0
    assert f"stock binary {tool} not found at {empty / tool}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script,model_flag", [("batched.py", "--models"), ("loadgen.py", "--model"),
                                               ("memory.py", "--model")])
def test_missing_model_is_an_error(tmp_path, script, model_flag):
    fake = fake_bin_dir(tmp_path / "bin")
    missing = tmp_path / "no-such-model.gguf"
    extra = ["--workload", SMOKE_WORKLOADS / "burst.json"] if script == "loadgen.py" else []
    proc = bench(script, model_flag, missing, *extra, "--stock-bin", fake, "--paged-bin", fake,
                 "--out", tmp_path / "out")
    assert proc.returncode != 0
    assert f"model not found: {missing}" in proc.stderr, proc.stderr
    assert "stub must not run" not in proc.stderr and "Traceback" not in proc.stderr


def test_every_shipped_workload_is_valid_and_deterministic():
    paths = sorted((BENCH / "workloads").rglob("*.json"))
    assert {p.name for p in paths} >= {"shared_prefix.json", "staggered.json", "burst.json"}
    for path in paths:
        first, second = wl.plan(wl.load(path)), wl.plan(wl.load(path))
        assert first == second, f"{path}: same seed, different prompts"
    shared = wl.plan(wl.load(BENCH / "workloads" / "shared_prefix.json"))
    prompts = [r["prompt"] for wave in shared for r in wave["requests"]]
    prefix = prompts[0].split()[:1500]
    assert all(p.split()[:1500] == prefix for p in prompts), "every request must carry the same prefix"
    assert len(set(prompts)) == len(prompts), "tails must make every prompt unique"


def test_an_interpreter_without_matplotlib_runs_the_tool_again_with_python(tmp_path):
    """`python3 -S` sees no site-packages, so no matplotlib: the tool must notice before its first
    run and re-execute itself with PYTHON, which has it (this interpreter)."""
    model = tmp_path / "no-such-model.gguf"
    proc = bench("batched.py", "--models", model, "--out", tmp_path / "out",
                 python=[sys.executable, "-S"], env={"PYTHON": sys.executable})
    assert f"has no matplotlib; running again with {sys.executable}" in proc.stderr, proc.stderr
    # the re-executed tool then reports the real problem, before any run
    assert f"model not found: {model}" in proc.stderr and "Traceback" not in proc.stderr


def test_no_interpreter_with_matplotlib_is_an_error_before_any_run(tmp_path):
    proc = bench("batched.py", "--models", tmp_path / "m.gguf", "--out", tmp_path / "out",
                 python=[sys.executable, "-S"], env={"PYTHON": "/bin/false"})
    assert proc.returncode == 2
    assert "matplotlib is missing in" in proc.stderr and "/usr/bin/python3" in proc.stderr, proc.stderr
    assert "batched:" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_chat_turn_continues_its_conversation():
    waves = wl.plan(wl.load(BENCH / "workloads" / "chat.json"))
    first, second = waves[0]["requests"], waves[1]["requests"]
    assert [r["continues"] for r in second] == [r["id"] for r in first]
    assert all(w["start_s"] is None for w in waves[1:])  # a turn starts when the last one has ended
    assert second[0]["approx_tokens"] > first[0]["approx_tokens"] + first[0]["n_predict"]


@pytest.mark.parametrize("wave,message", [
    ({"n_requests": 1, "prompt_tokens": 4, "continue_from_wave": 1}, "must be the index of an earlier wave"),
    ({"n_requests": 1, "prompt_tokens": 4, "continue_from_wave": 0, "shared_prefix_tokens": 8},
     "shared_prefix_tokens cannot be combined with 'continue_from_wave'"),
    ({"n_requests": 1, "prompt_tokens": 4, "continue_from_wave": 0, "start_s": 1.0},
     "start_s cannot be combined with 'continue_from_wave'"),
])
def test_a_bad_continuation_is_an_error(wave, message):
    data = {"n_slots": 1, "ctx": 512, "n_predict": 4,
            "waves": [{"n_requests": 1, "prompt_tokens": 4}, wave]}
    with pytest.raises(Exception, match=message):
        wl.validate(data, where="test")
