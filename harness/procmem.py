"""Resident memory of a process from /proc/<pid>/status (Linux), in KiB."""


def vm_status(pid):
    """{'VmRSS': kib, 'VmHWM': kib}: the current resident set and its high-water mark."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])  # "  12345 kB"
    return out
