"""Buffer sizes that llama.cpp logs while it creates a context.

They come from lines such as (src/llama-kv-cache.cpp, llama-memory-recurrent.cpp,
llama-context.cpp, llama-model.cpp):
    llama_kv_cache:        CPU KV buffer size =     2.00 MiB
    llama_memory_recurrent:        CPU RS buffer size =     0.50 MiB
    sched_reserve:        CPU compute buffer size =     4.01 MiB
    load_tensors:   CPU_Mapped model buffer size =     4.52 MiB
llama-server prints them only at verbosity >= 4 (-lv 4): they are llama-level
INFO messages, which the server's default threshold hides.
The pattern is generic (any '<backend> <kind> buffer size = X MiB'), so a paged
build that logs its pool under another kind name is still picked up.
"""
import re

BUFFER_LINE = re.compile(r"(?P<where>\w+):\s+(?P<backend>\S+)\s+(?P<kind>[A-Za-z_ ]+?) buffer size\s*=\s*"
                         r"(?P<mib>[0-9.]+) MiB")


def buffer_sizes(log_text):
    """{'by_kind': {kind: total MiB}, 'lines': [matching lines]}. Kinds are the
    words before 'buffer size' (KV, RS, compute, output, model...), summed over
    backends and over layers caches (e.g. an SWA model has two KV caches)."""
    by_kind = {}
    lines = []
    for line in log_text.splitlines():
        match = BUFFER_LINE.search(line)
        if not match:
            continue
        kind = match.group("kind").strip()
        by_kind[kind] = by_kind.get(kind, 0.0) + float(match.group("mib"))
        lines.append(line.strip())
    return {"by_kind": by_kind, "lines": lines}
