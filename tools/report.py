"""What the tools print, once: markdown tables, milliseconds, the nearest-rank percentile of the simulation, and the
load average printed beside every figure."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from meshd.sim.campaign import percentile as _sorted_percentile


def percentile(values: Iterable[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99 for p99): with fewer than 100 values, p99 is the maximum."""
    return _sorted_percentile(sorted(values), fraction)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, aligned: bool = True) -> str:
    """A markdown table; ``aligned`` pads every column to its widest cell (for a terminal), else cells as they are."""
    if not aligned:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def load() -> str:
    """The load average now, printed beside every figure: the machine is shared, so figures are upper bounds."""
    return "/".join(f"{value:.1f}" for value in os.getloadavg())
