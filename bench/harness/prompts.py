"""Deterministic prompt text: the same seed gives the same prompts on every
machine and for both builds, so stock and paged see identical work.

A prompt of N "tokens" is N words from a fixed list. Common English words are
about one token each for real tokenizers, so N is approximate; the reports use
the server's own count (timings.prompt_n + timings.cache_n).
"""
import random

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


def words(seed, key, count):
    """count words from a generator seeded by (seed, key); str seeds are hashed
    with SHA-512 by random.Random, so this is stable across processes."""
    rng = random.Random(f"{seed}:{key}")
    return " ".join(rng.choice(WORDS) for _ in range(count))


def shared_prefix(seed, count):
    return words(seed, "shared-prefix", count) if count > 0 else ""


def unique_prompt(seed, wave, index, count):
    # The key includes wave and index so no two requests share a tail.
    return words(seed, f"wave{wave}-req{index}", count)
