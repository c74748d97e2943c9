"""The two builds of a comparison: their binaries, the knobs of the paged runs,
the order of the runs, and the checks that fail early and clearly when a binary
or a model is missing (before any minutes-long run starts)."""
import os
import pathlib
import re
import shlex
import subprocess

from . import paths
from .errors import HarnessError

BUILDS = paths.CONFIGS
BUILD_HINT = {"stock": "make build LLAMA_PAGED=off", "paged": "make build LLAMA_PAGED=on"}


def rep_order(rep, runs=BUILDS):
    """The order in which repetition rep runs the given runs: rotated by one each
    repetition, so each takes every position equally often (A B, B A, ... or with an
    A/A control A B A', B A' A, A' A B, ...). Always running one build second biased
    the ratio on these machines by up to 20% with identical code (docs/BENCHMARKS.md)."""
    k = rep % len(runs)
    return tuple(runs[k:]) + tuple(runs[:k])


# The A/A control: stock measured a second time in the same run, interleaved with the others.
# Its ratio to stock is the noise floor that a paged/stock ratio must leave to mean anything.
CONTROL = "stock-aa"


def build_of(run):
    """The build a run (stock, paged or the control) uses: the control is stock's."""
    return "stock" if run == CONTROL else run


def add_build_args(parser):
    """--stock-bin, --paged-bin and --knobs, shared by every tool."""
    for build in BUILDS:
        parser.add_argument(f"--{build}-bin", type=pathlib.Path, default=paths.bin_dir(build),
                            help=f"directory of the {build} binaries (env {build.upper()}_BIN; "
                                 f"default build/{build}-$BACKEND/bin)")
    parser.add_argument("--knobs", default=os.environ.get("BENCH_KNOBS", ""),
                        help='environment for the paged runs only, e.g. "LLAMA_X=1 LLAMA_Y=2" '
                             "(env BENCH_KNOBS)")


def bin_dirs(args):
    return {"stock": args.stock_bin, "paged": args.paged_bin}


def require(bin_dirs, tool, models=()):
    """Checks every binary and model up front and reports all problems at once."""
    problems = []
    for build, directory in bin_dirs.items():
        path = pathlib.Path(directory) / tool
        if not path.is_file() or not os.access(path, os.X_OK):
            problems.append(f"{build} binary {tool} not found at {path} "
                            f"(build it with '{BUILD_HINT[build]} BACKEND={paths.backend()}' "
                            f"or set {build.upper()}_BIN)")
    for model in models:
        if not pathlib.Path(model).is_file():
            problems.append(f"model not found: {model}")
    if problems:
        raise HarnessError("; ".join(problems))


KNOB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_knobs(text):
    """'A=1 B=2' -> {'A': '1', 'B': '2'}; anything else is an error, not a silent no-op."""
    knobs = {}
    for item in shlex.split(text or ""):
        name, sep, value = item.partition("=")
        if not sep or not KNOB_NAME.match(name):
            raise HarnessError(f"--knobs: '{item}' is not NAME=VALUE")
        knobs[name] = value
    return knobs


def run_env(build, knobs):
    """The environment of one run. Knobs go to the paged build only; they are
    removed from the stock run's environment so an exported knob cannot leak into
    the baseline."""
    env = dict(os.environ)
    for name in knobs:
        env.pop(name, None)
    if build == "paged":
        env.update(knobs)
    return env


def version_text(binary):
    """The binary's --version banner (stderr), which names the commit and, for a
    paged build, the series. Recorded with every result for provenance."""
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable: {err}"
    return (proc.stdout + proc.stderr).strip()


def check_knobs(paged_bin, knobs, model):
    """Knobs the paged binary rejects (a bad value; a name that is no knob of the series) stop
    the tool here, in seconds, naming the knob, instead of failing after minutes of stock runs.
    The value check is the binary's own: one token of llama-completion with the knobs set."""
    from . import trailers  # the series' knobs, from the patch trailers
    known = trailers.knob_names()
    for name in knobs:
        if name not in known and not name.startswith("GGML_"):
            raise HarnessError(f"--knobs: {name} is not a knob of the series (docs/KNOBS.md lists them: "
                               f"{', '.join(sorted(known))})")
    if not knobs:
        return
    cmd = [str(pathlib.Path(paged_bin) / "llama-completion"), "-m", str(model), "-p", "hi", "-n", "1",
           "-no-cnv", "--no-warmup", "-c", "256", "-t", "1"]

    # a refused knob is written to stderr before the process stops (llama_paged_knob), so a
    # failed run always says why; the log's tail may still be lost (harness.runs)
    proc = subprocess.run(cmd, env=run_env("paged", knobs), capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        named = [line for line in proc.stderr.splitlines() if any(name in line for name in knobs)]
        detail = named[-1] if named else "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise HarnessError(f"the paged build refuses --knobs \"{' '.join(f'{k}={v}' for k, v in knobs.items())}\": "
                           f"{detail.strip()} ({' '.join(cmd)})")
