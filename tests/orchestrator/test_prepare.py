"""prepare.sh: every route to a checkout, and every bad input it must refuse
with a clear message without losing anything.

Most tests need the upstream source: the verified pristine copy in .cache (any
earlier prepare leaves it), else the npm registry. Without either they are
skipped with that reason; the tests of bad input that stops prepare before it
needs the source (SOURCE_FREE) run everywhere."""
import functools
import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, VERSION, run

pytestmark = pytest.mark.fast

PRISTINE = VERSION["LLAMA_TREE"]
PAGED_TREE = (ROOT / "patches" / "paged" / "tree-hash").read_text().strip()

SOURCE_FREE = {"test_foreign_directory_is_refused", "test_source_with_the_wrong_tree_is_refused",
               "test_npm_tarball_with_the_wrong_integrity_is_refused", "test_bad_settings_fail_before_any_work",
               "test_make_rejects_bad_settings", "test_unknown_argument_is_refused"}


@functools.lru_cache(maxsize=None)
def source_missing():
    """Why prepare.sh cannot get the upstream source here, or None when it can."""
    cache = pathlib.Path(os.environ.get("LLAMA_CACHE") or ROOT / ".cache")
    if (cache / "pristine.git").is_dir():
        return None
    if shutil.which("npm") is None:
        return f"needs the upstream source: no {cache}/pristine.git and no npm"
    try:
        proc = subprocess.run(["npm", "view", f"{VERSION['LLAMA_NPM_PACKAGE']}@{VERSION['LLAMA_NPM_VERSION']}",
                               "dist.integrity"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        if proc.returncode == 0:
            return None
    except subprocess.TimeoutExpired:
        pass
    return f"needs the upstream source: no {cache}/pristine.git and the npm registry is not reachable"


def require_source():
    reason = source_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _upstream_source(request):
    if request.node.originalname not in SOURCE_FREE:
        require_source()


def prepare(checkout, paged="on", extra_env=None, args=()):
    env = {"LLAMA_PAGED": paged, "LLAMA_CHECKOUT": str(checkout)}
    env.update(extra_env or {})
    return run([str(ROOT / "prepare.sh"), *args], env=env)


def last_line(proc):
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def copy_patches(tmp_path):
    dest = tmp_path / "patches"
    shutil.copytree(ROOT / "patches", dest)
    return dest


@pytest.fixture(scope="module")
def paged_checkout(tmp_path_factory):
    """One prepared paged checkout, shared read-only by several tests."""
    require_source()
    checkout = tmp_path_factory.mktemp("shared") / "paged"
    proc = prepare(checkout)
    assert proc.returncode == 0, proc.stderr
    return checkout


def test_stock_is_pristine_and_paged_is_recorded(tmp_path):
    stock = prepare(tmp_path / "stock", paged="off")
    assert stock.returncode == 0, stock.stderr
    assert last_line(stock) == PRISTINE
    paged = prepare(tmp_path / "paged", paged="on")
    assert paged.returncode == 0, paged.stderr
    assert last_line(paged) == PAGED_TREE
    assert PAGED_TREE != PRISTINE


def test_second_run_is_a_noop_with_the_same_hash(paged_checkout):
    head = run(["git", "-C", str(paged_checkout), "rev-parse", "HEAD"], check=True).stdout
    again = prepare(paged_checkout)
    assert again.returncode == 0, again.stderr
    assert last_line(again) == PAGED_TREE
    assert "already prepared" in again.stderr
    # Nothing was re-applied: same commit, not a second copy of the series.
    assert run(["git", "-C", str(paged_checkout), "rev-parse", "HEAD"], check=True).stdout == head
    count = run(["git", "-C", str(paged_checkout), "rev-list", "--count", "HEAD"], check=True).stdout
    assert int(count) == 1 + len(list((ROOT / "patches" / "paged").glob("*.patch")))


def test_on_off_on_in_one_checkout_dir(tmp_path):
    checkout = tmp_path / "one"
    for paged, want in (("on", PAGED_TREE), ("off", PRISTINE), ("on", PAGED_TREE)):
        proc = prepare(checkout, paged=paged)
        assert proc.returncode == 0, proc.stderr
        assert last_line(proc) == want
        tree = run(["git", "-C", str(checkout), "rev-parse", "HEAD^{tree}"], check=True).stdout.strip()
        assert tree == want
        assert run(["git", "-C", str(checkout), "status", "--porcelain"], check=True).stdout == ""


@pytest.mark.parametrize("kind", ["edit", "untracked", "staged", "commit"])
def test_local_changes_are_refused_and_kept(tmp_path, kind):
    checkout = tmp_path / "paged"
    assert prepare(checkout).returncode == 0
    target = checkout / "src" / "llama.cpp"
    if kind == "edit":
        with open(target, "a") as f:
            f.write("// my local work\n")
    elif kind == "untracked":
        (checkout / "my-notes.txt").write_text("keep me\n")
    elif kind == "staged":
        with open(target, "a") as f:
            f.write("// staged work\n")
        run(["git", "-C", str(checkout), "add", "src/llama.cpp"], check=True)
    else:
        with open(target, "a") as f:
            f.write("// committed work\n")
        run(["git", "-C", str(checkout), "commit", "-qam", "mine"], check=True,
            env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                 "GIT_COMMITTER_EMAIL": "t@t"})
    before = {p: p.read_bytes() for p in (target, checkout / "my-notes.txt") if p.exists()}
    # Same configuration, and a switch that would otherwise re-create it.
    for paged in ("on", "off"):
        proc = prepare(checkout, paged=paged)
        assert proc.returncode != 0
        assert "local changes" in proc.stderr
        assert "make clean-src" in proc.stderr and "--force" in proc.stderr
        assert {p: p.read_bytes() for p in before} == before


def test_force_saves_the_changes_before_recreating(tmp_path):
    checkout = tmp_path / "paged"
    cache = ROOT / ".cache"
    assert prepare(checkout).returncode == 0
    with open(checkout / "src" / "llama.cpp", "a") as f:
        f.write("// forced away\n")
    saved_before = set((cache / "discarded").glob("*.patch")) if (cache / "discarded").exists() else set()
    proc = prepare(checkout, args=["--force"])
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc) == PAGED_TREE
    saved = set((cache / "discarded").glob("*.patch")) - saved_before
    assert len(saved) == 1
    patch = saved.pop()
    try:
        assert "+// forced away" in patch.read_text()
    finally:
        patch.unlink()


def test_foreign_directory_is_refused(tmp_path):
    checkout = tmp_path / "paged"
    checkout.mkdir()
    (checkout / "something.txt").write_text("not a checkout\n")
    proc = prepare(checkout)
    assert proc.returncode != 0
    assert "not made by prepare.sh" in proc.stderr
    assert (checkout / "something.txt").read_text() == "not a checkout\n"


def corrupt_context(patch):
    """Changes one context line of the first hunk, as a stale patch would have."""
    lines = patch.read_text().splitlines(keepends=True)
    in_hunk = False
    for i, line in enumerate(lines):
        if line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line.startswith(" ") and line.strip():
            lines[i] = " // stale context that upstream does not have\n"
            break
    patch.write_text("".join(lines))


@pytest.mark.parametrize("damage", ["stale", "garbage"])
def test_failing_patch_names_itself_and_leaves_the_checkout(tmp_path, damage):
    checkout = tmp_path / "paged"
    assert prepare(checkout).returncode == 0
    head = run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True).stdout
    patches = copy_patches(tmp_path)
    victim = sorted((patches / "paged").glob("*.patch"))[0]
    if damage == "stale":
        corrupt_context(victim)
    else:
        victim.write_text("this is not a patch\n")
    proc = prepare(checkout, extra_env={"LLAMA_PATCHES": str(patches)})
    assert proc.returncode != 0
    assert victim.name in proc.stderr
    if damage == "stale":
        assert "patch failed: common/build-info.cpp.in" in proc.stderr
    assert "To recover" in proc.stderr
    # The old checkout is intact and nothing half-applied was left around.
    assert run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True).stdout == head
    assert run(["git", "-C", str(checkout), "status", "--porcelain"], check=True).stdout == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []


def test_failing_patch_on_a_fresh_checkout_leaves_nothing(tmp_path):
    patches = copy_patches(tmp_path)
    corrupt_context(sorted((patches / "paged").glob("*.patch"))[0])
    checkout = tmp_path / "paged"
    proc = prepare(checkout, extra_env={"LLAMA_PATCHES": str(patches)})
    assert proc.returncode != 0
    assert not checkout.exists()
    assert list(tmp_path.glob(".staging*")) == []


def test_recorded_hash_mismatch_is_refused(tmp_path):
    patches = copy_patches(tmp_path)
    (patches / "paged" / "tree-hash").write_text("0" * 40 + "\n")
    proc = prepare(tmp_path / "paged", extra_env={"LLAMA_PATCHES": str(patches)})
    assert proc.returncode != 0
    assert "tree hash mismatch" in proc.stderr
    assert "0" * 40 in proc.stderr and PAGED_TREE in proc.stderr
    assert not (tmp_path / "paged").exists()


@pytest.mark.parametrize("defect", ["unlisted", "missing", "order"])
def test_series_file_must_match_the_patches(tmp_path, defect):
    patches = copy_patches(tmp_path)
    paged = patches / "paged"
    series = paged / "series"
    if defect == "unlisted":
        shutil.copy(sorted(paged.glob("*.patch"))[0], paged / "9999-extra.patch")
        want = "9999-extra.patch is not listed"
    elif defect == "missing":
        with open(series, "a") as f:
            f.write("9998-gone.patch\n")
        want = "lists 9998-gone.patch, which does not exist"
    else:
        shutil.copy(sorted(paged.glob("*.patch"))[0], paged / "0000-first.patch")
        with open(series, "a") as f:
            f.write("0000-first.patch\n")
        want = "not in numeric order"
    proc = prepare(tmp_path / "paged", extra_env={"LLAMA_PATCHES": str(patches)})
    assert proc.returncode != 0
    assert want in proc.stderr
    check = run([str(ROOT / "scripts" / "check-series.sh")], env={"LLAMA_PATCHES": str(patches)})
    assert check.returncode != 0
    assert want in check.stderr


def test_source_with_the_wrong_tree_is_refused(tmp_path):
    src = tmp_path / "not-llama"
    src.mkdir()
    (src / "README").write_text("some other project\n")
    git_env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q", str(src)], check=True)
    run(["git", "-C", str(src), "add", "-A"], check=True)
    run(["git", "-C", str(src), "commit", "-qm", "x"], check=True, env=git_env)
    actual = run(["git", "-C", str(src), "rev-parse", "HEAD^{tree}"], check=True).stdout.strip()
    proc = prepare(tmp_path / "paged", extra_env={"LLAMA_CACHE": str(tmp_path / "cache"),
                                                  "LLAMA_SRC": str(src)})
    assert proc.returncode != 0
    assert "tree hash mismatch" in proc.stderr
    assert PRISTINE in proc.stderr and actual in proc.stderr
    assert not (tmp_path / "paged").exists()


def test_source_from_a_local_checkout(tmp_path):
    """LLAMA_SRC pointing at a checkout of the pin is accepted."""
    pristine = ROOT / ".cache" / "pristine.git"
    proc = prepare(tmp_path / "stock", paged="off",
                   extra_env={"LLAMA_CACHE": str(tmp_path / "cache"), "LLAMA_SRC": str(pristine)})
    # pristine.git is bare with HEAD unset; its branch 'pristine' is the candidate.
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc) == PRISTINE


def test_npm_tarball_with_the_wrong_integrity_is_refused(tmp_path):
    fake = tmp_path / "node-llama-cpp-3.22.1.tgz"
    fake.write_bytes(b"not the real tarball\n" * 100)
    proc = prepare(tmp_path / "paged", extra_env={"LLAMA_CACHE": str(tmp_path / "cache"),
                                                  "LLAMA_NPM_TARBALL": str(fake)})
    assert proc.returncode != 0
    assert "integrity mismatch" in proc.stderr
    assert VERSION["LLAMA_NPM_INTEGRITY"] in proc.stderr
    assert "sha512-" in proc.stderr.split("actual", 1)[1]
    assert fake.exists(), "a user's file is never deleted"
    assert not (tmp_path / "paged").exists()


@pytest.mark.parametrize("env,want", [
    ({"LLAMA_PAGED": "yes"}, "LLAMA_PAGED must be 'on' or 'off'"),
    ({"LLAMA_FETCH": "ftp"}, "LLAMA_FETCH must be 'npm' or 'git'"),
])
def test_bad_settings_fail_before_any_work(tmp_path, env, want):
    full = {"LLAMA_CHECKOUT": str(tmp_path / "x"), "LLAMA_CACHE": str(tmp_path / "cache")}
    full.update(env)
    proc = run([str(ROOT / "prepare.sh")], env=full)
    assert proc.returncode != 0
    assert want in proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("var,value,want", [
    ("LLAMA_PAGED", "maybe", "LLAMA_PAGED must be 'on' or 'off'"),
    ("BACKEND", "metal", "BACKEND must be one of cpu, cuda, hip, vulkan"),
])
def test_make_rejects_bad_settings(var, value, want):
    proc = run(["make", "-n", "build", f"{var}={value}"])
    assert proc.returncode != 0
    assert want in proc.stderr


def test_unknown_argument_is_refused():
    proc = run([str(ROOT / "prepare.sh"), "--frobnicate"])
    assert proc.returncode != 0
    assert "unknown argument '--frobnicate'" in proc.stderr


def test_quilt_applies_the_same_series(tmp_path, paged_checkout):
    if shutil.which("quilt") is None:
        pytest.skip("quilt is not installed")
    tree = tmp_path / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT / ".cache" / "pristine.git"), "archive", "pristine"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for series_dir in (ROOT / "patches", ROOT / "patches" / "paged"):
        if not [l for l in (series_dir / "series").read_text().splitlines() if l and not l.startswith("#")]:
            continue
        proc = run(["quilt", "push", "-a", "-q"], cwd=tree,
                   env={"QUILT_PATCHES": str(series_dir), "QUILT_PC": f".pc-{series_dir.name}"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for pc in tree.glob(".pc-*"):
        shutil.rmtree(pc)
    # Same content as the prepared checkout, file for file.
    diff = run(["diff", "-r", "-q", "-x", ".git", str(tree), str(paged_checkout)])
    assert diff.returncode == 0, diff.stdout


def test_export_regenerates_the_committed_patches(tmp_path):
    """Patches are generated: exporting the dev branch reproduces them byte for byte."""
    dev = tmp_path / "dev"
    proc = run([str(ROOT / "scripts" / "dev.sh")], env={"LLAMA_DEV": str(dev)})
    assert proc.returncode == 0, proc.stderr
    patches = copy_patches(tmp_path)
    for p in (patches / "paged").glob("*.patch"):
        p.unlink()
    proc = run([str(ROOT / "scripts" / "export-patches.sh")],
               env={"LLAMA_DEV": str(dev), "LLAMA_PATCHES": str(patches),
                    "KNOBS_DOC": str(tmp_path / "KNOBS.md")})
    assert proc.returncode == 0, proc.stderr
    diff = run(["diff", "-r", str(ROOT / "patches"), str(patches)])
    assert diff.returncode == 0, diff.stdout
    assert (tmp_path / "KNOBS.md").read_text() == (ROOT / "docs" / "KNOBS.md").read_text()


def test_export_refuses_a_commit_without_trailers(tmp_path):
    dev = tmp_path / "dev"
    assert run([str(ROOT / "scripts" / "dev.sh")], env={"LLAMA_DEV": str(dev)}).returncode == 0
    with open(dev / "src" / "llama.cpp", "a") as f:
        f.write("// undocumented change\n")
    git_env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "-C", str(dev), "commit", "-qam", "llama : something"], check=True, env=git_env)
    patches = copy_patches(tmp_path)
    proc = run([str(ROOT / "scripts" / "export-patches.sh")],
               env={"LLAMA_DEV": str(dev), "LLAMA_PATCHES": str(patches),
                    "KNOBS_DOC": str(tmp_path / "KNOBS.md")})
    assert proc.returncode != 0
    assert "lacks the trailer Knob:" in proc.stderr
    diff = run(["diff", "-r", str(ROOT / "patches"), str(patches)])
    assert diff.returncode == 0, "a refused export changes nothing"
