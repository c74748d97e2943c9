"""Summary statistics: the few the reports need, with explicit behaviour on empty input."""
import math
import statistics


def percentile(values, pct):
    """Linear-interpolated percentile (same as numpy's default); None when empty."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def spread(values):
    """{'median', 'min', 'max', 'n'} of a list of numbers."""
    data = [v for v in values if v is not None]
    if not data:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(data), "min": min(data), "max": max(data), "n": len(data)}


def ratio(num, den):
    """num/den, or None when either is missing or den is zero (never inf/nan in a report)."""
    if num is None or den is None or den == 0:
        return None
    return num / den


def latency_summary(values):
    """p50/p95/p99/max/mean of a latency sample (seconds)."""
    data = [v for v in values if v is not None]
    return {
        "n": len(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": max(data) if data else None,
        "mean": statistics.fmean(data) if data else None,
    }
