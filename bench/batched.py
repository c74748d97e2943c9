#!/usr/bin/env python3
"""llama-batched-bench on the stock and the paged build, interleaved: one
batch size per run, the builds back to back, stock first in even and paged
first in odd repetitions, so that drift of the machine (heat, other load)
and the cost of going first fall on both builds alike.

    bench/batched.py --models M.gguf [M2.gguf ...] --out DIR [--reps 3] [--npl 1,4,8,16,32]

Writes DIR/batched.json (every repetition's rows), DIR/batched.md (S_TG and S_PP
per batch size: median [min-max] per build, paged/stock ratio of the medians
and [min-max] of the per-repetition ratios) and two PNG plots per model.
See docs/BENCHMARKS.md.
"""
import argparse
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import time

from harness import builds, plots, stats, tables
from harness.errors import BenchError, run_main

TOOL = "llama-batched-bench"
METRICS = (("speed_tg", "S_TG"), ("speed_pp", "S_PP"))


def int_list(text):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="GGUF model(s)")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    p.add_argument("--reps", type=int, default=3, help="repetitions per build (default 3)")
    p.add_argument("--npp", type=int_list, default=[128], help="prompt tokens per sequence (default 128)")
    p.add_argument("--ntg", type=int_list, default=[32], help="generated tokens per sequence (default 32)")
    p.add_argument("--npl", type=int_list, default=[1, 4, 8, 16, 32], help="batch sizes (default 1,4,8,16,32)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="-t (default: all cores)")
    p.add_argument("--fa", default="on", choices=["on", "off", "auto"], help="flash attention (default on)")
    p.add_argument("--ctx", type=int, default=None, help="-c (default: max(npl) * (max(npp) + max(ntg)))")
    p.add_argument("--extra-args", default="", help="more llama-batched-bench arguments, both builds")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    builds.add_build_args(p)
    args = p.parse_args(argv)
    if args.reps < 1:
        raise BenchError("--reps must be >= 1")
    return args


def needed_ctx(args):
    """The KV size for the largest point of the sweep. batched-bench silently
    skips a point whose pl*(pp+tg) exceeds -c, so this must cover the maximum."""
    return max(args.npl) * (max(args.npp) + max(args.ntg))


def command(bin_dir, model, args, ctx, npl):
    join = lambda values: ",".join(str(v) for v in values)  # noqa: E731
    return [str(pathlib.Path(bin_dir) / TOOL), "-m", model, "-npp", join(args.npp), "-ntg", join(args.ntg),
            "-npl", join(npl), "-fa", args.fa, "-t", str(args.threads), "-c", str(ctx),
            "--output-format", "jsonl", *shlex.split(args.extra_args)]


# llama-batched-bench prints everything, rows included, through common_log, whose worker thread
# is leaked at exit (upstream issue 22142, see verify/gate.py): now and then a run exits 0 having
# printed nothing at all. Such a run is repeated, never reported as a measurement or a failure.
MAX_ATTEMPTS = 5


def run_once(cmd, env, log_path, timeout):
    """One llama-batched-bench run -> its jsonl rows. stderr goes to log_path,
    which is kept (and named in the error) only when the run fails."""
    for _ in range(MAX_ATTEMPTS):
        start = time.monotonic()
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                      timeout=timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{TOOL} timed out after {timeout:.0f}s; log kept at {log_path}") from None
        wall = time.monotonic() - start
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        lost_output = proc.returncode == 0 and not proc.stdout and pathlib.Path(log_path).stat().st_size == 0
        if not lost_output:
            break
    if proc.returncode != 0 or not rows:
        tail = "\n".join(pathlib.Path(log_path).read_text(errors="replace").splitlines()[-20:])
        raise BenchError(f"{TOOL} failed (exit {proc.returncode}, {len(rows)} rows): {' '.join(cmd)}\n"
                         f"log kept at {log_path}:\n{tail}")
    pathlib.Path(log_path).unlink()
    return rows, wall


def check_complete(rows, args, cmd, npl):
    expected = {(pp, tg, pl) for pp in args.npp for tg in args.ntg for pl in npl}
    missing = expected - {(r["pp"], r["tg"], r["pl"]) for r in rows}
    if missing:
        raise BenchError(f"{TOOL} skipped points {sorted(missing)} (context too small?): {' '.join(cmd)}")


def summarize(runs, model, args):
    """Per (pp, tg, pl) point and metric: each build's spread and the ratios."""
    points = []
    for pp in args.npp:
        for tg in args.ntg:
            for pl in args.npl:
                point = {"pp": pp, "tg": tg, "pl": pl}
                for metric, _ in METRICS:
                    by_build = {}
                    for build in builds.BUILDS:
                        by_build[build] = [row[metric] for run in runs
                                           if run["model"] == model and run["build"] == build
                                           for row in run["rows"] if (row["pp"], row["tg"], row["pl"]) == (pp, tg, pl)]
                    stock, paged = by_build["stock"], by_build["paged"]
                    # Repetition i of stock ran right before repetition i of paged,
                    # so pairing them cancels slow drift; min/max of these is the spread.
                    pair_ratios = [stats.ratio(p, s) for s, p in zip(stock, paged)]
                    point[metric] = {
                        "stock": stats.spread(stock), "paged": stats.spread(paged),
                        "ratio": stats.ratio(stats.spread(paged)["median"], stats.spread(stock)["median"]),
                        "ratio_spread": stats.spread(pair_ratios),
                        "stock_reps": stock, "paged_reps": paged,
                    }
                points.append(point)
    return points


def markdown(model, points):
    header = ["PP", "TG", "B"]
    for _, name in METRICS:
        header += [f"{name} stock t/s", f"{name} paged t/s", f"{name} paged/stock"]
    rows = []
    for pt in points:
        row = [pt["pp"], pt["tg"], pt["pl"]]
        for metric, _ in METRICS:
            m = pt[metric]
            ratio = tables.num(m["ratio"], 3)
            if m["ratio_spread"]["n"]:
                ratio += f" [{m['ratio_spread']['min']:.3f}-{m['ratio_spread']['max']:.3f}]"
            row += [tables.with_range(m["stock"], 1), tables.with_range(m["paged"], 1), ratio]
        rows.append(row)
    return (f"### batched-bench: {pathlib.Path(model).name}\n\n"
            "Median [min-max] over repetitions; ratio = median paged / median stock "
            "[min-max of per-repetition paged/stock].\n\n" + tables.markdown_table(header, rows))


def plot(model, points, out_dir):
    stem = pathlib.Path(model).stem
    for pp in sorted({p["pp"] for p in points}):
        for tg in sorted({p["tg"] for p in points}):
            sel = [p for p in points if p["pp"] == pp and p["tg"] == tg]
            xs = [p["pl"] for p in sel]
            suffix = "" if len(points) == len(sel) else f"-pp{pp}-tg{tg}"

            def series(build):
                s = [p["speed_tg"][build] for p in sel]
                ys = [v["median"] for v in s]
                errs = ([None if y is None else y - v["min"] for y, v in zip(ys, s)],
                        [None if y is None else v["max"] - y for y, v in zip(ys, s)])
                return (build, xs, ys, errs)
            plots.line_plot(out_dir / f"batched-{stem}{suffix}-decode.png",
                            f"{stem}: aggregate decode throughput (pp={pp}, tg={tg})",
                            "concurrent sequences (B)", "S_TG (tokens/s, all sequences)",
                            [series("stock"), series("paged")], log2_x=True)
            ratios = [p["speed_tg"]["ratio"] for p in sel]
            spreads = [p["speed_tg"]["ratio_spread"] for p in sel]
            errs = ([None if r is None or s["min"] is None else max(r - s["min"], 0) for r, s in zip(ratios, spreads)],
                    [None if r is None or s["max"] is None else max(s["max"] - r, 0) for r, s in zip(ratios, spreads)])
            plots.line_plot(out_dir / f"batched-{stem}{suffix}-ratio.png",
                            f"{stem}: paged/stock decode throughput (pp={pp}, tg={tg})",
                            "concurrent sequences (B)", "S_TG paged / S_TG stock",
                            [("paged/stock", xs, ratios, errs)], log2_x=True, hline=1.0)


def main(argv=None):
    args = parse_args(argv)
    knobs = builds.parse_knobs(args.knobs)
    dirs = builds.bin_dirs(args)
    builds.require(dirs, TOOL, args.models)
    ctx = args.ctx or needed_ctx(args)
    if ctx < needed_ctx(args):
        raise BenchError(f"--ctx {ctx} is below max(npl)*(max(npp)+max(ntg)) = {needed_ctx(args)}")
    args.out.mkdir(parents=True, exist_ok=True)

    runs = []
    for model in args.models:
        for rep in range(args.reps):
            # One batch size per run, the two builds back to back: a pair of runs seconds
            # apart sees the same machine, where whole sweeps a minute apart did not.
            for pl in args.npl:
                for build in builds.rep_order(rep):
                    cmd = command(dirs[build], model, args, ctx, [pl])
                    print(f"batched: {pathlib.Path(model).name} rep {rep + 1}/{args.reps} B={pl} {build}",
                          file=sys.stderr, flush=True)
                    log = args.out / f"batched-{pathlib.Path(model).stem}-{build}-rep{rep}-pl{pl}.log"
                    rows, wall = run_once(cmd, builds.run_env(build, knobs), log, args.timeout)
                    check_complete(rows, args, cmd, [pl])
                    runs.append({"model": model, "build": build, "rep": rep, "npl": pl, "command": cmd,
                                 "wall_s": wall, "knobs": knobs if build == "paged" else {}, "rows": rows})

    result = {
        "tool": TOOL, "ctx": ctx, "npp": args.npp, "ntg": args.ntg, "npl": args.npl,
        "threads": args.threads, "fa": args.fa, "reps": args.reps, "knobs_paged": knobs,
        "versions": {b: builds.version_text(pathlib.Path(dirs[b]) / TOOL) for b in builds.BUILDS},
        "runs": runs,
        "summary": {model: summarize(runs, model, args) for model in args.models},
    }
    (args.out / "batched.json").write_text(json.dumps(result, indent=1))
    sections = [markdown(model, result["summary"][model]) for model in args.models]
    (args.out / "batched.md").write_text("\n".join(sections))
    for model in args.models:
        plot(model, result["summary"][model], args.out)
    print("\n".join(sections), flush=True)
    bad = [p for m in args.models for p in result["summary"][m] for metric, _ in METRICS
           if p[metric]["ratio"] is None or not math.isfinite(p[metric]["ratio"])]
    if bad:
        raise BenchError(f"{len(bad)} point(s) have no finite paged/stock ratio (a zero or missing speed)")
    return 0


if __name__ == "__main__":
    run_main(main)
