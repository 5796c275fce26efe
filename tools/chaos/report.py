"""What a chaos campaign prints and writes: a summary table per (epoch mode, network), the JSON, the recovery plot."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tools.report import percentile
from tools.report import table as render

# Percentiles are nearest-rank: with few trials p99 is the maximum, never an interpolation below it.
PERCENTILES = (50, 99)
# Bins of the recovery-time histogram, shared by every (mode, network) so the bars compare.
HISTOGRAM_BINS = 24
# Exit codes named in the table; anything else is listed by number.
CODE_NAMES = {-9: "kill-9", 0: "0", 1: "1", 75: "75"}


def groups(trials: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for trial in trials:
        grouped.setdefault((trial["mode"], trial["net"]), []).append(trial)
    return grouped


def summarize(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, network): counts, recovery percentiles, exits, the worst surviving slot's exits."""
    rows = []
    for (mode, net), members in groups(trials).items():
        recoveries = [trial["recovery"] for trial in members if trial["converged"]]
        codes: Counter[int] = Counter()
        worst_ratio = 0.0
        for trial in members:
            hit = {slot for fault in trial["faults"] if fault["kind"] in ("kill", "stale") for slot in fault["slots"]}
            twin = any(fault["kind"] == "twin" for fault in trial["faults"])  # two processes per slot: unbounded
            for slot, exits in trial["exits"].items():
                codes.update(exits)
                if int(slot) not in hit and trial["deaths"] and not twin:
                    worst_ratio = max(worst_ratio, exits.count(75) / trial["deaths"])
        row: dict[str, Any] = {
            "mode": mode,
            "net": net,
            "trials": len(members),
            "converged": sum(trial["converged"] for trial in members),
            "faults": dict(Counter(fault["kind"] for trial in members for fault in trial["faults"])),
            "exits": {CODE_NAMES.get(code, str(code)): count for code, count in sorted(codes.items())},
            "survivor_75_per_death_max": round(worst_ratio, 2),
            "violations": sum(len(trial["violations"]) for trial in members),
            "bound": max(trial["bound"] for trial in members),
        }
        for rank in PERCENTILES:
            row[f"p{rank}"] = percentile(recoveries, rank / 100) if recoveries else None
        row["max"] = max(recoveries) if recoveries else None
        rows.append(row)
    return rows


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def table(rows: list[dict[str, Any]]) -> str:
    """The summary as a markdown table (README-ready)."""
    head = [
        "mode", "net", "trials", "converged", "p50", "p99", "max", "bound B", "violations",
        "exits (codexcount)", "survivor 75s/death", "faults",
    ]  # fmt: skip
    cells = []
    for row in rows:
        cells.append(
            [
                row["mode"],
                row["net"],
                str(row["trials"]),
                f"{row['converged']}/{row['trials']}",
                _seconds(row["p50"]),
                _seconds(row["p99"]),
                _seconds(row["max"]),
                _seconds(row["bound"]),
                str(row["violations"]),
                ", ".join(f"{code}x{count}" for code, count in row["exits"].items()) or "-",
                f"≤ {row['survivor_75_per_death_max']}",
                ", ".join(f"{kind}x{count}" for kind, count in sorted(row["faults"].items())),
            ]
        )
    return render(head, cells, aligned=False)


def write_json(
    path: Path,
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    trials: list[dict[str, Any]],
    workers: dict[str, Any] | None = None,
) -> None:
    report: dict[str, Any] = {"settings": settings, "summary": rows, "trials": trials}
    if workers is not None:
        report["workers"] = workers
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")


def worker_line(workers: dict[str, Any]) -> str:
    """The worker-mode summary of a campaign, one line."""
    exits = ", ".join(f"{code}x{count}" for code, count in workers["exits"].items()) or "none"
    return (
        f"workers: {workers['trials']} trials, {workers['started']} workers started in {workers['generations']} "
        f"generations, worker exits {exits} (typed events), {workers['without_exit_event']} without a worker_exited "
        f"event (a killed daemon publishes none; any other the watch missed); {workers['violations']} worker violations"
    )


def plot(path: Path, trials: list[dict[str, Any]]) -> None:
    """CDF of recovery time per (mode, network), B in the legend (non-converged trials keep a CDF below 1), and a
    histogram stacked by (mode, network)."""
    import matplotlib
    import numpy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (cdf, histogram) = plt.subplots(1, 2, figsize=(12, 6))
    grouped = groups(trials)
    everything = [trial["recovery"] for trial in trials if trial["converged"]] or [0.0]
    edges = numpy.linspace(0.0, max(everything) * 1.05 + 0.01, HISTOGRAM_BINS + 1)
    stacks: list[list[float]] = []
    for (mode, net), members in grouped.items():
        recoveries = sorted(trial["recovery"] for trial in members if trial["converged"])
        stacks.append(recoveries)
        label = f"{mode} epochs, {net}: {len(recoveries)}/{len(members)} converged, B = {members[0]['bound']:.1f}s"
        fractions = [(position + 1) / len(members) for position in range(len(recoveries))]
        cdf.step([0.0, *recoveries], [0.0, *fractions], where="post", label=label)
    names = [f"{mode}, {net}" for mode, net in grouped]
    histogram.hist(stacks, bins=edges, stacked=True, label=names)
    cdf.set_xlabel("time from the last fault to every process ready in one epoch (s)")
    cdf.set_ylabel("fraction of trials recovered")
    cdf.set_ylim(0, 1.02)
    cdf.set_xlim(left=0)
    cdf.grid(alpha=0.3)
    cdf.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the axes: no curve hidden
    cdf.set_title("meshd chaos: recovery time (CDF)")
    histogram.set_xlabel("recovery time (s)")
    histogram.set_ylabel("trials")
    histogram.yaxis.set_major_locator(MaxNLocator(integer=True))
    histogram.grid(alpha=0.3)
    histogram.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    histogram.set_title(f"histogram, {len(trials)} trials")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
