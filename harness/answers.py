"""Two greedy answers to the same request, computed with another split of the work (cells cached
or placed elsewhere, a prompt batched with other slots' tokens), compared token by token within
the order-of-sums tolerance of verify/gate. Requests must ask for "n_probs": 2."""

from verify import gate


def answer(result):
    """[(token, logprob, {candidate: logprob of the two most likely})] of each generated token."""
    return [(t["id"], t["logprob"], {c["id"]: c["logprob"] for c in t["top_logprobs"]})
            for t in result["completion_probabilities"]]


def compare(model, cold, warm, what="the answer with cached blocks"):
    """(first differing token or None, largest logprob difference before it). Every token before
    the first difference must agree within the logprob tolerance, and the first difference must be
    a near tie in the cold run: the warm token is the cold run's runner-up, within the tolerance of
    its best. After it the two texts go their own ways and are not compared; without one, both
    answers must have the same length."""
    a, b = answer(cold), answer(warm)
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x[0] != y[0]), None)
    agree = a[:first] if first is not None else a
    diff = max((abs(x[1] - y[1]) for x, y in zip(agree, b)), default=0.0)
    limit = gate.order_of_sums_logprob_max(model)  # the server gate's, for a change of the order of sums
    where = (f"{model}: {what} differs from the cold one: first difference at token {first}, "
             f"largest logprob difference before it {diff:.3g}\n  cold: {cold['content']!r}\n  warm: {warm['content']!r}")
    assert diff <= limit, where
    # the whole answer: one that stops early, the tokens agreeing up to there, is a difference too
    assert first is not None or len(a) == len(b), (
        f"{model}: {what} has {len(b)} tokens, the cold one {len(a)}, the same up to there\n"
        f"  cold: {cold['content']!r}\n  warm: {warm['content']!r}")
    if first is not None:
        cold_tok, cold_lp, cold_top = a[first]
        warm_tok = b[first][0]
        assert warm_tok in cold_top and cold_lp - cold_top[warm_tok] <= 2 * limit, (
            f"{where}\n  not a near tie: cold {cold_tok} at {cold_lp:.4f}, warm {warm_tok} "
            f"at {cold_top.get(warm_tok, 'below the top 2')} in the cold run")
    return first, diff
