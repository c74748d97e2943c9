"""Markdown formatting of numbers and tables."""


def num(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def with_range(summary, digits=2):
    """'median [min-max]' of a stats.spread() dict."""
    if summary["median"] is None:
        return "n/a"
    return f"{summary['median']:.{digits}f} [{summary['min']:.{digits}f}-{summary['max']:.{digits}f}]"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
