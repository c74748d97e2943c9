"""The series' runtime knobs, read from the patch trailers (the same source
docs/KNOBS.md is generated from). A trailer `Knob: NAME=VALUE` says which
value turns the knob on; `Bit-exact: yes...` puts it in the md5 gate."""
import pathlib
import re
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _series(dir_):
    for line in (dir_ / "series").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield dir_ / line


def _trailers(patch):
    with tempfile.TemporaryDirectory() as tmp:
        msg = pathlib.Path(tmp) / "msg"
        with open(patch, "rb") as f:
            subprocess.run(["git", "mailinfo", str(msg), str(pathlib.Path(tmp) / "diff")], stdin=f,
                           stdout=subprocess.DEVNULL, check=True)
        parsed = subprocess.run(["git", "interpret-trailers", "--parse"], stdin=open(msg, "rb"),
                                capture_output=True, check=True).stdout.decode()
    out = {}
    for line in parsed.splitlines():
        key, _, value = line.partition(": ")
        out.setdefault(key, []).append(value.strip())
    return out


def knobs():
    """[(patch name, {env: value}, bit_exact)] for every patch with a knob."""
    found = []
    for dir_ in (ROOT / "patches", ROOT / "patches" / "paged"):
        for patch in _series(dir_):
            t = _trailers(patch)
            env = {}
            for knob in t.get("Knob", []):
                for m in re.finditer(r"\b([A-Z][A-Z0-9_]+)=(\S+)", knob):
                    env[m.group(1)] = m.group(2).rstrip(",;")
            if env:
                bit_exact = any(v.lower().startswith("yes") for v in t.get("Bit-exact", []))
                found.append((patch.name, env, bit_exact))
    return found
