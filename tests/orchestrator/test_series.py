"""The series and the facts about its knobs: every patch's trailers (one list,
scripts/trailers.txt), its Tests: naming tests that exist, docs/KNOBS.md as the
one knob reference, 'make serve' knobs from the trailers. No build needed."""
import re
import shutil

import pytest

from conftest import ROOT, run
from harness import trailers

pytestmark = pytest.mark.fast


def copy_patches(tmp_path):
    dest = tmp_path / "patches"
    shutil.copytree(ROOT / "patches", dest)
    return dest


def test_every_patch_has_the_required_trailers_and_tests_that_exist():
    patches = trailers.all_patches()
    assert patches, "the series is empty"
    for patch in patches:
        t = trailers.patch_trailers(patch)
        missing = [name for name in trailers.trailer_names("required") if not t.get(name)]
        assert not missing, f"{patch.name} lacks {missing}"
        assert trailers.test_problems(patch, patches) == []


def test_the_trailer_list_is_read_not_repeated():
    names = trailers.trailer_names("required")
    assert {"Knob", "Default", "Bit-exact", "Backends", "Measured", "Tests", "Upstream"} <= set(names)
    assert trailers.trailer_names("optional") == ["Recommended", "Requires"]
    # no script carries its own copy of the list
    for script in (ROOT / "scripts").glob("*.sh"):
        assert "Bit-exact Backends" not in script.read_text(), f"{script.name} repeats the trailer list"


def test_a_patch_without_tests_is_refused(tmp_path):
    patches = copy_patches(tmp_path)
    victim = sorted((patches / "paged").glob("*.patch"))[1]
    victim.write_text(re.sub(r"^Tests: .*\n", "", victim.read_text(), flags=re.M))
    proc = run([ROOT / "scripts" / "check-series.sh"], env={"LLAMA_PATCHES": str(patches)})
    assert proc.returncode != 0
    assert f"{victim.name}: no Tests: trailer" in proc.stderr


def test_a_test_that_does_not_exist_is_reported(tmp_path):
    patches = copy_patches(tmp_path)
    victim = sorted((patches / "paged").glob("*.patch"))[1]
    text = re.sub(r"^Tests: .*$", "Tests: test-no-such-thing, tests/nope.py, tests/gates/test_gate_md5.py::test_nope",
                  victim.read_text(), flags=re.M)
    victim.write_text(text)
    problems = trailers.test_problems(victim, list((patches / "paged").glob("*.patch")))
    assert any("no patch of the series adds tests/test-no-such-thing.cpp" in p for p in problems), problems
    assert any("tests/nope.py does not exist" in p for p in problems), problems
    assert any("has no test test_nope" in p for p in problems), problems


def test_the_readme_links_the_generated_knob_reference_instead_of_copying_it():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/KNOBS.md)" in readme
    for knob in trailers.runtime_knobs():
        for name in knob.env:
            assert f"| `{name}`" not in readme, f"README carries a hand copy of {name}'s row"
            assert name in (ROOT / "docs" / "KNOBS.md").read_text()


def test_serve_knobs_come_from_the_recommended_trailers():
    want = [k.name for k in trailers.runtime_knobs() if k.recommended]
    assert want, "no patch is recommended for make serve"
    proc = run(["bash", "-c", '. scripts/series-lib.sh && series_recommended_knobs patches patches/paged'],
               check=True)
    assert proc.stdout.split() == want
    assert "LLAMA_GDN" not in (ROOT / "scripts" / "serve.sh").read_text(), "serve.sh names a knob itself"


def test_an_unknown_requirement_is_an_error_not_ignored():
    assert trailers.requirements_of({"Requires": ["kv-unified, attention-only"]}) == ("kv-unified", "attention-only")
    with pytest.raises(ValueError, match="unknown Requires: gpu-only"):
        trailers.requirements_of({"Requires": ["kv-unified, gpu-only"]})
