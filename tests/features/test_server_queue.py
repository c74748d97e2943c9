"""Deferred requests in llama-server (LLAMA_REQUEUE_DEFERRED, paged 0027).

A request that cannot run yet (every slot busy, or an action on a busy slot such as an erase) is
deferred. Stock moves one deferred request back when a slot is released: if that one still
cannot run (an erase of a slot that is still busy), it is deferred again and the release is
spent, so a request that could take the free slot waits for the next release, which may never
come: the request hangs with every slot idle. The soak of test_kv_paged.py met this about once a
run (one client out of six waiting 300 s). With the patch a released slot requeues every deferred
request; LLAMA_REQUEUE_DEFERRED=0 keeps stock's behaviour, which the first test reproduces so
that the second one is known to test something."""
import http.client
import json
import threading
import time

import pytest

from conftest import bin_dir
from harness import builds
from harness.prompts import gate_words
from harness.server import LlamaServer, server_refusal
from verify import gate

pytestmark = pytest.mark.build

KNOB = "LLAMA_REQUEUE_DEFERRED"
MODEL = "gate-llama"
SLOT_CTX = 8192  # the model's training context; a stream lasts until its slot is full: far longer than a test
WAIT_S = 30.0     # for something that must happen (a request that can run, runs at once)
QUIET_S = 4.0     # for something that must not happen (a deferred request that stock leaves)


def open_stream(port, slot, seed):
    """A streaming /completion pinned to a slot, as long as its context allows; returns once its
    first token arrived (the slot is busy). Closing it releases the slot."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    conn.request("POST", "/completion", body=json.dumps({
        "prompt": gate_words(20, seed), "n_predict": SLOT_CTX, "ignore_eos": True, "stream": True,
        "temperature": 0, "id_slot": slot}), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    while not resp.readline().startswith(b"data: "):
        pass
    return conn, resp


def close_stream(stream):
    conn, resp = stream
    resp.close()
    conn.close()


class Request(threading.Thread):
    """One request in the background; .result is its answer or the exception it raised."""

    def __init__(self, srv, path, body):
        super().__init__(daemon=True)
        self.srv, self.path, self.body = srv, path, body
        self.result = None

    def run(self):
        try:
            self.result = self.srv.post(self.path, self.body, timeout=120)
        except Exception as e:  # noqa: BLE001 - the test reads it
            self.result = e

    def done(self):
        return not self.is_alive()


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def deferred(srv):
    return srv.metrics()["requests_deferred"]


def defer_two_erases_and_a_completion(srv):
    """Both slots stream; an erase of slot 0 twice and a completion are deferred, in that order.
    Returns (streams, erases, completion)."""
    streams = [open_stream(srv.port, slot, 100 + slot) for slot in (0, 1)]
    erases = []
    for _ in range(2):
        erases.append(Request(srv, "/slots/0?action=erase", {}))
        erases[-1].start()
        assert wait_for(lambda: deferred(srv) == len(erases) or erases[-1].done(), WAIT_S), srv.metrics()
        assert not erases[-1].done(), erases[-1].result
    completion = Request(srv, "/completion", {"prompt": gate_words(30, 7), "n_predict": 4, "temperature": 0})
    completion.start()
    assert wait_for(lambda: deferred(srv) == 3 or completion.done(), WAIT_S), srv.metrics()
    assert not completion.done(), completion.result
    return streams, erases, completion


def serve(knobs, tmp_path):
    args = ["-np", "2", "-c", str(2 * SLOT_CTX), "-t", str(gate.THREADS), "--metrics", "--slot-save-path", str(tmp_path)]
    return LlamaServer(bin_dir("paged"), gate.MODELS_DIR / f"{MODEL}.gguf", args,
                       env=builds.run_env("paged", knobs), log_path=tmp_path / "server.log")


def test_stock_leaves_a_request_deferred_with_every_slot_idle(tmp_path, report):
    with serve({KNOB: "0"}, tmp_path) as srv:
        streams, erases, completion = defer_two_erases_and_a_completion(srv)
        close_stream(streams[1])  # slot 1 is free: stock pops the first erase, which waits on slot 0
        time.sleep(QUIET_S)
        assert not completion.done(), "the completion ran at once: stock's behaviour is not reproduced"
        close_stream(streams[0])  # stock pops the second erase; the completion and the first erase stay
        assert wait_for(lambda: erases[1].done(), WAIT_S)
        time.sleep(QUIET_S)
        metrics = srv.metrics()
        stuck = not completion.done() and not erases[0].done()
        report(f"{KNOB}=0 (stock), {MODEL} -np 2: after both slots were released, "
               f"{metrics['requests_deferred']:.0f} requests deferred, {metrics['requests_processing']:.0f} processing")
        assert stuck and metrics["requests_deferred"] == 2 and metrics["requests_processing"] == 0, metrics


@pytest.mark.parametrize("knobs", [{}, {KNOB: "1"}], ids=["default", "knob-1"])
def test_a_released_slot_requeues_every_deferred_request(knobs, tmp_path, report):
    with serve(knobs, tmp_path) as srv:
        streams, erases, completion = defer_two_erases_and_a_completion(srv)
        released = time.monotonic()
        close_stream(streams[1])
        assert wait_for(completion.done, WAIT_S), "the completion was not run on the free slot"
        took = time.monotonic() - released
        assert isinstance(completion.result, dict) and completion.result["timings"]["predicted_n"] == 4, completion.result
        # the erases still wait for slot 0, which streams on
        assert not any(e.done() for e in erases) and deferred(srv) == 2, srv.metrics()
        close_stream(streams[0])
        assert wait_for(lambda: all(e.done() for e in erases), WAIT_S), srv.metrics()
        for e in erases:
            assert isinstance(e.result, dict) and e.result["id_slot"] == 0, e.result
        metrics = srv.metrics()
        assert metrics["requests_deferred"] == 0, metrics
        after = srv.complete("the server still serves", 4)
        assert after["timings"]["predicted_n"] == 4
    report(f"{KNOB} {knobs or 'unset'}, {MODEL} -np 2: the deferred completion ran {took:.2f} s after slot 1 "
           f"was released, while slot 0 still streamed; both erases ran when slot 0 was released")


@pytest.mark.parametrize("value", ["2", "yes", "", "-1"])
def test_a_bad_value_stops_the_server_naming_the_knob(value):
    out = server_refusal(bin_dir("paged"), gate.MODELS_DIR / f"{MODEL}.gguf", {KNOB: value}, threads=gate.THREADS)
    assert f"invalid value '{value}' for {KNOB}: expected 1" in out


SLEEP_CASES = [("stock", {}), ("paged", {}), ("paged", {KNOB: "0"}),
               ("paged", {"LLAMA_PREFIX_CACHE": "1", "LLAMA_KV_PAGED": "1"})]


@pytest.mark.parametrize("config,knobs", SLEEP_CASES, ids=["stock", "paged-no-knob", "paged-requeue-0", "paged-cache"])
def test_a_server_that_slept_answers_the_next_request(config, knobs, tmp_path):
    """--sleep-idle-seconds: the server unloads the model when idle and loads it again for the next
    request. The wake runs load_model() inside the task queue's loop with the queue's lock held;
    paged 0027 set its knob there under that same lock, and the server hung for ever (a futex, with
    or without the knob; SIGTERM did not stop it). Stock answers at once."""
    args = ["-np", "2", "-c", "4096", "-t", str(gate.THREADS), "--sleep-idle-seconds", "1"]
    if knobs.get("LLAMA_PREFIX_CACHE"):
        args.append("-kvu")
    srv = LlamaServer(bin_dir(config), gate.MODELS_DIR / f"{MODEL}.gguf", args, env=builds.run_env(config, knobs),
                      log_path=tmp_path / "sleep.log", label=f"{config} sleep")
    with srv:
        before = srv.complete(gate_words(40, 3), 8)
        deadline = time.monotonic() + WAIT_S
        while "entering sleeping state" not in srv.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the server never went to sleep"
            time.sleep(0.2)
        woken = Request(srv, "/completion", {"prompt": gate_words(40, 3), "n_predict": 8, "temperature": 0,
                                             "seed": 1, "cache_prompt": True})
        woken.start()
        woken.join(WAIT_S)
        assert not woken.is_alive(), f"{config} {knobs}: no answer {WAIT_S:.0f} s after waking from sleep"
        assert not isinstance(woken.result, Exception), woken.result
        assert woken.result["content"] == before["content"]
        assert "exiting sleeping state" in srv.log_path.read_text(errors="replace")


# (config, knobs, a line the knob adds to /metrics)
METRICS_SLEEP_CASES = [("stock", {}, None), ("paged", {}, None), ("paged", {"LLAMA_KV_PAGED": "1"}, "kv_cache_bytes"),
                       ("paged", {"LLAMA_DECODE_TARGET_MS": "1000"}, "step_cost_prompt_token_ms"),
                       ("paged", {"LLAMA_PREFIX_CACHE": "1", "LLAMA_KV_PAGED": "1"}, "prefix_cache_blocks")]


@pytest.mark.parametrize("config,knobs,series_line", METRICS_SLEEP_CASES,
                         ids=["stock", "paged-no-knob", "paged-kv", "paged-target", "paged-cache"])
def test_metrics_while_asleep_are_those_before_it(config, knobs, series_line, tmp_path):
    """Upstream's contract (tools/server/tests/unit/test_sleep.py): while the server sleeps, /metrics
    is the snapshot taken on entering sleep, a scrape after the buckets were reset reads the same.
    The series' lines (kv_cache_*, steps_*, step_cost_*, prefix_cache_*) were left out of that
    snapshot: a scraper saw them vanish while the server slept."""
    args = ["-np", "2", "-c", "4096", "-t", str(gate.THREADS), "--sleep-idle-seconds", "1", "--metrics"]
    if knobs.get("LLAMA_PREFIX_CACHE"):
        args.append("-kvu")
    srv = LlamaServer(bin_dir(config), gate.MODELS_DIR / f"{MODEL}.gguf", args, env=builds.run_env(config, knobs),
                      log_path=tmp_path / "sleep.log", label=f"{config} sleep metrics")
    with srv:
        srv.complete(gate_words(40, 3), 4)
        srv.metrics()  # resets the throughput buckets, as the snapshot on entering sleep does
        awake = srv.metrics()
        deadline = time.monotonic() + WAIT_S
        while "entering sleeping state" not in srv.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the server never went to sleep"
            time.sleep(0.2)
        asleep = srv.metrics()
        assert "exiting sleeping state" not in srv.log_path.read_text(errors="replace"), "a scrape woke the server"
    missing = sorted(set(awake) - set(asleep))
    assert not missing, f"{config} {knobs}: /metrics lost {missing} while asleep"
    changed = {k: (awake[k], asleep[k]) for k in awake if asleep.get(k) != awake[k]}
    assert not changed, f"{config} {knobs}: /metrics changed while asleep (awake, asleep): {changed}"
    if series_line:
        assert series_line in awake, f"{knobs}: no {series_line} in /metrics: {sorted(awake)}"
