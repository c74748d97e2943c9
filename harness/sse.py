"""One streaming /completion request, timed token by token.

llama-server answers a streaming /completion with server-sent events, one
`data: {json}` line per sampled token (tokens_predicted counts them), then a
final event with "stop": true and the "timings" object (prompt_n = prompt
tokens computed, cache_n = prompt tokens reused from the slot's cache). The
first event is sent only once a token exists, so the time to it is the TTFT.
"""
import http.client
import json
import time

from .server import HOST


def stream_completion(port, body, t0, timeout=900.0, on_tokens=None, path="/completion", on_event=None):
    """POSTs body (stream forced on) and returns a record with times relative to
    t0 (a time.perf_counter() origin shared by all requests of a run):
    t_send, t_first, t_end, token_times (one per token), content, timings, error.
    on_tokens(n), if given, is called with the number of tokens received so far
    after each event that brought tokens (a test can act in the middle of a stream);
    on_event(event), if given, with each event as parsed."""
    body = dict(body, stream=True)
    rec = {"t_send": time.perf_counter() - t0, "t_first": None, "t_end": None,
           "token_times": [], "content": "", "timings": None, "n_predicted": 0, "error": None}
    content = []
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            rec["error"] = f"HTTP {resp.status}: {resp.read()[:500].decode(errors='replace')}"
            return rec
        seen = 0
        while True:
            line = resp.readline()
            if not line:
                break
            now = time.perf_counter() - t0
            line = line.strip()
            if not line.startswith(b"data: "):
                continue  # blank separators and ':' keep-alive pings
            payload = line[len(b"data: "):]
            if payload == b"[DONE]":
                break
            event = json.loads(payload)
            if on_event:
                on_event(event)
            if "error" in event:
                rec["error"] = json.dumps(event["error"])[:500]
                break
            # One event normally carries one token; count by tokens_predicted so an
            # event that carries several (speculative decoding) still adds up. A chat's events
            # (OpenAI's chunks) carry no count: one token each that brings text
            if "choices" in event:
                delta = (event["choices"] or [{}])[0].get("delta", {})
                text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
                predicted = seen + 1 if text else seen
                content.append(delta.get("content") or "")
            else:
                predicted = event.get("tokens_predicted", seen)
                content.append(event.get("content", ""))
            if predicted > seen:
                rec["token_times"].extend([now] * (predicted - seen))
                seen = predicted
                if on_tokens:
                    on_tokens(seen)
            if event.get("timings"):
                rec["timings"] = event["timings"]
            if event.get("stop") or ("choices" in event and event["choices"] and event["choices"][0].get("finish_reason")):
                break
        rec["n_predicted"] = seen
        if path != "/completion":
            # a chat's chunks follow the parsed text, not the tokens (a token that adds no text
            # sends none): the count is the server's, the times those of the chunks
            rec["n_predicted"] = (rec["timings"] or {}).get("predicted_n", seen)
        rec["content"] = "".join(content)
    except (OSError, http.client.HTTPException, ValueError) as err:
        rec["error"] = f"{type(err).__name__}: {err}"
    finally:
        conn.close()
        rec["t_end"] = time.perf_counter() - t0
    if rec["token_times"]:
        rec["t_first"] = rec["token_times"][0]
    if rec["error"] is None and rec["timings"] is None:
        rec["error"] = "stream ended without a final event carrying timings"
    return rec


def stream_and_cancel(port, body, after_tokens, timeout=300.0):
    """A streaming /completion of body whose client goes away after after_tokens tokens (as a user
    who closes the tab). "cancelled", "done" (it ended first) or an error string."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", "/completion", body=json.dumps({**body, "stream": True}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return f"HTTP {resp.status}: {resp.read()[:300].decode(errors='replace')}"
        seen = 0
        while True:
            line = resp.readline()
            if not line:
                return "done"
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: "):])
                if "error" in event:
                    return f"error event: {event['error']}"
                if event.get("stop"):
                    return "done"
                seen += 1
                if seen >= after_tokens:
                    return "cancelled"
    finally:
        conn.close()


def stream_chat(port, body, t0, timeout=900.0, on_tokens=None):
    """The same for a streaming /v1/chat/completions (OpenAI's chunks: choices[0].delta, and
    llama-server's timings in the chunk that ends the answer)."""
    return stream_completion(port, body, t0, timeout=timeout, on_tokens=on_tokens, path="/v1/chat/completions")
