"""Server gate: stock and paged llama-server, several parallel slots, unified
and per-slot KV, the same request schedule at temperature 0; the paged server
with no knob set must answer exactly what stock answers."""
import sys

import pytest

from conftest import ROOT, bin_dir

sys.path.insert(0, str(ROOT / "verify"))
import gate  # noqa: E402
from server import Server, ServerError, free_port  # noqa: E402

N_SLOTS = 4
N_PREDICT = 24
# The top log-probabilities of every generated token are compared too: a greedy token survives
# most last-bit changes, its log-probability (printed to round-trip) does not.
N_PROBS = 3
MODELS = gate.GATE_MODELS


def complete_together(srv, prompts):
    """One request carrying several prompts: the server admits them as parallel tasks in the
    same step, so the batches are the same in every run. Separate HTTP clients would race, and
    on the CPU a different batch shape can change the kernel and so the low bits."""
    results = srv.post("/completion", {"prompt": prompts, "n_predict": N_PREDICT, "temperature": 0,
                                       "seed": 1, "cache_prompt": True, "n_probs": N_PROBS})
    return sorted(results, key=lambda r: r["index"])


def answer(result):
    """What must match exactly: the text and the top log-probabilities of each token."""
    probs = [(t["token"], t["logprob"], [(c["token"], c["logprob"]) for c in t["top_logprobs"]])
             for t in result["completion_probabilities"]]
    return f"{result['content']!r} {probs!r}"


def schedule(srv):
    """The fixed schedule; returns {case: [content, ...]}."""
    shared = gate._words(120, 7)
    different = [gate._words(40 + 25 * i, 10 + i) for i in range(N_SLOTS)]
    out = {}
    out["single"] = [answer(srv.complete("Once upon a time", N_PREDICT, n_probs=N_PROBS))]
    out["identical"] = [answer(r) for r in complete_together(srv, [shared] * N_SLOTS)]
    out["different"] = [answer(r) for r in complete_together(srv, different)]
    # Second wave: the first wave's prompts again, so slots reuse cached prefixes.
    second = complete_together(srv, different)
    out["second-wave"] = [answer(r) for r in second]
    out["second-wave-reused"] = [str(r["timings"]["cache_n"] > 0) for r in second]
    return out


def serve_and_run(config, model, kv_unified, tmp_path):
    args = ["-np", str(N_SLOTS), "-c", str(N_SLOTS * 1024), "-t", str(gate.THREADS), "-b", "256", "-ub", "64",
            "--metrics"]
    if kv_unified:
        args.append("-kvu")
    log = tmp_path / f"{config}-{model}-{'kvu' if kv_unified else 'split'}.log"
    with Server(bin_dir(config), gate.MODELS_DIR / f"{model}.gguf", args, log_path=log) as srv:
        return schedule(srv), srv.command()


@pytest.mark.parametrize("kv_unified", [False, True], ids=["per-slot-kv", "unified-kv"])
@pytest.mark.parametrize("model", MODELS)
def test_paged_server_answers_like_stock(model, kv_unified, tmp_path):
    stock, stock_cmd = serve_and_run("stock", model, kv_unified, tmp_path)
    paged, paged_cmd = serve_and_run("paged", model, kv_unified, tmp_path)
    for case in stock:
        for i, (s, p) in enumerate(zip(stock[case], paged[case])):
            assert s == p, (f"{model} {'unified' if kv_unified else 'per-slot'} KV, case {case} request {i}: "
                            f"paged differs from stock\n  stock: {s!r}\n  paged: {p!r}\n"
                            f"  stock server: {' '.join(stock_cmd)}\n  paged server: {' '.join(paged_cmd)}\n"
                            f"  logs in {tmp_path}")
    assert all(len(c) > 0 for c in stock["single"])
    assert stock["second-wave-reused"] == ["True"] * N_SLOTS, "the second wave should reuse the cached prompts"


@pytest.mark.parametrize("config", ["stock", "paged"])
def test_concurrent_clients_are_all_served(config, tmp_path):
    """N separate clients at once: batching depends on arrival timing, so no exact comparison
    here (see complete_together); every request must still be answered in full."""
    prompts = [gate._words(30 + 10 * i, 20 + i) for i in range(2 * N_SLOTS)]
    with Server(bin_dir(config), gate.MODELS_DIR / "gate-qwen35.gguf",
                ["-np", str(N_SLOTS), "-c", str(N_SLOTS * 1024), "-t", "2"], log_path=tmp_path / "log") as srv:
        results = srv.complete_concurrently(prompts, N_PREDICT)
    assert [r["timings"]["predicted_n"] for r in results] == [N_PREDICT] * len(prompts)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ServerError, match="does not exist"):
        with Server(bin_dir("paged"), tmp_path / "nope.gguf"):
            pass


def test_port_taken_is_a_clear_error():
    import socket
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(ServerError, match="already taken"):
            with Server(bin_dir("paged"), gate.MODELS_DIR / "gate-llama.gguf", port=port):
                pass


def test_server_that_dies_is_reported_and_stopped(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(ServerError, match="exited"):
        with Server(bin_dir("paged"), bad, log_path=tmp_path / "bad.log"):
            pass
    assert (tmp_path / "bad.log").exists(), "the log of a failed start is kept"
