#!/usr/bin/env python3
"""Resident memory of llama-server, stock vs paged, at given context sizes and
slot counts.

    bench/memory.py --model M.gguf --configs 4096:1,16384:4 --out DIR

For each -c:-np pair and build: start the server, read VmRSS/VmHWM from
/proc/<pid>/status once /health is ok ("idle"), run a fixed request schedule
(one wave of -np concurrent requests of --prompt-tokens each, at most half a slot),
read them again ("after"), erase every other slot ("half erased": with unified KV
their cells lie between the others') and then the rest ("erased"),
and take the buffer sizes (KV, RS, compute, ...) that llama.cpp logs. For the
paged build it also reads what its paged caches hold resident (/proc/<pid>/smaps)
at each point, and compares it after the schedule with what the requests need:
tokens x KV bytes per token + sequences x recurrent-state bytes per sequence.
Throughout, a sampler reads the resident set (and the paged caches) every
--sample-s seconds: DIR/memory-over-time-CTXxNP.png plots both builds on one
time axis (idle, the schedule, the erase, idle again).
Writes DIR/memory.json, DIR/memory.md and the plots.
"""
import argparse
import json
import os
import pathlib
import shlex
import sys
import tempfile
import threading
import time


# A tool run as bench/<tool>.py: the repository root holds the harness package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from harness import builds, loadrun, plots, procmem, server_log, stats, tables, workload as wl
from harness.errors import HarnessError, run_main
from harness.server import LlamaServer

# llama-level INFO lines (the buffer sizes) are printed from verbosity 4 on.
LOG_VERBOSITY = "4"


def configs(text):
    out = []
    for item in text.split(","):
        ctx, sep, n_par = item.strip().partition(":")
        try:
            out.append((int(ctx), int(n_par)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CTX:NP[,CTX:NP...], got {text!r}") from None
        if not sep or out[-1][0] < 1 or out[-1][1] < 1:
            raise argparse.ArgumentTypeError(f"expected CTX:NP[,CTX:NP...], got {text!r}")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GGUF model")
    p.add_argument("--configs", type=configs, default=[(4096, 1), (16384, 4)],
                   help="comma-separated -c:-np pairs (default 4096:1,16384:4)")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server -t (default: all cores)")
    p.add_argument("--prompt-tokens", type=int, default=256,
                   help="prompt length of each scheduled request, at most half its slot (default 256)")
    p.add_argument("--n-predict", type=int, default=32, help="tokens generated per scheduled request")
    p.add_argument("--server-args", default="", help="extra llama-server arguments for both builds")
    p.add_argument("--health-timeout", type=float, default=600.0, help="seconds to wait for /health")
    p.add_argument("--sample-s", type=float, default=0.25, help="seconds between memory samples (default 0.25)")
    p.add_argument("--settle-s", type=float, default=2.0,
                   help="seconds sampled idle before the schedule and after the erase (default 2)")
    builds.add_build_args(p)
    args = p.parse_args(argv)
    if args.prompt_tokens < 1:
        raise HarnessError("--prompt-tokens must be at least 1")
    return args


def schedule(ctx, n_par, prompt_tokens, n_predict):
    """The fixed request schedule: every slot busy at once, with unique prompts
    (no prefix sharing), so the KV of every slot is actually written. The same
    prompt length at every -c: what a build keeps resident beyond what the
    requests used is the point of the table."""
    per_slot = ctx // n_par
    return wl.validate({"name": f"memory-{ctx}x{n_par}", "n_slots": n_par, "ctx": ctx, "seed": 0,
                        "n_requests": n_par, "prompt_tokens": max(1, min(prompt_tokens, per_slot // 2)),
                        "n_predict": n_predict})


def memory_now(pid):
    """(/proc/<pid>/status fields in KiB, KiB the paged caches hold resident)."""
    return procmem.vm_status(pid), procmem.paged_resident(pid)[0]


class MemorySampler(threading.Thread):
    """Samples (seconds since start, VmRSS KiB, paged caches resident KiB) of a process until stopped."""

    def __init__(self, pid, interval_s):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples = []
        self.marks = []  # (seconds, what happens from then on)
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def mark(self, what):
        self.marks.append((time.monotonic() - self._t0, what))

    def run(self):
        while not self._stop_event.is_set():
            try:
                status, cache = memory_now(self.pid)
            except (OSError, HarnessError):
                break  # the server is gone
            self.samples.append((time.monotonic() - self._t0, status.get("VmRSS"), cache))
            self._stop_event.wait(self.interval_s)

    def stop(self):
        self._stop_event.set()
        self.join()


def mib(kib):
    return None if kib is None else kib / 1024.0


def measure(args, build, ctx, n_par, knobs, log_dir):
    bin_dir = builds.bin_dirs(args)[build]
    # --slot-save-path: the server erases slots only with one
    server_args = ["-c", ctx, "-np", n_par, "-t", args.threads, "-lv", LOG_VERBOSITY, "--slot-save-path", log_dir,
                   *shlex.split(args.server_args)]
    log = pathlib.Path(log_dir) / f"server-memory-{ctx}x{n_par}-{build}.log"
    server = LlamaServer(bin_dir / "llama-server", args.model, server_args, builds.run_env(build, knobs),
                         log, build, health_timeout=args.health_timeout, keep_dir=args.out / "logs")
    with server:
        sampler = MemorySampler(server.pid, args.sample_s)
        sampler.start()
        sampler.mark("idle")
        time.sleep(args.settle_s)
        idle, idle_cache = memory_now(server.pid)
        work = schedule(ctx, n_par, args.prompt_tokens, args.n_predict)
        sampler.mark("requests")
        recs = loadrun.execute(server.port, work, wl.plan(work))
        sampler.mark("done")
        after, after_cache = memory_now(server.pid)
        time.sleep(args.settle_s)
        # every other slot first: with unified KV (-kvu) their cells lie between the others'
        sampler.mark("erase half")
        for slot in range(0, n_par, 2):
            server.post(f"/slots/{slot}?action=erase", {})
        half, half_cache = memory_now(server.pid)
        time.sleep(args.settle_s)
        sampler.mark("erase all")
        for slot in range(1, n_par, 2):
            server.post(f"/slots/{slot}?action=erase", {})
        erased, erased_cache = memory_now(server.pid)
        time.sleep(args.settle_s)
        sampler.stop()
    errors = [r["error"] for r in recs if r["error"]]
    if errors:
        kept = server.keep_log(args.out / "logs")
        raise HarnessError(f"{build} -c {ctx} -np {n_par}: {len(errors)} scheduled request(s) failed "
                         f"({errors[0]}); server log kept at {kept}")
    buffers = server_log.buffer_sizes(log.read_text(errors="replace"))
    prompt_n = [loadrun.request_metrics(r)["prompt_n"] for r in recs]
    return {
        "build": build, "ctx": ctx, "np": n_par, "command": server.command(server.port),
        "knobs": knobs if build == "paged" else {},
        "idle_kib": idle, "after_kib": after, "half_erased_kib": half, "erased_kib": erased,
        "cache_resident_kib": {"idle": idle_cache, "after": after_cache, "half_erased": half_cache,
                               "erased": erased_cache},
        "needed_mib": needed_mib(buffers["by_kind"], ctx, n_par, prompt_n, args.n_predict),
        "buffers_mib": buffers["by_kind"], "buffer_lines": buffers["lines"],
        "schedule": {"n_requests": len(recs), "prompt_n": prompt_n, "n_predict": args.n_predict},
        "over_time": {"samples": sampler.samples, "marks": sampler.marks},
    }


def plot_over_time(out_dir, results, model):
    """One plot per -c:-np: the resident set of both builds and the paged caches against time."""
    by_config = {}
    for r in results:
        by_config.setdefault((r["ctx"], r["np"]), []).append(r)
    paths = []
    for (ctx, n_par), rs in by_config.items():
        series = []
        for r in rs:
            samples = r["over_time"]["samples"]
            ts = [t for t, _, _ in samples]
            series.append((f"{r['build']} RSS", ts, [mib(rss) for _, rss, _ in samples], None))
            if r["build"] == "paged" and any(c for _, _, c in samples):
                series.append(("paged caches resident", ts, [mib(c) for _, _, c in samples], None))
        path = out_dir / f"memory-over-time-{ctx}x{n_par}.png"
        at = {w: t for t, w in rs[0]["over_time"]["marks"]}
        marks = (f"stock: requests {at['requests']:.0f}-{at['done']:.0f} s, erase half {at['erase half']:.0f} s, "
                 f"all {at['erase all']:.0f} s")
        plots.line_plot(path, f"{pathlib.Path(model).name}: llama-server -c {ctx} -np {n_par}\n{marks}",
                        "seconds since /health", "MiB", series)
        paths.append(path)
    return paths


def needed_mib(buffers_mib, ctx, n_par, prompt_n, n_predict):
    """What the schedule's sequences hold: every token's KV row and every sequence's state."""
    kv_per_token = buffers_mib.get("KV", 0.0) / ctx
    rs_per_seq = buffers_mib.get("RS", 0.0) / n_par
    return sum(n + n_predict for n in prompt_n if n) * kv_per_token + len(prompt_n) * rs_per_seq


def markdown(results):
    kinds = sorted({k for r in results for k in r["buffers_mib"]}, key=lambda k: (k != "KV", k))
    header = ["-c", "-np", "build", "RSS idle MiB", "HWM idle MiB", "RSS after MiB", "HWM after MiB", "RSS erased MiB",
              *[f"{k} buffers MiB" for k in kinds], "needed MiB", "cache idle / after / half erased / erased MiB",
              "after / needed"]
    rows = []
    for r in results:
        cache = r["cache_resident_kib"]
        paged = r["build"] == "paged" and (cache["idle"] or cache["after"])
        rows.append([r["ctx"], r["np"], r["build"],
                     tables.num(mib(r["idle_kib"].get("VmRSS")), 1), tables.num(mib(r["idle_kib"].get("VmHWM")), 1),
                     tables.num(mib(r["after_kib"].get("VmRSS")), 1), tables.num(mib(r["after_kib"].get("VmHWM")), 1),
                     tables.num(mib(r["erased_kib"].get("VmRSS")), 1),
                     *[tables.num(r["buffers_mib"].get(k), 2) for k in kinds],
                     tables.num(r["needed_mib"], 1),
                     " / ".join(tables.num(mib(cache[k]), 1) for k in ("idle", "after", "half_erased", "erased"))
                     if paged else "all",
                     tables.num(stats.ratio(mib(cache["after"]), r["needed_mib"]), 3) if paged else ""])
    by_key = {(r["ctx"], r["np"], r["build"]): r for r in results}
    for ctx, n_par in dict.fromkeys((r["ctx"], r["np"]) for r in results):
        s, p = by_key.get((ctx, n_par, "stock")), by_key.get((ctx, n_par, "paged"))
        if s and p:
            row = [ctx, n_par, "paged/stock"]
            for when in ("idle_kib", "after_kib"):
                for key in ("VmRSS", "VmHWM"):
                    row.append(tables.num(stats.ratio(p[when].get(key), s[when].get(key)), 3))
            row.append(tables.num(stats.ratio(p["erased_kib"].get("VmRSS"), s["erased_kib"].get("VmRSS")), 3))
            row += [tables.num(stats.ratio(p["buffers_mib"].get(k), s["buffers_mib"].get(k)), 3) for k in kinds]
            rows.append(row + ["", "", ""])
    return ("### memory: llama-server resident set\n\n"
            "idle = right after /health is ok; after = after the fixed schedule (-np concurrent "
            "requests with unique prompts); half erased = after erasing every other slot; erased = "
            "after erasing every slot. HWM is the peak resident "
            "set so far. Buffer sizes are the ones llama.cpp logs (summed per kind). needed = the "
            "schedule's tokens x KV bytes per token + its sequences x recurrent-state bytes per "
            "sequence; cache = what the paged build's caches hold resident (smaps), \"all\" where the "
            "caches are not paged.\n\n" + tables.markdown_table(header, rows))


def main(argv=None):
    args = parse_args(argv)
    plots.require_matplotlib()
    knobs = builds.parse_knobs(args.knobs)
    builds.require(builds.bin_dirs(args), "llama-server", [args.model])
    builds.check_knobs(builds.bin_dirs(args)["paged"], knobs, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="memory-logs-") as log_dir:
        for ctx, n_par in args.configs:
            for build in builds.BUILDS:
                print(f"memory: -c {ctx} -np {n_par} on {build} ...", file=sys.stderr, flush=True)
                results.append(measure(args, build, ctx, n_par, knobs, log_dir))
    versions = {b: builds.version_text(builds.bin_dirs(args)[b] / "llama-server") for b in builds.BUILDS}
    (args.out / "memory.json").write_text(json.dumps({"model": args.model, "versions": versions,
                                                      "knobs_paged": knobs, "results": results}, indent=1))
    text = markdown(results)
    for path in plot_over_time(args.out, results, args.model):
        text += f"\n![memory over time]({path.name})\n"
    (args.out / "memory.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
