"""Resident memory of a process from /proc/<pid>/status and /proc/<pid>/smaps (Linux), in KiB."""


def vm_status(pid):
    """{'VmRSS': kib, 'VmHWM': kib}: the current resident set and its high-water mark."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])  # "  12345 kB"
    return out


def paged_resident(pid):
    """(resident KiB, number of mappings) of the paged cache buffers (LLAMA_KV_PAGED): the
    mappings ggml_backend_cpu_paged_buffer_type reserves without swap (VmFlags "nr") and for base
    pages only ("nh"), and does not keep out of core dumps (AddressSanitizer's shadow is
    "nr nh dd"). (0, 0) in a process without them, a stock build's."""
    total = n = rss = 0
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("VmFlags:"):  # the last field of a mapping
                flags = line.split()[1:]
                if "nr" in flags and "nh" in flags and "dd" not in flags:
                    total += rss
                    n += 1
                rss = 0
    return total, n
