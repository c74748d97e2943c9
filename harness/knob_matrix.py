"""The knob-combination matrix of the server gate (tests/gates/test_server_gate.py).

Every pair of the series' runtime knobs that docs/KNOBS.md says compose runs together in one of
COMBINED (all the knobs at once, so two runs cover every pair; a knob on by default, DEFAULT_ON, is
on in every one); every pair it says is refused is in REFUSED_PAIRS, and the server must stop naming
both. A new knob goes in here, or
tests/orchestrator/test_knob_matrix.py fails."""

from . import trailers

COMBINED = {
    "with-prefix-cache": ("LLAMA_GDN_INPLACE", "LLAMA_GDN_IDS", "LLAMA_GDN_SSM_OUT_2D", "LLAMA_KV_PAGED",
                          "LLAMA_KV_MAX_MIB", "LLAMA_PREFILL_BUDGET", "LLAMA_DECODE_TARGET_MS", "LLAMA_PREFIX_CACHE",
                          "LLAMA_SERVING"),
    "with-memory-cap": ("LLAMA_GDN_INPLACE", "LLAMA_GDN_IDS", "LLAMA_GDN_SSM_OUT_2D", "LLAMA_KV_PAGED",
                        "LLAMA_KV_MAX_MIB", "LLAMA_PREFILL_BUDGET", "LLAMA_DECODE_TARGET_MS"),
}
# Knobs on by default: every combination runs with them on, as users do (the gate's setting of such a
# knob is the one that turns it off, stock's behaviour, which is not what composes)
DEFAULT_ON = ("LLAMA_REQUEUE_DEFERRED",)
# none since paged/0061 (the prefix cache inside LLAMA_KV_MAX_MIB); a pair the series refuses goes here
REFUSED_PAIRS = []


def knob_name(knob):
    """LLAMA_KV_MAX_MIB of the knob whose settings are LLAMA_KV_MAX_MIB=4096 LLAMA_KV_PAGED=1."""
    return knob.name.split("=")[0]


def env_of(names, knobs=None):
    """The gate's settings of the named knobs, together."""
    knobs = trailers.runtime_knobs() if knobs is None else knobs
    env = {}
    for name in names:
        env.update(next(k for k in knobs if knob_name(k) == name).env)
    return env


def uncovered_pairs(knobs):
    """Pairs of knobs neither run together nor refused, or both: what the matrix gets wrong."""
    names = sorted({knob_name(k) for k in knobs})
    wrong = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            together = any((a in c or a in DEFAULT_ON) and (b in c or b in DEFAULT_ON) for c in COMBINED.values())
            refused = (a, b) in REFUSED_PAIRS or (b, a) in REFUSED_PAIRS
            if together == refused:
                wrong.append((a, b, "both run together and refused" if together else "neither run together nor refused"))
    return wrong
