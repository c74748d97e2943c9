#!/usr/bin/env python3
"""Paged llama-server replicas behind HAProxy on loopback: prefix affinity against round-robin.

    bench/scale.py --model M.gguf --out DIR [--replicas 2] [--workload bench/workloads/scale.json]
        [--policies affinity,roundrobin] [--stop-one-after S] [--knobs "LLAMA_SERVING=1"]

For each policy, fresh replicas (empty caches) on free ports of 127.0.0.1, HAProxy in front of
them with the shipped configuration (deploy/haproxy/llama-paged.cfg; round-robin swaps its balance
line only), and the workload sent to the proxy. Per policy: prompt tokens computed and reused, the
share of what prompts shared that was reused, TTFT p50/p99, output tok/s, failed requests, and the
prompt tokens each replica computed. --stop-one-after S adds a run with prefix affinity where the
first replica dies (SIGKILL) S seconds in: the proxy's health check takes it out (about 2 s), its
keys move to the others, every request ends (what the dead replica held fails) and every request
sent after that is served; none hangs. Writes DIR/scale-<workload>.json and .md (docs/SCALE-OUT.md).
"""
import argparse
import contextlib
import json
import math
import pathlib
import shlex
import signal
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from harness import builds, loadrun, proxy, stats, tables, workload as wl  # noqa: E402  (the root must be on the path first)
from harness.errors import HarnessError, run_main  # noqa: E402
from harness.server import HOST, LlamaServer, port_taken  # noqa: E402

MS = 1000.0
# how long after a replica dies every request must be served again: the proxy's health check
# (inter 1s, fall 2) and a margin
TAKEN_OUT_S = 4.0
DEFAULT_WORKLOAD = pathlib.Path(__file__).resolve().parent / "workloads" / "scale.json"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=pathlib.Path, help="GGUF model every replica serves")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--workload", type=pathlib.Path, default=DEFAULT_WORKLOAD)
    p.add_argument("--policies", default="affinity,roundrobin",
                   help="comma-separated: affinity, affinity-bounded (hash-balance-factor 125), roundrobin")
    p.add_argument("--stop-one-after", type=float, default=None, help="seconds into a run with affinity when replica 1 stops")
    p.add_argument("--proxy-port", type=int, default=None, help="the proxy's port (default: a free one)")
    p.add_argument("--threads", type=int, default=1, help="llama-server -t of each replica (default 1)")
    p.add_argument("--server-args", default="", help="extra llama-server arguments of every replica")
    p.add_argument("--health-timeout", type=float, default=600.0)
    builds.add_build_args(p)
    args = p.parse_args(argv)
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    unknown = [x for x in args.policies if x not in proxy.POLICIES]
    if unknown or not args.policies:
        raise HarnessError(f"--policies: expected some of {', '.join(proxy.POLICIES)}, got {args.policies}")
    if args.replicas < 2:
        raise HarnessError("--replicas must be 2 or more: one replica needs no proxy")
    if args.stop_one_after is not None and args.stop_one_after <= 0:
        raise HarnessError("--stop-one-after must be a positive number of seconds")
    if args.proxy_port is not None and port_taken(args.proxy_port):
        raise HarnessError(f"the proxy's port {args.proxy_port} on {HOST} is already taken")
    return args


def replica_metrics(srv):
    try:
        m = srv.metrics(timeout=10)
    except Exception:  # noqa: BLE001 - a stopped replica has none
        return None
    return {"prompt_tokens": m.get("prompt_tokens_total"), "requests": m.get("requests_processing")}


def run_policy(args, policy, workload, waves, knobs, log_dir, stop_after=None):
    """Fresh replicas and a proxy with this policy; the workload through the proxy."""
    bin_dir = builds.bin_dirs(args)["paged"]
    server_args = ["-c", workload["ctx"], "-np", workload["n_slots"], "-t", args.threads, "--metrics",
                   *workload["server_args"], *shlex.split(args.server_args)]
    name = f"{policy}{'-stop' if stop_after else ''}"
    stopped_at = []
    with contextlib.ExitStack() as stack:
        replicas = []
        for i in range(args.replicas):
            srv = LlamaServer(bin_dir / "llama-server", args.model, server_args, builds.run_env("paged", knobs),
                              log_dir / f"{name}-replica{i + 1}.log", f"replica {i + 1}",
                              health_timeout=args.health_timeout, keep_dir=args.out / "logs")
            replicas.append(stack.enter_context(srv))
        prx = stack.enter_context(proxy.Proxy([r.port for r in replicas], log_dir, policy, port=args.proxy_port,
                                              name=name))
        t0 = time.perf_counter()

        def die():
            # a replica that dies (a crash, an OOM kill): no goodbye to its clients
            replicas[0].proc.kill()
            replicas[0].proc.wait()
            stopped_at.append(time.perf_counter() - t0)
        stopper = threading.Timer(stop_after, die) if stop_after else None
        if stopper:
            stopper.daemon = True
            stopper.start()
            stack.callback(stopper.cancel)
        recs = loadrun.execute(prx.port, workload, waves)
        wall = time.perf_counter() - t0
        if stopper:
            stopper.cancel()
            stopper.join()
            if not stopped_at:
                raise HarnessError(f"the run ended after {wall:.1f} s, before replica 1 was to stop at {stop_after:.0f} s: "
                                   "lower --stop-one-after")
        # what each replica computed (a stopped one reports nothing)
        per_replica = [replica_metrics(r) if r.proc.poll() is None else None for r in replicas]
        loadrun.add_shared_prefixes(recs, lambda prompt: tokens_of(replicas, prompt))
    metrics = loadrun.run_metrics(recs, len(waves))
    after_stop = [r for r in recs if stopped_at and r["t_send"] >= stopped_at[0] + TAKEN_OUT_S]
    return {"policy": policy, "stopped_replica_after_s": stopped_at[0] if stopped_at else None, "wall_s": wall,
            "metrics": metrics, "per_replica": per_replica, "errors": [r["error"] for r in recs if r["error"]][:5],
            "sent_after_taken_out": len(after_stop),
            "failed_after_taken_out": sum(1 for r in after_stop if r["error"]), "requests": recs}


def tokens_of(replicas, prompt):
    srv = next(r for r in replicas if r.proc.poll() is None)  # the live ones (one may have been stopped)
    if isinstance(prompt, list):
        text = srv.post("/apply-template", {"messages": prompt})["prompt"]
        return srv.post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
    return srv.post("/tokenize", {"content": prompt, "add_special": True})["tokens"]


def markdown(args, workload, runs):
    out = [f"### scale-out: {workload['name']} through HAProxy, {args.replicas} replicas of {args.model.stem}\n"]
    if workload.get("description"):
        out.append(workload["description"] + "\n")
    header = ["run", "prompt tokens computed", "reused / shared", "TTFT p50 ms", "TTFT p99 ms", "output tok/s",
              "failed", "prompt tokens per replica"]
    rows = []
    for run in runs:
        o = run["metrics"]["overall"]
        shared, reused = o["prompt_tokens_shared"], o["prompt_tokens_reused"]
        label = run["policy"] + (f", replica 1 died at {run['stopped_replica_after_s']:.1f} s "
                                 f"({run['failed_after_taken_out']} of {run['sent_after_taken_out']} sent {TAKEN_OUT_S:.0f} s later failed)"
                                 if run["stopped_replica_after_s"] else "")
        rows.append([label, o["prompt_tokens_computed"], tables.num(reused / shared if shared else None, 3),
                     tables.num(None if o["ttft_s"]["p50"] is None else o["ttft_s"]["p50"] * MS, 0),
                     tables.num(None if o["ttft_s"]["p99"] is None else o["ttft_s"]["p99"] * MS, 0),
                     tables.num(o["output_tok_per_s"], 1), o["n_errors"],
                     " / ".join("stopped" if m is None else f"{m['prompt_tokens']:.0f}" for m in run["per_replica"])])
    out.append(tables.markdown_table(header, rows))
    by = {r["policy"]: r for r in runs if not r["stopped_replica_after_s"]}
    if "affinity" in by and "roundrobin" in by:
        a, r = by["affinity"]["metrics"]["overall"], by["roundrobin"]["metrics"]["overall"]
        out.append(f"\naffinity/round-robin: prompt tokens computed "
                   f"{tables.num(stats.ratio(a['prompt_tokens_computed'], r['prompt_tokens_computed']), 3)}, TTFT p50 "
                   f"{tables.num(stats.ratio(a['ttft_s']['p50'], r['ttft_s']['p50']), 3)}\n")
    return "\n".join(out) + "\n"


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: every replica and the proxy are stopped by PID


def main(argv=None):
    signal.signal(signal.SIGTERM, on_sigterm)
    args = parse_args(argv)
    workload = wl.load(args.workload)
    waves = wl.plan(workload)
    for wave in workload["waves"]:
        if wave["shared_prefix_tokens"] and math.gcd(wave["n_shared_prefixes"], args.replicas) > 1:
            print(f"warning: {wave['n_shared_prefixes']} shared prefixes over {args.replicas} replicas: round-robin sends "
                  "user i (prefix i mod n) to replica i mod N, the same replica for each prefix, as affinity would",
                  file=sys.stderr)
    knobs = builds.parse_knobs(args.knobs)
    builds.require({"paged": builds.bin_dirs(args)["paged"]}, "llama-server", [args.model])
    proxy.haproxy_binary()
    if knobs:
        builds.check_knobs(builds.bin_dirs(args)["paged"], knobs, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs"
    runs = [run_policy(args, policy, workload, waves, knobs, log_dir) for policy in args.policies]
    if args.stop_one_after:
        runs.append(run_policy(args, "affinity", workload, waves, knobs, log_dir, stop_after=args.stop_one_after))
    name = workload["name"]
    (args.out / f"scale-{name}.json").write_text(json.dumps(
        {"model": str(args.model), "replicas": args.replicas, "knobs": knobs, "runs": runs}, indent=1, default=str))
    md = markdown(args, workload, runs)
    (args.out / f"scale-{name}.md").write_text(md)
    print(md)
    for run in runs:
        if run["metrics"]["overall"]["n_errors"] and not run["stopped_replica_after_s"]:
            print(f"{run['policy']}: {run['metrics']['overall']['n_errors']} request(s) failed: {run['errors']}", file=sys.stderr)
            return 1
        if run["stopped_replica_after_s"] and (run["failed_after_taken_out"] or not run["sent_after_taken_out"]):
            print(f"{run['failed_after_taken_out']} of {run['sent_after_taken_out']} requests sent {TAKEN_OUT_S:.0f} s after "
                  f"replica 1 died failed (none must; and some must be sent): {run['errors']}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    run_main(main)
