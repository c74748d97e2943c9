"""Paged replicas behind HAProxy (issue 27, bench/scale.py, deploy/haproxy/llama-paged.cfg).

Requests that share a system prompt reach the replica whose prefix cache holds it; round-robin
spreads each system prompt over every replica and each computes it again. A replica stopped in the
middle of a run is taken out by the proxy's health check: every request ends, none hangs. Bad
input (a proxy port already taken, a replica that does not start, no haproxy) is a clear error
and leaves no process behind. Skipped, saying so, only where haproxy is not installed (CI installs
it)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, bin_dir
from harness import proxy
from harness.errors import HarnessError
from verify import gate

pytestmark = [pytest.mark.build,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="haproxy is not installed (apt-get install haproxy); .ci/run installs it")]

KNOBS = "LLAMA_SERVING=1"


def workload(tmp_path, n_requests=12, rate=4.0):
    """3 system prompts of ~200 tokens, chats over them, user i on system prompt i mod 3."""
    path = tmp_path / "scale-small.json"
    path.write_text(json.dumps({
        "description": "small scale-out workload for the tests", "chat": True, "n_slots": 2, "ctx": 4096, "seed": 5,
        "server_args": ["-kvu"], "shared_prefix_tokens": 200, "n_shared_prefixes": 3, "prompt_tokens": 20,
        "n_predict": 8,
        "waves": [{"name": "users", "n_requests": n_requests, "arrival": {"type": "poisson", "rate": rate, "seed": 5}}],
    }))
    return path


def scale(tmp_path, *extra, model="gate-llama", timeout=600):
    """bench/scale.py in a session of its own: on a timeout the whole group goes (its replicas and
    proxy too), and the test fails naming the timeout."""
    cmd = [sys.executable, str(ROOT / "bench" / "scale.py"), "--model", str(gate.MODELS_DIR / f"{model}.gguf"),
           "--paged-bin", str(bin_dir("paged")), "--stock-bin", str(bin_dir("stock")), "--knobs", KNOBS,
           "--out", str(tmp_path / "out"), *map(str, extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench/scale.py did not end in {timeout} s:\n{out[-2000:]}{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def servers_and_proxies():
    """PIDs of the llama-server and haproxy processes on the machine."""
    out = subprocess.run(["pgrep", "-x", "llama-server|haproxy"], capture_output=True, text=True).stdout
    return set(out.split())


@pytest.fixture
def leaves_nothing():
    """Every replica and proxy a test started is gone when it ends: stopped by PID, none orphaned."""
    before = servers_and_proxies()
    yield
    left = servers_and_proxies() - before
    assert not left, f"processes left behind: {left}"


def test_the_shipped_configuration_is_valid_and_rendered_for_loopback(tmp_path):
    check = subprocess.run(["haproxy", "-c", "-f", str(proxy.CONFIG)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = proxy.render([9001, 9002, 9003], 9000, "affinity")
    assert "bind 127.0.0.1:9000" in text and text.count("server replica3 127.0.0.1:9003") == 2
    assert "balance hash var(txn.prefix)" in text
    bounded = proxy.render([9001, 9002], 9000, "affinity-bounded")
    assert "balance hash var(txn.prefix)\n    hash-balance-factor 125\n" in bounded
    rr = proxy.render([9001, 9002], 9000, "roundrobin")
    assert "balance roundrobin" in rr and "balance hash" not in rr and "balance leastconn" in rr
    for policy in proxy.POLICIES:
        path = tmp_path / f"rendered-{policy}.cfg"
        path.write_text(proxy.render([9001, 9002, 9003], 9000, policy))
        check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, policy + ": " + check.stdout + check.stderr


def test_prefix_affinity_computes_each_system_prompt_on_one_replica(tmp_path, leaves_nothing, report):
    proc = scale(tmp_path, "--workload", workload(tmp_path), "--replicas", 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "scale-scale-small.json").read_text())
    runs = {r["policy"]: r["metrics"]["overall"] for r in result["runs"]}
    a, rr = runs["affinity"], runs["roundrobin"]
    report(f"HAProxy, 2 replicas of gate-llama ({KNOBS}), 12 chats over 3 system prompts of ~200 tokens: prompt tokens "
           f"computed {a['prompt_tokens_computed']} with affinity, {rr['prompt_tokens_computed']} round-robin; reused/shared "
           f"{a['prompt_tokens_reused'] / a['prompt_tokens_shared']:.3f} / {rr['prompt_tokens_reused'] / rr['prompt_tokens_shared']:.3f}")
    assert a["n_errors"] == 0 and rr["n_errors"] == 0
    # each system prompt once (3 x ~200 tokens) and the tails, against up to twice that
    assert a["prompt_tokens_computed"] < rr["prompt_tokens_computed"], (a, rr)
    assert a["prompt_tokens_reused"] >= 0.9 * a["prompt_tokens_shared"], a
    assert "affinity/round-robin" in (tmp_path / "out" / "scale-scale-small.md").read_text()


def test_a_replica_that_dies_midway_is_taken_out_and_nothing_hangs(tmp_path, leaves_nothing, report):
    proc = scale(tmp_path, "--workload", workload(tmp_path, n_requests=24, rate=2.0), "--replicas", 2,
                 "--policies", "affinity", "--stop-one-after", 3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "scale-scale-small.json").read_text())
    stopped = next(r for r in result["runs"] if r["stopped_replica_after_s"])
    o = stopped["metrics"]["overall"]
    report(f"HAProxy, 2 replicas of gate-llama, replica 1 killed {stopped['stopped_replica_after_s']:.1f} s into 24 chats: "
           f"{o['n_requests'] - o['n_errors']} served, {o['n_errors']} failed ({stopped['errors'][:2]}); of the "
           f"{stopped['sent_after_taken_out']} sent 4 s later {stopped['failed_after_taken_out']} failed; run {stopped['wall_s']:.1f} s")
    assert stopped["per_replica"][0] is None and stopped["per_replica"][1] is not None
    # every request ended; only what the dead replica held may fail (its 2 slots and what queued
    # for them), and once the health check took it out every request is served by the other
    assert o["n_requests"] == 24 and o["n_errors"] <= 4, stopped["errors"]
    assert stopped["sent_after_taken_out"] >= 3 and stopped["failed_after_taken_out"] == 0, stopped["errors"]


def test_a_proxy_port_already_taken_is_a_clear_error(tmp_path, leaves_nothing):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        proc = scale(tmp_path, "--workload", workload(tmp_path), "--proxy-port", port, "--policies", "affinity")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"the proxy's port {port} on 127.0.0.1 is already taken" in proc.stderr


def test_a_replica_that_does_not_start_is_a_clear_error(tmp_path, leaves_nothing):
    proc = scale(tmp_path, "--workload", workload(tmp_path), "--policies", "affinity", "--server-args=--no-such-flag")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "replica 1 llama-server exited" in proc.stderr and "log kept at" in proc.stderr


def test_no_haproxy_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(HarnessError, match="haproxy not found on PATH"):
        proxy.haproxy_binary()
