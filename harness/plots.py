"""PNG plots. matplotlib is imported lazily with the Agg backend: the tools run
headless. Every tool calls require_matplotlib() before its first run, so a
missing matplotlib is found in a second, not after minutes of measuring."""
import os
import subprocess
import sys

from .errors import HarnessError

# Set in the environment of a re-executed tool, so that it never re-executes twice.
REEXEC_MARK = "LLAMA_PAGED_PLOTS_REEXEC"


def require_matplotlib():
    """Returns when matplotlib can be imported. Otherwise re-executes the tool with PYTHON
    (the Makefile's interpreter, Debian's /usr/bin/python3 by default) when that one has it,
    or stops with a message that names the interpreter to use."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    preferred = os.environ.get("PYTHON") or "/usr/bin/python3"
    if not os.environ.get(REEXEC_MARK):
        try:
            has_it = subprocess.run([preferred, "-c", "import matplotlib"], capture_output=True).returncode == 0
        except OSError:
            has_it = False
        if has_it:
            print(f"note: {sys.executable} has no matplotlib; running again with {preferred}", file=sys.stderr)
            os.environ[REEXEC_MARK] = "1"
            os.execv(preferred, [preferred, *sys.argv])
    raise HarnessError(f"matplotlib is missing in {sys.executable}, and the plots need it; run "
                       f"'/usr/bin/python3 {sys.argv[0]} ...' (Debian: apt-get install python3-matplotlib) "
                       f"or set PYTHON to an interpreter that has it (PYTHON={preferred} has not)")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def line_plot(path, title, xlabel, ylabel, series, log2_x=False, hline=None):
    """series: list of (label, xs, ys, (lower_errs, upper_errs) or None)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, xs, ys, errs in series:
        pts = [(x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if y is not None]
        if not pts:
            continue
        px = [p[0] for p in pts]
        py = [p[1] for p in pts]
        yerr = None
        if errs:
            yerr = [[errs[0][p[2]] or 0 for p in pts], [errs[1][p[2]] or 0 for p in pts]]
        ax.errorbar(px, py, yerr=yerr, marker="o", capsize=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    if log2_x:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for _, xs, _, _ in series for x in xs})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
    _finish(plt, fig, ax, path, title, xlabel, ylabel)


def cdf_plot(path, title, xlabel, samples):
    """samples: list of (label, values). Empirical CDF, one step line per label.
    The x axis is logarithmic when every value is positive: a stall can be a
    hundred times the median gap, and on a linear axis the tail is invisible."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_values = [v for _, values in samples for v in values if v is not None]
    if all_values and min(all_values) > 0:
        ax.set_xscale("log")
    for label, values in samples:
        data = sorted(v for v in values if v is not None)
        if not data:
            continue
        ys = [(i + 1) / len(data) for i in range(len(data))]
        ax.step(data, ys, where="post", label=f"{label} (n={len(data)})")
    ax.set_ylim(0, 1.02)
    _finish(plt, fig, ax, path, title, xlabel, "fraction of samples <= x")


def _finish(plt, fig, ax, path, title, xlabel, ylabel):
    """Titles, grid, legend, and the PNG written."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no data: no empty-legend warning
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
