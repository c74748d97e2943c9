"""The patch series and the trailers of its patches: the one parser that the
docs checks, the gates, the tests and the tools use (scripts/gen-knobs-doc.sh
renders the same trailers as docs/KNOBS.md).

Trailers (scripts/trailers.txt lists them):
  Knob: NAME=VALUE         the environment setting that turns the behaviour on ("none": no knob)
  Bit-exact: yes ...       the knob must leave every output byte-identical to stock
  Bit-exact: per-slot ...  byte-identical for a lone sequence and where each sequence has a KV
                           stream of its own (the server's default); sequences sharing a unified
                           KV cache (-kvu) may differ in the last bits
  Tests: a, b              what covers the patch: a C++ test the series adds (test-x) or a
                           pytest path under tests/ (file.py or file.py::test_name)
  Recommended: yes         'make serve' turns the knob on
  Requires: kv-unified, attention-only
                           what the knob needs, from a fixed list (REQUIREMENTS); elsewhere the
                           server refuses to start, naming the knob, and the gates check that it does.
                           The last patch of a knob with the trailer says it (later patches lift
                           requirements: the prefix cache served attention models first)
"""
import dataclasses
import pathlib
import re
import subprocess
import tempfile

from .paths import ROOT

TRAILERS_FILE = ROOT / "scripts" / "trailers.txt"
SERIES_DIRS = (ROOT / "patches", ROOT / "patches" / "paged")


def trailer_names(kind="required"):
    """The trailer names of one kind ('required' or 'optional') from scripts/trailers.txt."""
    names = []
    for line in TRAILERS_FILE.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 2 and fields[0] == kind:
            names.append(fields[1])
    return names


def series(directory):
    """The patches of one series directory, in the order of its series file."""
    directory = pathlib.Path(directory)
    out = []
    for line in (directory / "series").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(directory / line)
    return out


def all_patches():
    """Every patch: the base series, then the paged series."""
    return [p for d in SERIES_DIRS for p in series(d)]


def parse_trailers(message):
    """{name: [values]} of a commit message's trailer block (git interpret-trailers)."""
    parsed = subprocess.run(["git", "interpret-trailers", "--parse"], input=message.encode(),
                            capture_output=True, check=True).stdout.decode()
    out = {}
    for line in parsed.splitlines():
        key, _, value = line.partition(": ")
        out.setdefault(key, []).append(value.strip())
    return out


def patch_message(patch):
    """The commit message of a format-patch file (git mailinfo)."""
    with tempfile.TemporaryDirectory() as tmp:
        msg = pathlib.Path(tmp) / "msg"
        with open(patch, "rb") as f:
            subprocess.run(["git", "mailinfo", str(msg), str(pathlib.Path(tmp) / "diff")], stdin=f,
                           stdout=subprocess.DEVNULL, check=True)
        return msg.read_text()


def patch_trailers(patch):
    return parse_trailers(patch_message(patch))


@dataclasses.dataclass
class Knob:
    patch: str          # file name of the patch that adds it, "+NNNN" for each that extends it
    env: dict           # {NAME: VALUE} that turns it on
    bit_exact: bool     # its Bit-exact: trailer starts with "yes"
    bit_exact_per_slot: bool  # ... with "yes" or "per-slot"
    recommended: bool   # its Recommended: trailer says yes ('make serve' sets it)
    requires: tuple = ()  # the items of its Requires: trailer (REQUIREMENTS)

    @property
    def name(self):
        return " ".join(f"{k}={v}" for k, v in self.env.items())


KNOB_SETTING = re.compile(r"\b([A-Z][A-Z0-9_]+)=(\S+)")

# What a knob may require (Requires: trailer): a unified KV cache (-kvu), a model without
# recurrent layers and without sliding-window attention, or LLAMA_KV_PAGED=1 on hybrid models
# (the gates set it there with the knob); or what it brings itself: turns-on-kv-unified (the
# serving profile turns on --kv-unified, so the server gate compares it with stock -kvu in both
# modes and checks that a server started without -kvu says it turned it on).
REQUIREMENTS = ("kv-unified", "attention-only", "kv-paged-on-hybrid", "turns-on-kv-unified")


def requirements_of(trailers):
    """The items of a Requires: trailer; an unknown one is an error, not a requirement ignored."""
    items = [item.strip() for value in trailers.get("Requires", []) for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in REQUIREMENTS]
    if unknown:
        raise ValueError(f"unknown Requires: {', '.join(unknown)} (known: {', '.join(REQUIREMENTS)})")
    return tuple(items)


# a variable a Knob: trailer names, with or without a value; one a message shows set
KNOB_NAME = re.compile(r"\b(LLAMA_[A-Z0-9_]+)\b")
KNOB_SET = re.compile(r"\b(LLAMA_[A-Z0-9_]+)=")


def knob_names():
    """The variables of the series (docs/KNOBS.md is generated from the patch messages): those a
    Knob: trailer names or sets and those a message shows set (NAME=...): the settings of runtime_knobs()
    and the knobs that tune one of them (LLAMA_PREFIX_CACHE_STATES, LLAMA_PREFILL_CAP, ...), not
    the API names a message also mentions. What a bench tool checks a --knobs name against, to
    catch a typo; the paged binary checks the values."""
    names = set()
    for patch in all_patches():
        message = patch_message(patch)
        names.update(KNOB_SET.findall(message))
        for knob in parse_trailers(message).get("Knob", []):
            names.update(KNOB_NAME.findall(knob))
            names.update(m.group(1) for m in KNOB_SETTING.finditer(knob))
    return names


def runtime_knobs():
    """Every runtime knob of the series, in series order of its first patch (patches without one
    are left out). A later patch that takes the same setting further (LLAMA_KV_PAGED=1 in 0008 and
    0009) is the same knob: the gates run it once, on the whole series, and it is bit-exact only
    if every one of its patches says so; its requirements are the last Requires: trailer's."""
    found = {}
    for patch in all_patches():
        t = patch_trailers(patch)
        env = {}
        for knob in t.get("Knob", []):
            for m in KNOB_SETTING.finditer(knob):
                env[m.group(1)] = m.group(2).rstrip(",;")
        if not env:
            continue
        bit_exact = any(v.lower().startswith("yes") for v in t.get("Bit-exact", []))
        per_slot = bit_exact or any(v.lower().startswith("per-slot") for v in t.get("Bit-exact", []))
        recommended = any(v.lower().startswith("yes") for v in t.get("Recommended", []))
        requires = requirements_of(t)
        key = tuple(sorted(env.items()))
        if key in found:
            first = found[key]
            found[key] = Knob(patch=f"{first.patch}+{patch.name[:4]}", env=first.env,
                              bit_exact=first.bit_exact and bit_exact,
                              bit_exact_per_slot=first.bit_exact_per_slot and per_slot,
                              recommended=first.recommended or recommended,
                              requires=requires if "Requires" in t else first.requires)
        else:
            found[key] = Knob(patch=patch.name, env=env, bit_exact=bit_exact, bit_exact_per_slot=per_slot,
                              recommended=recommended, requires=requires)
    return list(found.values())


def tests_of(trailers):
    """The items of a Tests: trailer."""
    return [item.strip() for value in trailers.get("Tests", []) for item in value.split(",") if item.strip()]


def test_problems(patch, patches=None):
    """What is wrong with a patch's Tests: trailer: missing, or naming a test that does not exist.
    A C++ test must be a tests/<name>.cpp that a patch of the series adds."""
    patches = patches if patches is not None else all_patches()
    items = tests_of(patch_trailers(patch))
    if not items:
        return [f"{patch.name}: no Tests: trailer naming the tests that cover it"]
    problems = []
    for item in items:
        path, _, func = item.partition("::")
        if "/" not in path:
            added = f"+++ b/tests/{path}.cpp"
            if not any(added in p.read_text(errors="replace") for p in patches):
                problems.append(f"{patch.name}: Tests: {item}: no patch of the series adds tests/{path}.cpp")
            continue
        f = ROOT / path
        if not f.is_file():
            problems.append(f"{patch.name}: Tests: {item}: {path} does not exist")
        elif func and not re.search(rf"^\s*def {re.escape(func)}\(", f.read_text(), re.M):
            problems.append(f"{patch.name}: Tests: {item}: {path} has no test {func}")
    return problems
