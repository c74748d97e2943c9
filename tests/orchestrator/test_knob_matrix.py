"""The server gate's knob-combination matrix covers every pair of the series' knobs."""
import pytest

from harness import knob_matrix, trailers

pytestmark = pytest.mark.fast


def test_every_pair_of_knobs_is_combined_or_refused():
    knobs = trailers.runtime_knobs()
    named = set().union(*knob_matrix.COMBINED.values(), knob_matrix.DEFAULT_ON)
    assert {knob_matrix.knob_name(k) for k in knobs} <= named, "a knob of the series is in no combination"
    assert named <= {knob_matrix.knob_name(k) for k in knobs}, "a combination names a knob the series lacks"
    assert knob_matrix.uncovered_pairs(knobs) == []


def test_a_pair_left_out_is_found(monkeypatch):
    monkeypatch.setitem(knob_matrix.COMBINED, "with-prefix-cache",
                        tuple(n for n in knob_matrix.COMBINED["with-prefix-cache"] if n != "LLAMA_GDN_IDS"))
    wrong = knob_matrix.uncovered_pairs(trailers.runtime_knobs())
    assert ("LLAMA_GDN_IDS", "LLAMA_PREFIX_CACHE", "neither run together nor refused") in wrong


def test_the_settings_of_a_combination_are_every_knobs():
    env = knob_matrix.env_of(["LLAMA_KV_MAX_MIB", "LLAMA_PREFILL_BUDGET"])
    assert env["LLAMA_KV_PAGED"] == "1" and "LLAMA_KV_MAX_MIB" in env and "LLAMA_PREFILL_BUDGET" in env


def test_a_knob_on_by_default_is_on_in_every_combination():
    """Its gate setting (=0) is stock's behaviour: a combination that set it would run without it."""
    for names in knob_matrix.COMBINED.values():
        assert not set(names) & set(knob_matrix.DEFAULT_ON)
        assert "LLAMA_REQUEUE_DEFERRED" not in knob_matrix.env_of(names)
