#!/usr/bin/env python3
"""Serving load generator: the same workload against the stock and the paged
llama-server, one after the other, and the paged/stock ratios.

    bench/loadgen.py --model M.gguf --workload bench/workloads/shared_prefix.json [...] --out DIR

Per workload it writes DIR/loadgen-<name>.json (every request's token times),
DIR/loadgen-<name>.md, and TTFT / inter-token-latency CDF plots; DIR/loadgen.md
collects the tables of all workloads. See docs/BENCHMARKS.md.
"""
import argparse
import json
import os
import pathlib
import shlex
import sys
import tempfile


# A tool run as bench/<tool>.py: the repository root holds the harness package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from harness import builds, loadrun, plots, stats, tables, workload as wl
from harness.errors import HarnessError, run_main
from harness.server import LlamaServer, http_get_json

# The figures compared between builds: (label, path into the metrics, which
# direction is better, scale for the table, digits). The JSON keeps seconds.
MS = 1000.0
COMPARED = [
    ("TTFT p50 (ms)", ("ttft_s", "p50"), "lower", MS, 1),
    ("TTFT p95 (ms)", ("ttft_s", "p95"), "lower", MS, 1),
    ("TTFT max (ms)", ("ttft_s", "max"), "lower", MS, 1),
    ("ITL p50 (ms)", ("itl_s", "p50"), "lower", MS, 2),
    ("ITL p95 (ms)", ("itl_s", "p95"), "lower", MS, 2),
    ("ITL p99 (ms)", ("itl_s", "p99"), "lower", MS, 2),
    ("ITL max (ms)", ("itl_s", "max"), "lower", MS, 2),
    ("max decode stall (ms)", ("max_decode_stall_s",), "lower", MS, 2),
    ("output tok/s", ("output_tok_per_s",), "higher", 1.0, 1),
    ("prompt tokens computed", ("prompt_tokens_computed",), "lower", 1.0, 0),
    ("prompt tokens reused", ("prompt_tokens_reused",), "higher", 1.0, 0),
]


def dig(metrics, path):
    for key in path:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", nargs="+", required=True, type=pathlib.Path, help="workload JSON file(s)")
    p.add_argument("--model", required=True, help="GGUF model served by both builds")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server -t (default: all cores)")
    p.add_argument("--server-args", default="", help="extra llama-server arguments for both builds")
    p.add_argument("--builds", default="stock,paged", help="which builds to run, in order (default stock,paged)")
    p.add_argument("--keep-logs", action="store_true", help="keep server logs of successful runs too")
    p.add_argument("--health-timeout", type=float, default=600.0, help="seconds to wait for /health")
    builds.add_build_args(p)
    args = p.parse_args(argv)
    args.builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    if not args.builds or set(args.builds) - set(builds.BUILDS):
        raise HarnessError(f"--builds must list stock and/or paged, got {args.builds}")
    return args


def prompt_tokens(server, prompt):
    """The token ids the server computes for a prompt sent: a text as a completion tokenizes it,
    a chat's messages as the chat template renders them (and the chat tokenizes that)."""
    if isinstance(prompt, list):
        text = server.post("/apply-template", {"messages": prompt})["prompt"]
        return server.post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
    return server.post("/tokenize", {"content": prompt, "add_special": True})["tokens"]


def run_build(args, build, workload, waves, knobs, log_dir):
    """Starts this build's server, runs the plan, stops the server (always)."""
    bin_dir = builds.bin_dirs(args)[build]
    server_args = ["-c", workload["ctx"], "-np", workload["n_slots"], "-t", args.threads,
                   *workload["server_args"], *shlex.split(args.server_args)]
    log = log_dir / f"server-{workload['name']}-{build}.log"
    server = LlamaServer(bin_dir / "llama-server", args.model, server_args, builds.run_env(build, knobs),
                         log, build, health_timeout=args.health_timeout, keep_dir=args.out / "logs")
    with server:
        try:
            _, slots = http_get_json(server.port, "/slots")
        except OSError:
            slots = None
        recs = loadrun.execute(server.port, workload, waves)
        loadrun.add_shared_prefixes(recs, lambda prompt: prompt_tokens(server, prompt))
    metrics = loadrun.run_metrics(recs, len(waves))
    failed = metrics["overall"]["n_errors"] > 0
    if failed or args.keep_logs:
        kept = server.keep_log(args.out / "logs")
        if failed:
            first = next(r for r in recs if r["error"])
            print(f"{build}: {metrics['overall']['n_errors']} request(s) failed, first {first['id']}: "
                  f"{first['error']}\nserver log kept at {kept}", file=sys.stderr)
    return {
        "build": build,
        "command": server.command(server.port),
        "knobs": knobs if build == "paged" else {},
        "version": builds.version_text(bin_dir / "llama-server"),
        "slots_n_ctx": [s.get("n_ctx") for s in slots] if isinstance(slots, list) else None,
        "metrics": metrics,
        "requests": recs,
    }


def ratios(runs):
    if "stock" not in runs or "paged" not in runs:
        return {}
    s, p = runs["stock"]["metrics"]["overall"], runs["paged"]["metrics"]["overall"]
    return {label: stats.ratio(dig(p, path), dig(s, path)) for label, path, *_ in COMPARED}


def markdown(workload, runs, ratio):
    names = list(runs)
    out = [f"### loadgen: {workload['name']}\n"]
    if workload.get("description"):
        out.append(workload["description"] + "\n")
    header = ["figure", "better", *names] + (["paged/stock"] if ratio else [])
    rows = []
    for label, path, better, scale, digits in COMPARED:
        row = [label, better]
        for b in names:
            value = dig(runs[b]["metrics"]["overall"], path)
            row.append(tables.num(None if value is None else value * scale, digits))
        if ratio:
            row.append(tables.num(ratio[label], 3))
        rows.append(row)
    # what could be reused at most (the prompts' shared prefixes), and how much of it was
    shared = [dig(runs[b]["metrics"]["overall"], ("prompt_tokens_shared",)) for b in names]
    reused = [dig(runs[b]["metrics"]["overall"], ("prompt_tokens_reused",)) for b in names]
    rows.append(["prompt tokens shared with an earlier prompt", "", *[tables.num(v, 0) for v in shared]]
                + ([""] if ratio else []))
    rows.append(["reused / shared", "higher",
                 *[tables.num(r / s if s and r is not None else None, 3) for r, s in zip(reused, shared)]]
                + ([""] if ratio else []))
    rows.append(["failed requests", "lower", *[runs[b]["metrics"]["overall"]["n_errors"] for b in names]]
                + ([""] if ratio else []))
    out.append(tables.markdown_table(header, rows))
    if len(workload["waves"]) > 1:
        out.append("\nPer wave (TTFT p50 ms, of it computing the prompt p50 ms / max decode stall ms, of one request"
                   " (of all together: no request got a token) / output tok/s / prompt tokens computed / reused):\n")
        wrows = []
        for wi, wave in enumerate(workload["waves"]):
            row = [f"{wi}: {wave['name']}"]
            for b in names:
                m = runs[b]["metrics"]["waves"][wi]
                ttft = m["ttft_s"]["p50"]
                prompt = (m.get("prompt_s") or {}).get("p50")
                stall = m.get("max_decode_stall_s")
                step = m.get("max_step_stall_s")
                row.append(f"{tables.num(None if ttft is None else ttft * MS, 1)}"
                           f", {tables.num(None if prompt is None else prompt * MS, 1)}"
                           f" / {tables.num(None if stall is None else stall * MS, 1)}"
                           f" ({tables.num(None if step is None else step * MS, 1)})"
                           f" / {tables.num(m['output_tok_per_s'], 1)}"
                           f" / {m['prompt_tokens_computed']} / {m['prompt_tokens_reused']}")
            wrows.append(row)
        out.append(tables.markdown_table(["wave", *names], wrows))
    return "\n".join(out) + "\n"


def plot(workload, runs, out_dir):
    name = workload["name"]
    reqs = {b: runs[b]["requests"] for b in runs}
    plots.cdf_plot(out_dir / f"loadgen-{name}-ttft.png", f"{name}: time to first token", "TTFT (s)",
                   [(b, [r["ttft_s"] for r in reqs[b]]) for b in runs])
    plots.cdf_plot(out_dir / f"loadgen-{name}-itl.png", f"{name}: inter-token latency", "ITL (s)",
                   [(b, [g for r in reqs[b] for g in r["itl_s"]]) for b in runs])
    # per request, in plan order: where the time to the first token went, and what was reused
    plots.line_plot(out_dir / f"loadgen-{name}-ttft-per-request.png", f"{name}: time to first token per request",
                    "request (plan order)", "TTFT (s)",
                    [(b, list(range(len(reqs[b]))), [r["ttft_s"] for r in reqs[b]], None) for b in runs])
    plots.line_plot(out_dir / f"loadgen-{name}-reused.png", f"{name}: prompt tokens reused per request",
                    "request (plan order)", "prompt tokens reused (cache_n)",
                    [(b, list(range(len(reqs[b]))), [r["cache_n"] for r in reqs[b]], None) for b in runs]
                    + [("shared with an earlier prompt", list(range(len(reqs[b]))),
                        [r.get("shared_n") for r in reqs[b]], None) for b in list(runs)[:1]])


def main(argv=None):
    args = parse_args(argv)
    plots.require_matplotlib()
    # Validate everything before starting any server: a typo in the third
    # workload should not surface after the first two have run for minutes.
    workloads = [wl.load(path) for path in args.workload]
    knobs = builds.parse_knobs(args.knobs)
    builds.require({b: builds.bin_dirs(args)[b] for b in args.builds}, "llama-server", [args.model])
    if "paged" in args.builds:
        builds.check_knobs(builds.bin_dirs(args)["paged"], knobs, args.model)
    args.out.mkdir(parents=True, exist_ok=True)

    sections, failed = [], False
    with tempfile.TemporaryDirectory(prefix="loadgen-logs-") as log_dir:
        for workload in workloads:
            waves = wl.plan(workload)
            wl.warn_if_too_long(workload, waves)
            runs = {}
            for build in args.builds:
                print(f"loadgen: {workload['name']} on {build} ...", file=sys.stderr, flush=True)
                runs[build] = run_build(args, build, workload, waves, knobs, pathlib.Path(log_dir))
            ratio = ratios(runs)
            failed |= any(r["metrics"]["overall"]["n_errors"] for r in runs.values())
            result = {"workload": workload, "model": args.model, "threads": args.threads,
                      "runs": runs, "ratios_paged_over_stock": ratio}
            name = workload["name"]
            (args.out / f"loadgen-{name}.json").write_text(json.dumps(result, indent=1))
            section = markdown(workload, runs, ratio)
            (args.out / f"loadgen-{name}.md").write_text(section)
            plot(workload, runs, args.out)
            sections.append(section)
            print(section, flush=True)
    (args.out / "loadgen.md").write_text("\n".join(sections))
    if failed:
        raise HarnessError("some requests failed (see the tables and the kept server logs)")
    return 0


if __name__ == "__main__":
    run_main(main)
