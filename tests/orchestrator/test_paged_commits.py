"""Paged device memory is not committed by a write (docs/PAGED_KV.md): a memory context that
has a KV cache apply a ubatch (writes its cells: `->apply_ubatch(`) must have it commit them
(`commit_ubatch(`) in the same function, or on a GPU the graph writes memory no cell owns. No
device is needed to see a caller that forgets: this reads the paged tree's sources (issue 25,
item 2: DeepSeek V4's raw SWA cache was applied without a commit)."""
import re

import pytest

from conftest import ROOT

pytestmark = pytest.mark.build

PAGED_SRC = ROOT / "src" / "paged" / "src"


def enclosing_function(lines, i):
    """The lines of the function around line i: from the last line before it that starts a
    definition at column 0 to the closing brace at column 0 after it."""
    start = i
    while start > 0 and not re.match(r"^[A-Za-z].*\(", lines[start]):
        start -= 1
    end = i
    while end < len(lines) and lines[end] != "}":
        end += 1
    return start, lines[start:end + 1]


def test_every_context_that_applies_a_ubatch_commits_it():
    assert PAGED_SRC.is_dir(), f"no paged tree at {PAGED_SRC}: run 'make build-both' (or prepare.sh with LLAMA_PAGED=on)"
    callers, missing = [], []
    for path in sorted(PAGED_SRC.glob("*.cpp")):
        lines = path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if "->apply_ubatch(" not in line or line.lstrip().startswith("//"):
                continue
            start, body = enclosing_function(lines, i)
            where = f"{path.name}:{i + 1} ({lines[start].strip()})"
            callers.append(where)
            if not any("commit_ubatch(" in b for b in body):
                missing.append(where)
    # the KV cache's own context and DeepSeek V4's raw one, at least: the check is not vacuous
    assert len(callers) >= 2, f"found only {callers}: has the API been renamed?"
    assert not missing, "applies a ubatch to a cache without committing its cells: " + "; ".join(missing)
