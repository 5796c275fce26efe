"""The simulation part of the benchmark: many seeds of ``meshd.sim`` per cluster size, as one table.

The figures are virtual seconds, so they do not depend on the machine's load; only the wall time does.
"""

from __future__ import annotations

import time

from meshd.sim.campaign import Summary, default_jobs, run_seeds
from tools.bench.common import progress, table

# Seeds per size in a full run, and the sizes; --quick runs far fewer.
SEEDS = 10_000
SIZES = (3, 8, 16)
MODE = "mixed"  # even seeds with fixed epochs, odd seeds self-minted


def bench_sim(sizes: list[int], seeds: int, jobs: int = 0) -> list[tuple[Summary, float]]:
    """One campaign per size; each with the wall seconds it took."""
    results = []
    for size in sizes:
        progress(f"simulation: {seeds} seeds of {size} processes")
        summary = Summary(size, MODE, None)
        started = time.monotonic()
        for outcome in run_seeds(range(seeds), size, MODE, None, jobs or default_jobs()):
            summary.add(outcome)
        results.append((summary, time.monotonic() - started))
    return results


def report_sim(results: list[tuple[Summary, float]]) -> str:
    rows = []
    for summary, wall in results:
        figures = summary.time_figures() or {}
        processes = sum(summary.exits_per_process.values())
        fenced = sum(count * n for count, n in summary.exits_per_process.items())
        rows.append(
            [
                str(summary.size),
                str(summary.seeds),
                f"{summary.converged} ({100.0 * summary.converged / max(1, summary.seeds):.2f} %)",
                *(f"{figures[name]:.3f} s" if name in figures else "-" for name in ("p50", "p99", "max")),
                f"{summary.bound:.1f} s",
                f"{fenced / max(1, processes):.2f} / {max(summary.exits_per_process, default=0)}",
                " ".join(map(str, summary.failing_seeds[:10])) or "none",
                f"{wall:.0f} s",
            ]
        )
    header = [
        "N",
        "seeds",
        "converged",
        "p50",
        "p99",
        "max",
        "bound B",
        "exits 75 per process: mean / max",
        "failing seeds",
        "wall",
    ]
    title = (
        "## Simulation (python -m meshd.sim): time from the last fault to all ready in one generation, virtual;"
        " target 100 % of seeds"
    )
    return title + "\n\n" + table(header, rows)
