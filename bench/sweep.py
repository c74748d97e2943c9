#!/usr/bin/env python3
"""Prefill-budget sweep: one workload against stock and against the paged
llama-server under each of a list of knob settings (static budgets, batch
budgets, latency targets), and the frontier of decode smoothness against the
time to first token of the longest prompt.

    bench/sweep.py --model M.gguf --workload bench/workloads/staggered.json --out DIR \\
        [--points "LLAMA_PREFILL_BUDGET=64" "LLAMA_DECODE_TARGET_MS=150" ...] [--reps N]

Writes DIR/sweep-<workload>.json (every run), DIR/sweep-<workload>.md (the table,
ratios against stock) and two frontier plots: max decode stall and p99
inter-token latency against the TTFT of the long request, stock as a point,
each knob as a line through its settings. See docs/SCHEDULER.md.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import loadgen  # noqa: E402  (the root must be on the path first)
from harness import builds, plots, stats, tables, workload as wl  # noqa: E402
from harness.errors import HarnessError, run_main  # noqa: E402

DEFAULT_POINTS = [
    "LLAMA_PREFILL_BUDGET=32", "LLAMA_PREFILL_BUDGET=128", "LLAMA_PREFILL_BUDGET=512",
    "LLAMA_MAX_BATCH_TOKENS=64", "LLAMA_MAX_BATCH_TOKENS=256",
    "LLAMA_DECODE_TARGET_MS=250", "LLAMA_DECODE_TARGET_MS=500", "LLAMA_DECODE_TARGET_MS=1000",
    "LLAMA_DECODE_TARGET_MS=2000",
]
MS = 1000.0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", required=True, type=pathlib.Path, help="workload JSON file")
    p.add_argument("--model", required=True, help="GGUF model")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    p.add_argument("--points", nargs="+", default=DEFAULT_POINTS,
                   help="knob settings of the paged runs, one per point ('A=1 B=2' sets two together)")
    p.add_argument("--reps", type=int, default=1, help="runs of each point (the median is reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server -t (default: all cores)")
    p.add_argument("--server-args", default="", help="extra llama-server arguments for every run")
    p.add_argument("--keep-logs", action="store_true", help="keep server logs of successful runs too")
    p.add_argument("--health-timeout", type=float, default=600.0, help="seconds to wait for /health")
    builds.add_build_args(p)
    args = p.parse_args(argv)
    if args.reps < 1:
        raise HarnessError(f"--reps must be at least 1, got {args.reps}")
    args.points = [builds.parse_knobs(point) for point in args.points]
    if any(not point for point in args.points):
        raise HarnessError("--points: an empty setting (stock is always run)")
    return args


def long_wave(workload):
    """The index of the wave with the longest prompts: its TTFT is what a budget costs."""
    return max(range(len(workload["waves"])), key=lambda i: workload["waves"][i].get("prompt_tokens", 0))


def figures(run, wave):
    overall = run["metrics"]["overall"]
    long_ttft = run["metrics"]["waves"][wave]["ttft_s"]["max"]
    return {
        "max_decode_stall_s": overall["max_decode_stall_s"],
        "itl_p99_s": overall["itl_s"]["p99"],
        "long_ttft_s": long_ttft,
        "output_tok_per_s": overall["output_tok_per_s"],
        "n_errors": overall["n_errors"],
    }


def median_figures(reps):
    keys = reps[0].keys()
    return {k: (None if any(r[k] is None for r in reps) else statistics.median(r[k] for r in reps)) for k in keys}


def label(knobs):
    return " ".join(f"{k}={v}" for k, v in knobs.items()) if knobs else "stock"


def family(knobs):
    """The line a point belongs to on the plot: the knob names it sets."""
    return " + ".join(sorted(knobs)) if knobs else "stock"


COLUMNS = [
    ("max decode stall (ms)", "max_decode_stall_s", MS, 1),
    ("ITL p99 (ms)", "itl_p99_s", MS, 1),
    ("TTFT long request (ms)", "long_ttft_s", MS, 0),
    ("output tok/s", "output_tok_per_s", 1.0, 2),
]


def markdown(workload, points):
    stock = points[0]["figures"]
    header = ["setting"]
    for name, *_ in COLUMNS:
        header += [name, "/ stock"]
    header.append("failed")
    rows = []
    for point in points:
        f = point["figures"]
        row = [point["label"]]
        for _, key, scale, digits in COLUMNS:
            row.append(tables.num(None if f[key] is None else f[key] * scale, digits))
            row.append(tables.num(stats.ratio(f[key], stock[key]), 3))
        row.append(f["n_errors"])
        rows.append(row)
    out = [f"### sweep: {workload['name']}\n"]
    if workload.get("description"):
        out.append(workload["description"] + "\n")
    out.append(tables.markdown_table(header, rows))
    return "\n".join(out) + "\n"


def frontier_plots(workload, points, out_dir):
    name = workload["name"]
    fams = {}
    for point in points:
        fams.setdefault(family(point["knobs"]), []).append(point)
    for key, ylabel, fname in [("max_decode_stall_s", "max decode stall (s)", "stall"),
                               ("itl_p99_s", "inter-token latency p99 (s)", "itl-p99")]:
        series = []
        for fam, pts in fams.items():
            pts = sorted((p for p in pts if p["figures"]["long_ttft_s"] is not None), key=lambda p: p["figures"]["long_ttft_s"])
            series.append((fam, [p["figures"]["long_ttft_s"] for p in pts], [p["figures"][key] for p in pts], None))
        plots.line_plot(out_dir / f"sweep-{name}-{fname}.png",
                        f"{name}: frontier (lower left is better)",
                        "TTFT of the long request (s)", ylabel, series)


def main(argv=None):
    args = parse_args(argv)
    plots.require_matplotlib()
    workload = wl.load(args.workload)
    builds.require(builds.bin_dirs(args), "llama-server", [args.model])
    args.out.mkdir(parents=True, exist_ok=True)
    waves = wl.plan(workload)
    wl.warn_if_too_long(workload, waves)
    wave = long_wave(workload)

    settings = [("stock", {})] + [("paged", knobs) for knobs in args.points]
    reps = {i: [] for i in range(len(settings))}
    runs = {i: [] for i in range(len(settings))}
    with tempfile.TemporaryDirectory(prefix="sweep-logs-") as log_dir:
        # Repetitions go round the whole list, so that a machine's slow minute hits every point alike.
        for rep in range(args.reps):
            for i, (build, knobs) in enumerate(settings):
                print(f"sweep: {workload['name']} rep {rep + 1}/{args.reps}: {label(knobs)} ...", file=sys.stderr, flush=True)
                run = loadgen.run_build(args, build, workload, waves, knobs, pathlib.Path(log_dir))
                runs[i].append(run)
                reps[i].append(figures(run, wave))

    points = [{"label": label(knobs), "knobs": knobs, "build": build, "figures": median_figures(reps[i]),
               "reps": reps[i], "commands": [r["command"] for r in runs[i]]}
              for i, (build, knobs) in enumerate(settings)]
    name = workload["name"]
    (args.out / f"sweep-{name}.json").write_text(json.dumps(
        {"workload": workload, "model": args.model, "threads": args.threads, "long_wave": wave, "points": points,
         "runs": {points[i]["label"]: runs[i] for i in runs}}, indent=1))
    section = markdown(workload, points)
    (args.out / f"sweep-{name}.md").write_text(section)
    frontier_plots(workload, points, args.out)
    print(section, flush=True)
    if any(p["figures"]["n_errors"] for p in points):
        raise HarnessError("some requests failed (see the table and the kept server logs)")
    return 0


if __name__ == "__main__":
    run_main(main)
