"""Deterministic prompt text: the same seed gives the same prompts on every
machine, in every process and for both builds, so stock and paged see
identical work.

A prompt of N "tokens" is N words from a fixed list. Common English words are
about one token each for real tokenizers, so N is approximate; the reports use
the server's own count (timings.prompt_n + timings.cache_n). The gates use a
short list of their own (GATE_WORDS): the recorded stock md5s depend on it.
"""
import hashlib

GATE_WORDS = ["alpha", "bravo", "cache", "delta", "echo", "forty", "gamma", "hotel", "index", "juliet",
              "kilo", "lima", "metric", "number", "oscar", "paged", "query", "radio", "sierra", "token"]

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at
which but have an they you were her she there been one all we their has would when if
so no will can more other what time up some them into only out new like these two may
first then do any now such my over most also did our made after many where those could
way very through before back where must under work much well long right people should
year good each state world great still small between life same another high old being
place last never three house around point thing part since place water city country
river market garden window letter number paper table morning evening summer winter light
sound music story answer question problem system order power field north south east west
stone metal glass bread apple horse bird tree flower forest mountain valley island ocean
bridge road train ship engine wheel clock machine signal channel memory page block cache
""".split()


def words(count, seed, vocab=WORDS):
    """count pseudo-words drawn from vocab by a 64-bit LCG; seed is an int, or a
    str (hashed with SHA-256), so the text is stable across processes."""
    if isinstance(seed, str):
        seed = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    x = seed
    out = []
    for _ in range(count):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(vocab[(x >> 33) % len(vocab)])
    return " ".join(out)


def gate_words(count, seed):
    """The gates' prompt text (GATE_WORDS)."""
    return words(count, seed, GATE_WORDS)


def shared_prefix(seed, count):
    return words(count, f"{seed}:shared-prefix") if count > 0 else ""


def unique_prompt(seed, wave, index, count):
    # The key includes wave and index so no two requests share a tail.
    return words(count, f"{seed}:wave{wave}-req{index}")
