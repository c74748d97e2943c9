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
import statistics
import subprocess
import sys
import time


# A tool run as bench/<tool>.py: the repository root holds the harness package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from harness import builds, plots, runs, stats, tables
from harness.errors import HarnessError, run_main

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
    p.add_argument("--reps", type=int, default=10, help="repetitions per build (default 10: a noise floor under +-3%% here)")
    p.add_argument("--npp", type=int_list, default=[128], help="prompt tokens per sequence (default 128)")
    p.add_argument("--ntg", type=int_list, default=[128], help="generated tokens per sequence (default 128)")
    p.add_argument("--npl", type=int_list, default=[1, 4, 8, 16, 32], help="batch sizes (default 1,4,8,16,32)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="-t (default: all cores)")
    p.add_argument("--fa", default="on", choices=["on", "off", "auto"], help="flash attention (default on)")
    p.add_argument("--ctx", type=int, default=None, help="-c (default: max(npl) * (max(npp) + max(ntg)))")
    p.add_argument("--extra-args", default="", help="more llama-batched-bench arguments, both builds")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--no-aa", dest="aa", action="store_false",
                   help="skip the A/A control (stock measured twice, interleaved): no noise floor")
    builds.add_build_args(p)
    args = p.parse_args(argv)
    if args.reps < 1:
        raise HarnessError("--reps must be >= 1")
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


def run_once(cmd, env, log_path, timeout):
    """One llama-batched-bench run -> its jsonl rows. stderr goes to log_path,
    which is kept (and named in the error) only when the run fails. Everything it
    prints, rows included, goes through common_log, which can lose the end of it
    (harness.runs): the tool's last write to stdout is an empty line after the rows,
    so a run whose stdout does not end in that line is repeated. (A warning on
    stderr says nothing: it is written before the rows.)"""
    def printed_everything(proc):
        return proc.stdout == "\n" or proc.stdout.endswith("\n\n")

    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            proc = runs.run_complete(cmd, printed_everything, stdout=subprocess.PIPE, stderr=log, text=True,
                                     env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{TOOL} timed out after {timeout:.0f}s; log kept at {log_path}") from None
    wall = time.monotonic() - start
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        tail = "\n".join(pathlib.Path(log_path).read_text(errors="replace").splitlines()[-20:])
        raise HarnessError(f"{TOOL} failed (exit {proc.returncode}, {len(rows)} rows): {' '.join(cmd)}\n"
                         f"log kept at {log_path}:\n{tail}")
    pathlib.Path(log_path).unlink()
    return rows, wall


def check_complete(rows, args, cmd, npl):
    expected = {(pp, tg, pl) for pp in args.npp for tg in args.ntg for pl in npl}
    missing = expected - {(r["pp"], r["tg"], r["pl"]) for r in rows}
    if missing:
        raise HarnessError(f"{TOOL} skipped points {sorted(missing)} (context too small?): {' '.join(cmd)}")


def noise_floor(aa_ratios):
    """How far from 1.0 the median of n per-repetition ratios of identical binaries may stray by
    chance: twice the standard error of a median (1.2533 sigma / sqrt(n)), sigma measured on the
    A/A ratios themselves; None without at least two of them. A single run on these machines
    strays +-5-9% (docs/BENCHMARKS.md), so a band from the extremes would only widen with more
    repetitions; the median's band narrows as 1/sqrt(n)."""
    data = [r for r in aa_ratios if r is not None]
    if len(data) < 2:
        return None
    return 2 * 1.2533 * statistics.stdev(data) / math.sqrt(len(data))


def verdict(ratio, floor):
    """'gain' or 'loss' only when the median ratio leaves the band 1 +- floor; 'noise' inside it;
    'n/a' without a control."""
    if ratio is None or floor is None:
        return "n/a"
    if ratio > 1 + floor:
        return "gain"
    if ratio < 1 - floor:
        return "loss"
    return "noise"


def summarize(runs, model, args):
    """Per (pp, tg, pl) point and metric: each build's spread, the paged/stock ratios, the
    A/A (stock/stock) ratios of the control and the verdict."""
    points = []
    for pp in args.npp:
        for tg in args.ntg:
            for pl in args.npl:
                point = {"pp": pp, "tg": tg, "pl": pl}
                for metric, _ in METRICS:
                    by_run = {}
                    for name in (*builds.BUILDS, builds.CONTROL):
                        by_run[name] = [row[metric] for run in runs
                                        if run["model"] == model and run["build"] == name
                                        for row in run["rows"] if (row["pp"], row["tg"], row["pl"]) == (pp, tg, pl)]
                    stock, paged, control = by_run["stock"], by_run["paged"], by_run[builds.CONTROL]
                    # The runs of one repetition are seconds apart, so pairing them cancels slow
                    # drift; min/max of the pair ratios is the spread.
                    pair_ratios = [stats.ratio(p, s) for s, p in zip(stock, paged)]
                    aa_ratios = [stats.ratio(c, s) for s, c in zip(stock, control)]
                    ratio = stats.ratio(stats.spread(paged)["median"], stats.spread(stock)["median"])
                    floor = noise_floor(aa_ratios)
                    point[metric] = {
                        "stock": stats.spread(stock), "paged": stats.spread(paged),
                        "ratio": ratio, "ratio_spread": stats.spread(pair_ratios),
                        "aa_spread": stats.spread(aa_ratios), "aa_floor": floor, "verdict": verdict(ratio, floor),
                        "stock_reps": stock, "paged_reps": paged, "control_reps": control,
                    }
                points.append(point)
    return points


def aa_half_width(points):
    """The widest noise floor over all points and metrics of the run, or None."""
    floors = [pt[metric]["aa_floor"] for pt in points for metric, _ in METRICS]
    floors = [f for f in floors if f is not None]
    return max(floors) if floors else None


def ratio_text(ratio, spread):
    text = tables.num(ratio, 3)
    if spread["n"]:
        text += f" [{spread['min']:.3f}-{spread['max']:.3f}]"
    return text


def markdown(model, points):
    header = ["PP", "TG", "B"]
    for _, name in METRICS:
        header += [f"{name} stock t/s", f"{name} paged t/s", f"{name} paged/stock", f"{name} A/A", f"{name}"]
    rows = []
    for pt in points:
        row = [pt["pp"], pt["tg"], pt["pl"]]
        for metric, _ in METRICS:
            m = pt[metric]
            aa = m["aa_spread"]
            floor = "" if m["aa_floor"] is None else f" ±{m['aa_floor']:.1%}"
            row += [tables.with_range(m["stock"], 1), tables.with_range(m["paged"], 1),
                    ratio_text(m["ratio"], m["ratio_spread"]), ratio_text(aa["median"], aa) + floor, m["verdict"]]
        rows.append(row)
    floor = aa_half_width(points)
    floor_text = (f"A/A noise floor of this run: ±{floor:.1%} (the widest over all points)."
                  if floor is not None else "No A/A control in this run (--no-aa, or one repetition): no noise floor, no verdicts.")
    return (f"### batched-bench: {pathlib.Path(model).name}\n\n"
            "Median [min-max] over repetitions; ratio = median paged / median stock "
            "[min-max of per-repetition paged/stock]; A/A = stock measured again in the same run, "
            "interleaved: median [min-max] of per-repetition stock/stock, and ± its noise floor (twice "
            "the standard error of a median of that many A/A ratios). A ratio is a gain or a loss only "
            "outside 1 ± the floor of its point, otherwise noise. " + floor_text + "\n\n"
            + tables.markdown_table(header, rows))


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
            def ratio_series(label, ratios, spreads):
                errs = ([None if r is None or s["min"] is None else max(r - s["min"], 0) for r, s in zip(ratios, spreads)],
                        [None if r is None or s["max"] is None else max(s["max"] - r, 0) for r, s in zip(ratios, spreads)])
                return (label, xs, ratios, errs)
            lines = [ratio_series("paged/stock", [p["speed_tg"]["ratio"] for p in sel],
                                  [p["speed_tg"]["ratio_spread"] for p in sel])]
            if any(p["speed_tg"]["aa_spread"]["n"] for p in sel):
                lines.append(ratio_series("stock/stock (A/A noise floor)",
                                          [p["speed_tg"]["aa_spread"]["median"] for p in sel],
                                          [p["speed_tg"]["aa_spread"] for p in sel]))
            plots.line_plot(out_dir / f"batched-{stem}{suffix}-ratio.png",
                            f"{stem}: paged/stock decode throughput (pp={pp}, tg={tg})",
                            "concurrent sequences (B)", "S_TG paged / S_TG stock", lines, log2_x=True, hline=1.0)


def main(argv=None):
    args = parse_args(argv)
    plots.require_matplotlib()
    knobs = builds.parse_knobs(args.knobs)
    dirs = builds.bin_dirs(args)
    builds.require(dirs, TOOL, args.models)
    builds.check_knobs(dirs["paged"], knobs, args.models[0])
    ctx = args.ctx or needed_ctx(args)
    if ctx < needed_ctx(args):
        raise HarnessError(f"--ctx {ctx} is below max(npl)*(max(npp)+max(ntg)) = {needed_ctx(args)}")
    args.out.mkdir(parents=True, exist_ok=True)

    # The A/A control runs stock a second time in every repetition, interleaved like the others.
    order = (*builds.BUILDS, builds.CONTROL) if args.aa else builds.BUILDS
    runs = []
    for model in args.models:
        for rep in range(args.reps):
            # One batch size per run, the builds back to back: runs seconds apart see
            # the same machine, where whole sweeps a minute apart did not.
            for pl in args.npl:
                for name in builds.rep_order(rep, order):
                    build = builds.build_of(name)
                    cmd = command(dirs[build], model, args, ctx, [pl])
                    print(f"batched: {pathlib.Path(model).name} rep {rep + 1}/{args.reps} B={pl} {name}",
                          file=sys.stderr, flush=True)
                    log = args.out / f"batched-{pathlib.Path(model).stem}-{name}-rep{rep}-pl{pl}.log"
                    rows, wall = run_once(cmd, builds.run_env(build, knobs), log, args.timeout)
                    check_complete(rows, args, cmd, [pl])
                    runs.append({"model": model, "build": name, "rep": rep, "npl": pl, "command": cmd,
                                 "wall_s": wall, "knobs": knobs if build == "paged" else {}, "rows": rows})

    result = {
        "tool": TOOL, "ctx": ctx, "npp": args.npp, "ntg": args.ntg, "npl": args.npl,
        "threads": args.threads, "fa": args.fa, "reps": args.reps, "knobs_paged": knobs, "aa_control": args.aa,
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
        raise HarnessError(f"{len(bad)} point(s) have no finite paged/stock ratio (a zero or missing speed)")
    return 0


if __name__ == "__main__":
    run_main(main)
