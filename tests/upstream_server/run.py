#!/usr/bin/env python3
"""make test-upstream-server: upstream llama.cpp's own server test suite, differential.

Runs the pinned stock checkout's tools/server/tests (pytest, unit/test_*.py) offline, once per
configuration, and compares the outcome of every test with its baseline's:

    stock        stock llama-server                                   (baseline)
    paged        paged llama-server, no knob                          vs stock
    stock-kvu    stock llama-server, every server with --kv-unified   (baseline)
    paged-knobs  paged llama-server, the serving knobs, --kv-unified  vs stock-kvu

The serving knobs (SERVING_KNOBS) are the largest set of the series' server knobs that compose;
the prefix cache needs a unified KV cache (it refuses to start without -kvu), so that run and
its baseline add --kv-unified to every server the suite starts.

The suite is never copied into this repository: at run time the pinned checkout's tests
directory is copied into build/upstream-server/<config>/tools/server/tests (its ../../../models
and ../../../tools/mtmd links point into the checkout, as the suite's relative paths expect) and
run there with our plugin (llama_paged_shim.py: generated model instead of Hugging Face, skips
with reasons, the result log). A difference is allowed only by an entry of allow.txt:

    CONFIG BASELINE->OUTCOME TEST_ID
        reason (required; test ids may hold spaces, so the reason is on its own lines)

The run fails on any other difference, on an entry whose difference is gone or changed
(stale), and on a run that did not finish.
"""
import argparse
import json
import os
import pathlib
import random
import re
import shutil
import socket
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from harness import paths  # noqa: E402  (the repository's harness: where the builds and models are)
from harness.errors import HarnessError  # noqa: E402
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "absent")

# The serving profile (LLAMA_SERVING=1, paged/0062: LLAMA_KV_PAGED, LLAMA_PREFIX_CACHE,
# LLAMA_DECODE_TARGET_MS=1000, the GDN knobs, --kv-unified), as `make serve` runs it, and
# LLAMA_KV_MAX_MIB at the gates' 4096 (paged/0061: the prefix cache inside it), which the suite's
# small model never fills: every admission and reclaim check runs, none binds. LLAMA_REQUEUE_DEFERRED=1
# is the default, named for the record.
SERVING_KNOBS = {
    "LLAMA_SERVING": "1",
    "LLAMA_KV_MAX_MIB": "4096",
    "LLAMA_REQUEUE_DEFERRED": "1",
}

# name: (build, knobs, force --kv-unified, baseline)
CONFIGS = {
    "stock": ("stock", {}, False, None),
    "paged": ("paged", {}, False, "stock"),
    "stock-kvu": ("stock", {}, True, None),
    "paged-knobs": ("paged", SERVING_KNOBS, True, "stock-kvu"),
}

# Environment that would change what the suite does (utils.py reads these) or leak a knob in.
SCRUB_PREFIXES = ("LLAMA_", "GGML_")
SCRUB = ("DEBUG", "DEBUG_EXTERNAL", "N_GPU_LAYERS", "SLOW_TESTS", "PORT", "PYTEST_ADDOPTS")


# --- comparison (no I/O: tests/orchestrator/test_upstream_server.py) -------------------------

class AllowListError(ValueError):
    pass


def parse_allow(text, configs=None):
    """Entries of an allow list: {(config, test id): (baseline outcome, outcome, reason)}.

        CONFIG BASELINE->OUTCOME TEST_ID         (the test id is the rest of the line)
            reason, on one or more indented lines (required)

    '#' starts a comment line. configs: {name: baseline or None}, to check the names."""
    entries = {}
    current = None

    def close():
        if current is not None:
            key, before, after, reason, n = current
            if not reason:
                raise AllowListError(f"line {n}: {key[0]} {key[1]}: no reason (indented lines after the entry)")
            entries[key] = (before, after, " ".join(reason))

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if current is None:
                raise AllowListError(f"line {n}: a reason line without an entry before it")
            current[3].append(line.strip())
            continue
        close()
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise AllowListError(f"line {n}: expected 'CONFIG BASELINE->OUTCOME TEST_ID', got: {raw}")
        config, change, test_id = parts
        if configs is not None and config not in configs:
            raise AllowListError(f"line {n}: unknown configuration '{config}' (one of {', '.join(configs)})")
        if configs is not None and configs[config] is None:
            raise AllowListError(f"line {n}: '{config}' is a baseline; differences are only against one")
        if "->" not in change:
            raise AllowListError(f"line {n}: '{change}' is not BASELINE->OUTCOME")
        before, after = change.split("->", 1)
        for o in (before, after):
            main, _, exits = o.partition("+")
            if main.split(":", 1)[0] not in OUTCOMES or (":" in main and main.split(":", 1)[0] not in ("failed", "error")) \
                    or (exits and not re.fullmatch(r"exit:-?\d+(,-?\d+)*", exits)):
                raise AllowListError(f"line {n}: unknown outcome '{o}' (one of {', '.join(OUTCOMES)}, "
                                     f"'failed' and 'error' with ':Kind', any with '+exit:N,...')")
        if before == after:
            raise AllowListError(f"line {n}: '{change}' is no difference")
        if (config, test_id) in entries:
            raise AllowListError(f"line {n}: {config} {test_id} is listed twice")
        current = ((config, test_id), before, after, [], n)
    close()
    return entries


def failure_kind(reason):
    """What a failed or erring test died of, from its one-line reason: the exception's type
    ("assert x == y" is an AssertionError). Stock fails many tests on the generated model's text;
    a paged server that dies or times out in one of them must not read as the same failure."""
    text = (reason or "").strip()
    if text.startswith(("setup: ", "call: ", "teardown: ")):
        text = text.split(": ", 1)[1]
    if text.startswith("assert ") or text == "assert":
        return "AssertionError"
    m = re.match(r"([A-Za-z_][\w.]*)(:|$)", text)
    return m.group(1).rsplit(".", 1)[-1] if m else "other"


def outcome_of(results, test_id, with_kind=False):
    """The outcome of a test; with_kind, what it died of too where it failed or erred: 'failed:TimeoutError'.
    A server of the test that exited other than 0 when stopped (a crash on the way out, -9 when it had
    to be killed) adds its exit statuses: 'passed+exit:-11'."""
    entry = results.get(test_id)
    if not entry or not entry.get("outcome"):
        return "absent"
    outcome = entry["outcome"]
    if with_kind and outcome in ("failed", "error"):
        outcome = f"{outcome}:{failure_kind(entry.get('reason'))}"
    if entry.get("exits"):
        outcome += "+exit:" + ",".join(str(code) for code in entry["exits"])
    return outcome


def outcome_matches(listed, outcome):
    """An allow-list outcome names the kind ('failed:RuntimeError') or leaves it open ('failed');
    exit statuses ('+exit:-11') it must name."""
    listed, _, listed_exits = listed.partition("+")
    outcome, _, exits = outcome.partition("+")
    return listed_exits == exits and (listed == outcome or (":" not in listed and outcome.split(":", 1)[0] == listed))


def compare(config, base_results, results, allow):
    """The differences of one configuration against its baseline.
    Returns (allowed, unexpected, stale): allowed and unexpected are lists of
    (test id, baseline outcome, outcome, note); stale a list of (test id, note)."""
    allowed, unexpected, stale = [], [], []
    for test_id in sorted(set(base_results) | set(results)):
        before, after = outcome_of(base_results, test_id), outcome_of(results, test_id)
        if before.partition("+")[0] == after.partition("+")[0] in ("failed", "error"):
            # both failed: of the same thing? (a server that dies where stock's text was wrong)
            before, after = outcome_of(base_results, test_id, True), outcome_of(results, test_id, True)
        entry = allow.get((config, test_id))
        if before == after:
            if entry:
                stale.append((test_id, f"allowed {entry[0]}->{entry[1]}, now both {before}"))
            continue
        if entry and outcome_matches(entry[0], before) and outcome_matches(entry[1], after):
            allowed.append((test_id, before, after, entry[2]))
        elif entry:
            unexpected.append((test_id, before, after, f"allow list says {entry[0]}->{entry[1]}"))
            stale.append((test_id, f"allowed {entry[0]}->{entry[1]}, now {before}->{after}"))
        else:
            note = (results.get(test_id) or {}).get("reason") or (base_results.get(test_id) or {}).get("reason") or ""
            unexpected.append((test_id, before, after, note))
    for (cfg, test_id), entry in sorted(allow.items()):
        if cfg == config and test_id not in base_results and test_id not in results:
            stale.append((test_id, f"allowed {entry[0]}->{entry[1]}, but no such test ran"))
    return allowed, unexpected, stale


def counts(results):
    out = {o: 0 for o in OUTCOMES if o != "absent"}
    for entry in results.values():
        out[entry.get("outcome") or "error"] = out.get(entry.get("outcome") or "error", 0) + 1
    return out


# --- running ----------------------------------------------------------------------------------

def free_port_block(n=16):
    """A port p with p..p+n-1 free on loopback (some tests use the server's port + 1), below
    Linux's ephemeral range (32768-60999), where a client's own port could take it mid-run."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768 - n)
        ok = True
        for p in range(port, port + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no block of free loopback ports")


def prepare_scratch(src_tests, dest):
    """dest/tools/server/tests: a copy of the upstream tests; dest/models and dest/tools/mtmd
    link to the checkout, where the suite's ../../../ paths lead."""
    if dest.exists():
        shutil.rmtree(dest)
    tests = dest / "tools" / "server" / "tests"
    shutil.copytree(src_tests, tests, ignore=shutil.ignore_patterns("__pycache__", "tmp", ".pytest_cache"))
    checkout = src_tests.parent.parent.parent
    (dest / "models").symlink_to(checkout / "models")
    (dest / "tools" / "mtmd").symlink_to(checkout / "tools" / "mtmd")
    (tests / "tmp").mkdir()
    return tests


def bin_stamp(bin_dir):
    """(name, mtime, size) of the server and its libraries: what a concurrent build changes."""
    return sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in bin_dir.iterdir()
                  if p.is_file() and (p.name == "llama-server" or ".so" in p.name))


def run_config(name, args, src_tests, bins):
    build, knobs, kvu, _ = CONFIGS[name]
    dest = args.work_dir / name
    tests = prepare_scratch(src_tests, dest)
    results = dest / "results.json"
    log = dest / "pytest.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB}
    env.update(knobs)
    env.update({
        "LLAMA_SERVER_BIN_PATH": str(bins[build] / "llama-server"),
        "LLAMA_CACHE": str(tests / "tmp"),
        "PORT": str(free_port_block()),
        "PYTHONPATH": str(HERE),
        "PYTHONDONTWRITEBYTECODE": "1",
        "UPSTREAM_SHIM_MODEL": str(args.model),
        "UPSTREAM_SHIM_RESULTS": str(results),
        "UPSTREAM_SHIM_FORCE_KVU": "1" if kvu else "0",
        "UPSTREAM_SHIM_THREADS": str(args.threads),
        # the builtin tools (grep_search, file_glob_search) list files with git where the directory
        # is in a git repository: here that is this repository, whose .gitignore hides build/; above
        # the scratch copy there is no repository for them, as for a tarball of the upstream source
        "GIT_CEILING_DIRECTORIES": str(args.work_dir),
    })
    cmd = [sys.executable, "-m", "pytest", "unit", "-p", "llama_paged_shim", "-p", "no:cacheprovider",
           "--rootdir", str(tests), "-c", str(tests / "pytest.ini"), "--confcutdir", str(tests),
           f"--timeout={args.timeout}", "-m", "not slow", "-rfEs", "-q", *args.pytest_args]
    knob_text = " ".join(f"{k}={v}" for k, v in knobs.items()) or "no knob"
    print(f"[{name}] {bins[build] / 'llama-server'} ({knob_text}{', --kv-unified' if kvu else ''})", flush=True)
    start = time.monotonic()
    before = bin_stamp(bins[build])
    with open(log, "w") as f:
        f.write(f"# {' '.join(cmd)}\n# cwd {tests}\n# knobs: {knob_text}; kvu: {kvu}\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, cwd=tests, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - start, f"pytest ran past {args.run_timeout} s; see {log}"
    elapsed = time.monotonic() - start
    if bin_stamp(bins[build]) != before:
        # a build relinking the server's libraries mid-run makes servers die at start (exit 127)
        return (json.loads(results.read_text())["tests"] if results.is_file() else None), elapsed, \
            f"the binaries in {bins[build]} changed during the run (a build ran alongside): rerun"
    if not results.is_file():
        return None, elapsed, f"pytest exited {proc.returncode} without a result log; see {log}"
    data = json.loads(results.read_text())
    # 0: all passed, 1: some failed; anything else (interrupted, internal or usage error, no
    # tests) means the run itself did not finish
    if proc.returncode not in (0, 1):
        return data["tests"], elapsed, f"pytest exited {proc.returncode}; see {log}"
    return data["tests"], elapsed, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated, from {', '.join(CONFIGS)} (a paged one needs its baseline)")
    ap.add_argument("--model", type=pathlib.Path,
                    default=paths.models_dir() / "gate-llama.gguf")
    ap.add_argument("--tests", type=pathlib.Path, default=ROOT / "src/stock/tools/server/tests",
                    help="the pinned checkout's server tests directory")
    ap.add_argument("--work-dir", type=pathlib.Path, default=ROOT / "build/upstream-server")
    ap.add_argument("--allow", type=pathlib.Path, default=HERE / "allow.txt")
    ap.add_argument("--timeout", type=int, default=90, help="per-test timeout, seconds (pytest-timeout)")
    ap.add_argument("--threads", type=int, default=1,
                    help="--threads of every server whose test does not set it (0: the server's default)")
    ap.add_argument("--run-timeout", type=int, default=1200, help="seconds one configuration's pytest may run")
    ap.add_argument("--min-passed", type=int, default=150,
                    help="tests each configuration must pass: a build or model that errs in every test on both "
                         "sides would otherwise compare equal (measured: 207 to 213)")
    ap.add_argument("--compare-only", action="store_true", help="compare the result logs of the last run")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k sleep")
    args = ap.parse_args(argv)

    names = [c for c in args.configs.split(",") if c]
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown configuration '{n}'")
        base = CONFIGS[n][3]
        if base and base not in names:
            ap.error(f"'{n}' is compared with '{base}': run that too")
    allow = parse_allow(args.allow.read_text(), {k: v[3] for k, v in CONFIGS.items()})
    args.model = args.model.resolve()
    args.work_dir = args.work_dir.resolve()

    try:
        bins = {b: paths.bin_dir(b) for b in ("stock", "paged")}
    except HarnessError as e:
        print(f"upstream-server: {e}", file=sys.stderr)
        return 2
    problems = []
    if not args.compare_only:
        for b in {CONFIGS[n][0] for n in names}:
            if not (bins[b] / "llama-server").is_file():
                problems.append(f"no {bins[b] / 'llama-server'} (make build-both)")
        if not args.model.is_file():
            problems.append(f"no model {args.model} (make models)")
        if not (args.tests / "unit").is_dir():
            problems.append(f"no upstream tests at {args.tests} (make prepare LLAMA_PAGED=off)")
        if problems:
            print("upstream-server: " + "; ".join(problems), file=sys.stderr)
            return 2

    results, times, failures = {}, {}, []
    total_start = time.monotonic()
    for n in names:
        if args.compare_only:
            path = args.work_dir / n / "results.json"
            if not path.is_file():
                failures.append(f"{n}: no result log {path}")
                continue
            results[n] = json.loads(path.read_text())["tests"]
            continue
        res, elapsed, err = run_config(n, args, args.tests.resolve(), bins)
        times[n] = elapsed
        if err:
            failures.append(f"{n}: {err}")
        if res is not None:
            results[n] = res
            c = counts(res)
            print(f"[{n}] {elapsed:.0f} s: " + ", ".join(f"{v} {k}" for k, v in c.items() if v), flush=True)
    total = time.monotonic() - total_start

    print()
    print("| configuration | baseline | " + " | ".join(o for o in OUTCOMES if o != "absent") + " | time |")
    print("|---|---|" + "---|" * (len(OUTCOMES) - 1) + "---|")
    for n in names:
        if n in results:
            c = counts(results[n])
            t = f"{times[n]:.0f} s" if n in times else "-"
            print(f"| {n} | {CONFIGS[n][3] or '-'} | " + " | ".join(str(c[o]) for o in OUTCOMES if o != "absent")
                  + f" | {t} |")
    if times:
        print(f"total: {total:.0f} s")

    for n in names:
        if n in results and counts(results[n])["passed"] < args.min_passed:
            failures.append(f"{n}: {counts(results[n])['passed']} tests passed, fewer than {args.min_passed}: "
                            f"the suite did not run on this build (see {args.work_dir / n / 'pytest.log'})")
    bad = bool(failures)
    for n in names:
        base = CONFIGS[n][3]
        if not base or n not in results or base not in results:
            continue
        allowed, unexpected, stale = compare(n, results[base], results[n], allow)
        print(f"\n{n} vs {base}: {len(unexpected)} unexpected, {len(allowed)} allowed, {len(stale)} stale")
        for test_id, before, after, reason in allowed:
            print(f"  allowed     {test_id}: {before} -> {after} ({reason})")
        for test_id, before, after, note in unexpected:
            print(f"  DIFFERENCE  {test_id}: {before} -> {after}" + (f" ({note})" if note else ""))
        for test_id, note in stale:
            print(f"  STALE       {test_id}: {note}: remove it from {args.allow}")
        bad = bad or bool(unexpected or stale)
    for f in failures:
        print(f"FAILED RUN  {f}")
    print("upstream-server: " + ("FAIL" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
