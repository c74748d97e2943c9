#!/usr/bin/env python3
"""Capacity at fixed memory: stock llama-server with its KV cache sized for its slots against the
paged server capped at the same memory (LLAMA_KV_MAX_MIB), at rising concurrency.

    bench/capacity.py --model M.gguf --out DIR [--slot-ctx 8192] [--stock-slots 4]
        [--levels 4,8,16] [--prompt-tokens 300] [--n-predict 200] [--knobs "LLAMA_SERVING=1"]

Stock reserves every slot's whole context up front: with -np S and a per-slot context L (the
longest conversation it accepts) it runs -c S*L, and S requests at a time. The paged server gets
-np max(levels), the same per-slot context, and LLAMA_KV_MAX_MIB set to what stock's KV cache and
recurrent states take (read from stock's start-up log): its memory follows what requests use, up
to the same total. Each level sends that many short chats at once (prompt_tokens unique tokens,
n_predict tokens each, ignore_eos) and waits for all: completed requests per second, TTFT p50 and
p99, the most requests in flight at once (/metrics requests_processing), and how many failed or
came back truncated.

Writes DIR/capacity-<model>.json and .md (docs/BENCHMARKS.md, "Capacity at fixed memory").
"""
import argparse
import json
import math
import pathlib
import shlex
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from harness import builds, server_log, sse, stats, tables  # noqa: E402  (the root must be on the path first)
from harness.errors import HarnessError, run_main  # noqa: E402
from harness.metrics_poller import MetricsPoller  # noqa: E402
from harness.prompts import words  # noqa: E402
from harness.server import LlamaServer  # noqa: E402

MS = 1000.0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=pathlib.Path, help="GGUF model served by both builds")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    p.add_argument("--slot-ctx", type=int, default=8192, help="per-slot context L (default 8192)")
    p.add_argument("--stock-slots", type=int, default=4, help="stock's -np S: its KV is S*L tokens (default 4)")
    p.add_argument("--levels", default="4,8,16", help="requests sent at once, comma-separated (default 4,8,16)")
    p.add_argument("--prompt-tokens", type=int, default=300)
    p.add_argument("--n-predict", type=int, default=200)
    p.add_argument("--threads", default=None, help="llama-server -t (default: all cores)")
    p.add_argument("--server-args", default="", help="extra llama-server arguments for both builds")
    p.add_argument("--health-timeout", type=float, default=600.0)
    builds.add_build_args(p)
    args = p.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--levels must be integers separated by commas, got {args.levels!r}") from None
    if not args.levels or min(args.levels) < 1:
        raise HarnessError(f"--levels must list positive request counts, got {args.levels}")
    for name in ("slot_ctx", "stock_slots", "prompt_tokens", "n_predict"):
        if getattr(args, name) < 1:
            raise HarnessError(f"--{name.replace('_', '-')} must be positive")
    if args.prompt_tokens + args.n_predict > args.slot_ctx:
        raise HarnessError(f"a request ({args.prompt_tokens} + {args.n_predict} tokens) does not fit a slot of {args.slot_ctx}")
    if args.threads is None:
        import os
        args.threads = str(os.cpu_count() or 1)
    return args


def prompts(srv, n, n_tokens, level):
    """n prompts of exactly n_tokens token ids that share nothing (a distinct first word)."""
    out = []
    for i in range(n):
        text = f"{level}-{i} " + words(n_tokens, f"capacity:{level}:{i}")
        ids = srv.post("/tokenize", {"content": text, "add_special": True})["tokens"]
        if len(ids) < n_tokens:
            raise HarnessError(f"a prompt of {n_tokens} words gave only {len(ids)} tokens")
        out.append(ids[:n_tokens])
    return out


def one_request(port, prompt, n_predict, t0):
    last = {}
    rec = sse.stream_completion(port, {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True,
                                       "temperature": 0, "cache_prompt": True}, t0,
                                on_event=lambda e: last.update(e) if e.get("stop") else None)
    rec["truncated"] = bool(last.get("truncated")) or (rec["error"] is None and rec["n_predicted"] < n_predict)
    return rec


class RunningPoller(MetricsPoller):
    """The most requests computing at once: in flight on a slot (requests_processing) less those
    waiting there for room under LLAMA_KV_MAX_MIB (kv_budget_requests_waiting)."""

    def __init__(self, srv, period_s=0.25):
        super().__init__(srv, [], period_s)
        self.peak = 0.0

    def observe(self, now):
        if "requests_processing" in now:
            self.peak = max(self.peak, now["requests_processing"] - now.get("kv_budget_requests_waiting", 0.0))


def delta(before, after, name):
    return after[name] - before.get(name, 0.0) if name in after else None


def run_level(srv, level, args):
    reqs = prompts(srv, level, args.prompt_tokens, level)
    recs = [None] * level
    t0 = time.perf_counter()

    def send(i):
        recs[i] = one_request(srv.port, reqs[i], args.n_predict, t0)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(level)]
    before = srv.metrics()
    with MetricsPoller(srv, ["requests_processing", "kv_cache_used_bytes"], period_s=0.25) as poll, \
            RunningPoller(srv) as running:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    after = srv.metrics()
    done = [r for r in recs if r["error"] is None and not r["truncated"]]
    ttft = [r["t_first"] - r["t_send"] for r in recs if r["t_first"] is not None]
    return {
        "level": level,
        "wall_s": wall,
        "completed": len(done),
        "failed": sum(1 for r in recs if r["error"] is not None),
        "truncated": sum(1 for r in recs if r["error"] is None and r["truncated"]),
        "req_per_s": len(done) / wall if wall > 0 else None,
        "output_tok_per_s": sum(r["n_predicted"] for r in done) / wall if wall > 0 else None,
        "ttft_p50_s": stats.percentile(ttft, 50) if ttft else None,
        "ttft_p99_s": stats.percentile(ttft, 99) if ttft else None,
        "peak_in_flight": poll.peak["requests_processing"],
        "peak_running": running.peak,
        # the paged server's figures (stock has no such lines)
        "peak_cache_mib": poll.peak["kv_cache_used_bytes"] / 2**20 if "kv_cache_used_bytes" in after else None,
        "preempted": delta(before, after, "kv_budget_preemptions_total"),
        "recomputed_tokens": delta(before, after, "kv_budget_recomputed_tokens_total"),
        "errors": [r["error"] for r in recs if r["error"]][:3],
    }


def stock_memory_mib(args, log_dir):
    """What stock's KV cache and recurrent states take, from its start-up log (-lv 4)."""
    bin_dir = builds.bin_dirs(args)["stock"]
    log = log_dir / "stock-sizes.log"
    with LlamaServer(bin_dir / "llama-server", args.model, stock_args(args) + ["-lv", "4"], builds.run_env("stock", {}),
                     log, "stock", health_timeout=args.health_timeout):
        pass
    sizes = server_log.buffer_sizes(log.read_text(errors="replace"))["by_kind"]
    if "KV" not in sizes:
        raise HarnessError(f"no KV buffer size in {log}")
    return sizes["KV"] + sizes.get("RS", 0.0)


def stock_args(args):
    return ["-c", str(args.stock_slots * args.slot_ctx), "-np", str(args.stock_slots), "-t", args.threads,
            "--metrics", *shlex.split(args.server_args)]


def paged_args(args):
    n = max(args.levels)
    # -kvu: one stream that any slot grows in (the serving profile turns it on too); the per-slot
    # context is L as in stock, the total a bound the budget keeps it far from
    return ["-c", str(n * args.slot_ctx), "-np", str(n), "-kvu", "--kv-unified-per-slot", str(args.slot_ctx),
            "-t", args.threads, "--metrics", *shlex.split(args.server_args)]


def run_build(args, build, server_args, knobs, log_dir):
    bin_dir = builds.bin_dirs(args)[build]
    log = log_dir / f"{build}.log"
    srv = LlamaServer(bin_dir / "llama-server", args.model, server_args, builds.run_env(build, knobs), log, build,
                      health_timeout=args.health_timeout, keep_dir=args.out / "logs")
    levels = []
    with srv:
        for level in args.levels:
            m = run_level(srv, level, args)
            print(f"{build} {level} at once: {m['completed']} done in {m['wall_s']:.1f} s, TTFT p50 "
                  f"{tables.num(m['ttft_p50_s'], 2)} s, at most {m['peak_in_flight']:.0f} in flight, "
                  f"{m['failed']} failed, {m['truncated']} truncated", file=sys.stderr)
            levels.append(m)
    if any(m["failed"] or m["truncated"] for m in levels):
        srv.keep_log(args.out / "logs")
    return {"build": build, "command": srv.command(srv.port), "knobs": knobs, "levels": levels}


def markdown(args, memory_mib, runs):
    name = args.model.stem
    out = [f"### capacity at fixed memory: {name}\n",
           f"Stock: `-np {args.stock_slots} -c {args.stock_slots * args.slot_ctx}` ({args.slot_ctx} tokens a slot, reserved): "
           f"KV and recurrent states {memory_mib:.1f} MiB. Paged: `-np {max(args.levels)} -kvu --kv-unified-per-slot "
           f"{args.slot_ctx}` with `{' '.join(f'{k}={v}' for k, v in runs['paged']['knobs'].items())}`. Each level sends "
           f"that many requests at once: {args.prompt_tokens} prompt tokens (unique), {args.n_predict} generated.\n"]
    header = ["at once", "build", "done", "failed", "truncated", "req/s", "output tok/s", "TTFT p50 ms", "TTFT p99 ms",
              "most in flight (computing)", "cache MiB at most", "preempted (tokens again)"]
    rows = []
    for i, level in enumerate(args.levels):
        for build in runs:
            m = runs[build]["levels"][i]
            rows.append([level, build, m["completed"], m["failed"], m["truncated"], tables.num(m["req_per_s"], 3),
                         tables.num(m["output_tok_per_s"], 1),
                         tables.num(None if m["ttft_p50_s"] is None else m["ttft_p50_s"] * MS, 0),
                         tables.num(None if m["ttft_p99_s"] is None else m["ttft_p99_s"] * MS, 0),
                         f"{m['peak_in_flight']:.0f} ({m['peak_running']:.0f})", tables.num(m["peak_cache_mib"], 1),
                         "" if m["preempted"] is None else f"{m['preempted']:.0f} ({m['recomputed_tokens']:.0f})"])
        s, p = runs["stock"]["levels"][i], runs["paged"]["levels"][i]
        rows.append([level, "paged/stock", "", "", "", tables.num(stats.ratio(p["req_per_s"], s["req_per_s"]), 3),
                     tables.num(stats.ratio(p["output_tok_per_s"], s["output_tok_per_s"]), 3),
                     tables.num(stats.ratio(p["ttft_p50_s"], s["ttft_p50_s"]), 3),
                     tables.num(stats.ratio(p["ttft_p99_s"], s["ttft_p99_s"]), 3),
                     f"{tables.num(stats.ratio(p['peak_in_flight'], s['peak_in_flight']), 2)} "
                     f"({tables.num(stats.ratio(p['peak_running'], s['peak_running']), 2)})", "", ""])
    out.append(tables.markdown_table(header, rows))
    return "\n".join(out) + "\n"


def main(argv=None):
    args = parse_args(argv)
    knobs = builds.parse_knobs(args.knobs)
    builds.require(builds.bin_dirs(args), "llama-server", [args.model])
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs"
    log_dir.mkdir(exist_ok=True)
    memory_mib = stock_memory_mib(args, log_dir)
    # the cap needs paged caches (LLAMA_SERVING=1 turns them on in the server, but the knob check
    # runs llama-completion, which has no profile)
    knobs = {"LLAMA_KV_PAGED": "1", **knobs, "LLAMA_KV_MAX_MIB": str(math.floor(memory_mib))}
    builds.check_knobs(builds.bin_dirs(args)["paged"], knobs, args.model)
    runs = {"stock": run_build(args, "stock", stock_args(args), {}, log_dir),
            "paged": run_build(args, "paged", paged_args(args), knobs, log_dir)}
    name = args.model.stem
    (args.out / f"capacity-{name}.json").write_text(json.dumps(
        {"model": str(args.model), "memory_mib": memory_mib, "args": {k: str(v) for k, v in vars(args).items()},
         "runs": runs}, indent=1))
    md = markdown(args, memory_mib, runs)
    (args.out / f"capacity-{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    run_main(main)
