"""make test-upstream-server's comparison (tests/upstream_server/run.py): the allow list's
format, a difference, an allowed one, stale entries. No build, no server."""
import importlib.util

import pytest

from harness import paths

pytestmark = pytest.mark.fast

_spec = importlib.util.spec_from_file_location("upstream_server_run", paths.ROOT / "tests/upstream_server/run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

CONFIGS = {name: spec[3] for name, spec in run.CONFIGS.items()}
SLEEP = "unit/test_sleep.py::test_server_sleep"
RESTORE = "unit/test_kv_keep_only_active.py::test_clear_and_restore"
SPACEY = "unit/test_chat_completion.py::test_chat_completion[None-Book-What is the best book-8-(Suddenly)+|(Timmy)+]"


def res(**outcomes):
    """{test id: entry} from keyword pairs: a=passed."""
    ids = {"sleep": SLEEP, "restore": RESTORE, "spacey": SPACEY}
    return {ids[k]: {"outcome": v, "reason": f"why {k} {v}", "duration": 0.1} for k, v in outcomes.items()}


def test_the_repositorys_allow_list_parses_and_names_only_compared_configurations():
    entries = run.parse_allow((paths.ROOT / "tests/upstream_server/allow.txt").read_text(), CONFIGS)
    for (config, test_id), (before, after, reason) in entries.items():
        assert CONFIGS[config] is not None and test_id.startswith("unit/test_") and reason


def test_an_entry_holds_a_test_id_with_spaces_and_a_reason_over_several_lines():
    text = (f"# comment\n\npaged-knobs passed->failed {SPACEY}\n"
            "    first line of the reason,\n    second line\n"
            f"paged failed->passed {SLEEP}\n  one line\n")
    entries = run.parse_allow(text, CONFIGS)
    assert entries == {
        ("paged-knobs", SPACEY): ("passed", "failed", "first line of the reason, second line"),
        ("paged", SLEEP): ("failed", "passed", "one line"),
    }


@pytest.mark.parametrize("text,message", [
    (f"paged passed->failed {SLEEP}\n", "no reason"),
    (f"paged passed->failed {SLEEP}\n\n# a comment is no reason\n", "no reason"),
    ("   a reason first\n", "without an entry"),
    (f"paged passed {SLEEP}\n  r\n", "not BASELINE->OUTCOME"),
    (f"paged passed->broken {SLEEP}\n  r\n", "unknown outcome 'broken'"),
    (f"paged passed->passed {SLEEP}\n  r\n", "no difference"),
    (f"nightly passed->failed {SLEEP}\n  r\n", "unknown configuration 'nightly'"),
    (f"stock passed->failed {SLEEP}\n  r\n", "is a baseline"),
    (f"paged passed->failed {SLEEP}\n  r\npaged passed->skipped {SLEEP}\n  r\n", "listed twice"),
    ("paged passed->failed\n  r\n", "expected 'CONFIG BASELINE->OUTCOME TEST_ID'"),
])
def test_a_malformed_allow_list_is_refused_naming_the_line(text, message):
    with pytest.raises(run.AllowListError, match=message):
        run.parse_allow(text, CONFIGS)


def test_equal_outcomes_are_no_difference():
    assert run.compare("paged", res(sleep="passed", restore="failed"), res(sleep="passed", restore="failed"), {}) \
        == ([], [], [])


def test_a_difference_not_allowed_is_unexpected_with_the_reason():
    allowed, unexpected, stale = run.compare("paged", res(sleep="passed", restore="passed"),
                                             res(sleep="failed", restore="passed"), {})
    assert allowed == [] and stale == []
    assert unexpected == [(SLEEP, "passed", "failed", "why sleep failed")]


def test_a_test_missing_on_one_side_is_a_difference():
    _, unexpected, _ = run.compare("paged", res(sleep="passed", restore="passed"), res(sleep="passed"), {})
    assert [(u[0], u[1], u[2]) for u in unexpected] == [(RESTORE, "passed", "absent")]


def test_an_allowed_difference_passes_with_its_reason():
    allow = {("paged-knobs", RESTORE): ("passed", "failed", "RAM cache off with the prefix cache")}
    allowed, unexpected, stale = run.compare("paged-knobs", res(restore="passed"), res(restore="failed"), allow)
    assert allowed == [(RESTORE, "passed", "failed", "RAM cache off with the prefix cache")]
    assert unexpected == [] and stale == []


def test_an_entry_applies_only_to_its_configuration():
    allow = {("paged-knobs", RESTORE): ("passed", "failed", "r")}
    _, unexpected, stale = run.compare("paged", res(restore="passed"), res(restore="failed"), allow)
    assert [u[0] for u in unexpected] == [RESTORE] and stale == []


def test_an_entry_whose_difference_is_gone_is_stale():
    allow = {("paged-knobs", RESTORE): ("passed", "failed", "r")}
    allowed, unexpected, stale = run.compare("paged-knobs", res(restore="passed"), res(restore="passed"), allow)
    assert allowed == [] and unexpected == []
    assert stale == [(RESTORE, "allowed passed->failed, now both passed")]


def test_an_entry_whose_difference_changed_is_stale_and_the_new_one_unexpected():
    allow = {("paged-knobs", RESTORE): ("passed", "failed", "r")}
    _, unexpected, stale = run.compare("paged-knobs", res(restore="passed"), res(restore="error"), allow)
    assert [(u[0], u[1], u[2]) for u in unexpected] == [(RESTORE, "passed", "error")]
    assert stale == [(RESTORE, "allowed passed->failed, now passed->error")]


def test_an_entry_for_a_test_that_no_longer_exists_is_stale():
    allow = {("paged-knobs", RESTORE): ("passed", "failed", "r")}
    _, unexpected, stale = run.compare("paged-knobs", res(sleep="passed"), res(sleep="passed"), allow)
    assert unexpected == []
    assert stale == [(RESTORE, "allowed passed->failed, but no such test ran")]


def test_counts_cover_every_outcome():
    c = run.counts(res(sleep="passed", restore="skipped", spacey="xfailed"))
    assert c["passed"] == 1 and c["skipped"] == 1 and c["xfailed"] == 1 and c["failed"] == 0


def failing(test_id, reason):
    return {test_id: {"outcome": "failed", "reason": reason, "duration": 0.1}}


@pytest.mark.parametrize("reason,kind", [
    ("assert 21 == 77", "AssertionError"),
    ("AssertionError: the text", "AssertionError"),
    ("RuntimeError: Server process died with return code 1", "RuntimeError"),
    ("call: Failed: Timeout >90.0s", "Failed"),
    ("requests.exceptions.ConnectionError: refused", "ConnectionError"),
    ("", "other"),
])
def test_a_failure_is_known_by_what_it_died_of(reason, kind):
    assert run.failure_kind(reason) == kind


def test_a_paged_server_that_dies_where_stock_fails_on_text_is_a_difference():
    """Stock fails many tests on the generated model's text; a paged server that dies, or times out,
    in one of them must not pass for the same failure."""
    stock = failing(SLEEP, "assert 21 == 77")
    _, unexpected, _ = run.compare("paged", stock, failing(SLEEP, "RuntimeError: Server process died with return code 1"), {})
    assert unexpected == [(SLEEP, "failed:AssertionError", "failed:RuntimeError",
                           "RuntimeError: Server process died with return code 1")]
    # the same kind of failure, with other numbers: no difference
    assert run.compare("paged", stock, failing(SLEEP, "assert 20 == 77"), {}) == ([], [], [])
    # an entry names the kinds; one that leaves them open does not cover a change of kind
    allow = run.parse_allow(f"paged-knobs failed:AssertionError->failed:RuntimeError {SLEEP}\n    refused at start\n", CONFIGS)
    allowed, unexpected, stale = run.compare("paged-knobs", stock, failing(SLEEP, "RuntimeError: died"), allow)
    assert [a[0] for a in allowed] == [SLEEP] and not unexpected and not stale
    with pytest.raises(run.AllowListError, match="unknown outcome"):
        run.parse_allow(f"paged-knobs passed:X->failed {SLEEP}\n    why\n", CONFIGS)


def test_a_server_that_does_not_exit_cleanly_when_stopped_is_a_difference():
    """Stock exits 0 on SIGTERM; a paged server that crashes on the way out (-11), or has to be
    killed (-9), in a test that passes on both sides is a difference, and an entry that leaves the
    exit out does not cover it."""
    stock = res(sleep="passed")
    paged = res(sleep="passed")
    paged[SLEEP]["exits"] = [-11]
    assert run.outcome_of(paged, SLEEP) == "passed+exit:-11"
    _, unexpected, _ = run.compare("paged", stock, paged, {})
    assert [u[:3] for u in unexpected] == [(SLEEP, "passed", "passed+exit:-11")]
    assert not run.outcome_matches("passed", "passed+exit:-11")
    assert run.outcome_matches("failed", "failed:RuntimeError") and run.outcome_matches("passed+exit:-9", "passed+exit:-9")
    # both sides exiting the same way is no difference
    stock[SLEEP]["exits"] = [-11]
    assert run.compare("paged", stock, paged, {}) == ([], [], [])


def test_an_entry_names_the_exit_of_a_server_refused_at_start():
    """A refusal at start fails the test (RuntimeError) and leaves exit status 1: an entry names both."""
    stock = failing(SLEEP, "assert 21 == 77")
    paged = failing(SLEEP, "RuntimeError: Server process died with return code 1")
    paged[SLEEP]["exits"] = [1]
    allow = run.parse_allow(f"paged-knobs failed:AssertionError->failed:RuntimeError+exit:1 {SLEEP}\n    refused\n", CONFIGS)
    allowed, unexpected, stale = run.compare("paged-knobs", stock, paged, allow)
    assert [a[:3] for a in allowed] == [(SLEEP, "failed:AssertionError", "failed:RuntimeError+exit:1")]
    assert not unexpected and not stale
    with pytest.raises(run.AllowListError, match="unknown outcome"):
        run.parse_allow(f"paged-knobs failed->failed+exit:x {SLEEP}\n    why\n", CONFIGS)
