"""Greedy-md5 gate: paged with no knob set equals stock byte for byte on every
gate model, with flash attention on and off, for short and long prompts; stock
equals the recorded canonical md5s; bit-exact knobs keep the equality."""
import functools
import hashlib

import pytest

from conftest import ROOT, bin_dir
from harness import trailers
from verify import gate

pytestmark = pytest.mark.build

CASES = list(gate.cases())
IDS = [gate.case_key(*c).replace(" ", ":") for c in CASES]


@functools.lru_cache(maxsize=None)
def greedy(config, model, fa, prompt_name, knob_items=()):
    path = gate.MODELS_DIR / f"{model}.gguf"
    if not path.exists():
        pytest.fail(f"gate model {path} is missing: run 'make models'")
    return gate.run_greedy(bin_dir(config), path, gate.PROMPTS[prompt_name], fa, dict(knob_items))


# the canonical md5s of this CPU's stock build, read once for every case
recorded_md5s = functools.lru_cache(maxsize=None)(gate.load_recorded)


def reproduce(config, model, fa, prompt_name, knob_items=()):
    cmd = gate.completion_cmd(bin_dir(config), gate.MODELS_DIR / f"{model}.gguf", gate.PROMPTS[prompt_name], fa)
    return gate.shell_line(cmd, dict(knob_items))


def test_gate_models_are_deterministic():
    recorded = {}
    for line in (ROOT / "verify" / "models.md5").read_text().splitlines():
        if line and not line.startswith("#"):
            digest, name = line.split()
            recorded[name] = digest
    assert sorted(recorded) == sorted(f"{m}.gguf" for m in gate.GATE_MODELS)
    for name, digest in recorded.items():
        data = (gate.MODELS_DIR / name).read_bytes()
        assert hashlib.md5(data).hexdigest() == digest, f"{name}: generated model differs from the recorded md5"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stock_matches_recorded_md5(case):
    recorded = recorded_md5s()
    path = gate.recorded_path(bin_dir("stock"))
    key = gate.case_key(*case)
    assert key in recorded, f"no canonical md5 recorded for {key} in {path}"
    got = gate.md5(greedy("stock", *case))
    assert got == recorded[key], (f"stock output changed for {key}: {got} != recorded {recorded[key]} in {path} "
                                  f"(CPU features {gate.cpu_features(str(bin_dir('stock')))}; pin or flags changed?); "
                                  f"reproduce: {reproduce('stock', *case)}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_paged_without_knobs_equals_stock(case):
    stock, paged = greedy("stock", *case), greedy("paged", *case)
    assert stock == paged, gate.mismatch_report(gate.case_key(*case), stock, paged,
                                                reproduce("stock", *case), reproduce("paged", *case))


KNOBS = trailers.runtime_knobs()
KNOB_CASES = [(k, c) for k in KNOBS for c in CASES]


@pytest.mark.parametrize("knob,case", KNOB_CASES,
                         ids=[f"{k.patch[:4]}:{gate.case_key(*c).replace(' ', ':')}" for k, c in KNOB_CASES])
def test_knob(knob, case):
    items = tuple(sorted(knob.env.items()))
    stock, paged = greedy("stock", *case), greedy("paged", *case, knob_items=items)
    label = f"{gate.case_key(*case)} with {knob.name} ({knob.patch})"
    if knob.bit_exact_per_slot:  # one sequence: "per-slot" knobs are exact here too
        assert stock == paged, gate.mismatch_report(label, stock, paged, reproduce("stock", *case),
                                                    reproduce("paged", *case, items))
    else:
        assert not gate.looks_broken(paged), f"{label}: output is empty or NaN"
        print(f"{label}: agreement with stock {gate.agreement(stock, paged):.1%}")


def test_knob_list_is_read_from_the_trailers():
    # The machinery must see every patch; a patch without a knob contributes none.
    names = [p for p in (ROOT / "patches" / "paged").glob("*.patch")]
    assert names, "the paged series is empty"
    assert KNOBS, "no runtime knob found in the trailers"
    for knob in KNOBS:
        assert all(k.startswith("LLAMA_") or k.startswith("GGML_") for k in knob.env), (knob.patch, knob.env)
