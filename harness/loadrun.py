"""Running a request plan against one server, and the latency figures of a run.

One thread per in-flight request: each thread blocks on its own SSE stream, so
a stall on the server shows up as a gap in that request's token times rather
than being hidden by a client-side event loop.
"""
import os
import threading
import time

from . import stats
from .sse import stream_chat, stream_completion


def request_body(workload, req):
    """The body of req's request: prompt is a text (/completion) or, in a chat workload, the
    list of messages (/v1/chat/completions)."""
    body = {
        "cache_prompt": True,
        "temperature": 0.0,
        "seed": workload["seed"],
        # Without this, a model that samples EOS early would do less work on one
        # build than the other, and the runs would not be comparable.
        "ignore_eos": workload["ignore_eos"],
    }
    if workload.get("chat"):
        return dict(body, messages=req["prompt"], max_tokens=req["n_predict"])
    return dict(body, prompt=req["prompt"], n_predict=req["n_predict"])


def first_turn(req):
    """What req sends when it starts a conversation: its text, or in a chat its messages."""
    return [*([{"role": "system", "content": req["system"]}] if req["system"] else []),
            {"role": "user", "content": req["prompt"]}]


def execute(port, workload, waves):
    """Sends every request at its planned time; returns the records in plan order.
    A wave without start_s begins when every earlier request has finished; a
    wave with start_s begins that many seconds after the run started."""
    t0 = time.perf_counter()
    records = {}
    threads = []

    chat = workload.get("chat", False)

    def worker(req):
        prompt = first_turn(req) if chat else req["prompt"]
        if "continues" in req:
            # a chat's next turn: the conversation so far (its wave ended before this one began)
            earlier = records[req["continues"]]
            if chat:
                prompt = [*earlier["prompt_sent"], {"role": "assistant", "content": earlier.get("content", "")},
                          {"role": "user", "content": req["prompt"]}]
            else:
                prompt = earlier["prompt_sent"] + earlier.get("content", "") + " " + prompt
        stream = stream_chat if chat else stream_completion
        rec = stream(port, request_body(workload, dict(req, prompt=prompt)), t0, timeout=workload["request_timeout_s"])
        rec.update(id=req["id"], wave=req["wave"], has_prefix=req["has_prefix"],
                   approx_tokens=req["approx_tokens"], n_predict=req["n_predict"], prompt_sent=prompt)
        records[req["id"]] = rec

    for wave in waves:
        if wave["start_s"] is None:
            for thread in threads:
                thread.join()
            wave_t = time.perf_counter() - t0
        else:
            wave_t = wave["start_s"]
        for req in wave["requests"]:
            delay = wave_t + req["offset_s"] - (time.perf_counter() - t0)
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=worker, args=(req,), name=req["id"], daemon=True)
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join()
    return [records[r["id"]] for w in waves for r in w["requests"]]


def shared_prefixes(token_lists, send_times):
    """For each prompt, the longest prefix it shares with a prompt sent before it (or at the same
    time): what a prefix cache could reuse of the earlier prompts, their answers aside. At most
    all but the last token: a prompt computes at least one. Plan order in, plan order out."""
    order = sorted(range(len(token_lists)), key=lambda i: send_times[i])
    shared = [0] * len(token_lists)
    for k, i in enumerate(order):
        mine = token_lists[i]
        best = max((len(os.path.commonprefix([mine, token_lists[j]])) for j in order[:k]), default=0)
        shared[i] = min(best, max(len(mine) - 1, 0))
    return shared


def add_shared_prefixes(recs, tokenize):
    """Sets shared_n on every record; tokenize(prompt) gives the token ids the server computes for
    a prompt sent (a text: POST /tokenize with add_special, as a completion does; a chat's
    messages: the chat template's text first)."""
    ok = [r for r in recs if r["error"] is None]
    tokens = [tokenize(r["prompt_sent"]) for r in ok]
    for rec, n in zip(ok, shared_prefixes(tokens, [r["t_send"] for r in ok])):
        rec["shared_n"] = n


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def request_metrics(rec):
    """Adds ttft_s, itl_s (list), max_gap_s, the server's token counts and prompt_s, the part of
    the TTFT the server spent computing the prompt (timings.prompt_ms: from the prompt's first
    batch to its last; the rest of the TTFT is queueing, waiting and the restore of a cache)."""
    timings = rec.get("timings") or {}
    gaps = _gaps(rec["token_times"])
    rec["ttft_s"] = None if rec["t_first"] is None else rec["t_first"] - rec["t_send"]
    rec["itl_s"] = gaps
    rec["max_gap_s"] = max(gaps) if gaps else None
    rec["prompt_n"] = timings.get("prompt_n")
    rec["cache_n"] = timings.get("cache_n")
    rec["predicted_n"] = timings.get("predicted_n", rec["n_predicted"])
    rec["prompt_s"] = None if timings.get("prompt_ms") is None else timings["prompt_ms"] / 1000.0
    return rec


def step_stall(recs):
    """The longest time no request of recs got a token while all of them were streaming (from the
    last first token to the first last token): a step of the server, which every decoder of a wave
    waits for, apart from one request's own delivery delay (a busy client thread). None for fewer
    than two requests or streams that do not overlap."""
    streams = [r["token_times"] for r in recs if len(r["token_times"]) >= 2]
    if len(streams) < 2:
        return None
    lo, hi = max(s[0] for s in streams), min(s[-1] for s in streams)
    times = sorted(t for s in streams for t in s if lo <= t <= hi)
    return max(_gaps(times), default=None)


def group_metrics(recs):
    """The figures of a set of requests (a wave or the whole run)."""
    ok = [r for r in recs if r["error"] is None]
    tokens = sum(r["n_predicted"] for r in ok)
    span = None
    if ok:
        last = max((r["token_times"][-1] for r in ok if r["token_times"]), default=None)
        if last is not None:
            span = last - min(r["t_send"] for r in ok)
    stall = max((r for r in ok if r["max_gap_s"] is not None), key=lambda r: r["max_gap_s"], default=None)
    stall_at = None
    if stall is not None:
        gaps = stall["itl_s"]
        stall_at = stall["token_times"][gaps.index(stall["max_gap_s"])]
    return {
        "n_requests": len(recs),
        "n_errors": len(recs) - len(ok),
        "ttft_s": stats.latency_summary([r["ttft_s"] for r in ok]),
        "prompt_s": stats.latency_summary([r["prompt_s"] for r in ok if r.get("prompt_s") is not None]),
        "itl_s": stats.latency_summary([g for r in ok for g in r["itl_s"]]),
        # The longest time any single in-flight request waited between two of its
        # tokens: what a long prefill scheduled alongside decoders costs them.
        "max_decode_stall_s": None if stall is None else stall["max_gap_s"],
        "max_decode_stall_request": None if stall is None else stall["id"],
        "max_decode_stall_ends_at_s": stall_at,
        "max_step_stall_s": step_stall(ok),
        "output_tokens": tokens,
        "output_tok_per_s": stats.ratio(tokens, span),
        "span_s": span,
        "prompt_tokens_computed": sum(r["prompt_n"] or 0 for r in ok),
        "prompt_tokens_reused": sum(r["cache_n"] or 0 for r in ok),
        # None unless add_shared_prefixes ran: a prompt's longest prefix shared with an earlier one
        "prompt_tokens_shared": (sum(r["shared_n"] for r in ok)
                                 if ok and all("shared_n" in r for r in ok) else None),
    }


def run_metrics(recs, n_waves):
    for rec in recs:
        request_metrics(rec)
    return {
        "overall": group_metrics(recs),
        "waves": [group_metrics([r for r in recs if r["wave"] == wi]) for wi in range(n_waves)],
    }
