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
    extra: dict[str, Any] | None = None,
) -> None:
    report: dict[str, Any] = {"settings": settings, "summary": rows, "trials": trials}
    if workers is not None:
        report["workers"] = workers
    report.update(extra or {})
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
        _cdf(cdf, recoveries, len(members), label)
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


# ----- --worker bytewax: meshd side by side with the baseline (bytewax restarted process by process)

MESHD_ROW, BASELINE_ROW = "meshd", "baseline (restart each)"


def _recovery_row(name: str, recoveries: list[float], trials: int, limit: str) -> dict[str, Any]:
    return {
        "setup": name,
        "trials": trials,
        "recovered": len(recoveries),
        "wedged": trials - len(recoveries),
        "median": percentile(recoveries, 0.5) if recoveries else None,
        "p90": percentile(recoveries, 0.9) if recoveries else None,
        "max": max(recoveries) if recoveries else None,
        "limit": limit,
        "recoveries": sorted(recoveries),
    }


def meshd_recovered(trial: dict[str, Any]) -> bool:
    """A meshd trial with the bytewax job recovered: converged, no violation, a complete window again in time."""
    return bool(trial["converged"] and not trial["violations"] and trial.get("progress") is not None)


def comparison_rows(meshd: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows "meshd" and "baseline (restart each)": recovery = the last fault's end to a complete window again."""
    mine = [trial["progress"] for trial in meshd if meshd_recovered(trial)]
    limit = f"B + {meshd[0]['startup']:.0f}s" if meshd else "-"
    theirs = [record["recovery"] for record in baseline if record["recovered"]]
    limits = f"{baseline[0]['limit']:.0f}s" if baseline else "-"
    rows = [
        _recovery_row(MESHD_ROW, mine, len(meshd), limit),
        _recovery_row(BASELINE_ROW, theirs, len(baseline), limits),
    ]
    rows[0]["limit_s"] = max((trial["bound"] + trial["startup"] for trial in meshd), default=None)
    rows[1]["limit_s"] = baseline[0]["limit"] if baseline else None
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    head = ["setup", "trials", "recovered", "wedged", "median", "p90", "max", "limit"]
    cells = []
    for row in rows:
        seconds = [_seconds(row["median"]), _seconds(row["p90"]), _seconds(row["max"])]
        cells.append(
            [row["setup"], str(row["trials"]), str(row["recovered"]), str(row["wedged"]), *seconds, row["limit"]]
        )
    return render(head, cells, aligned=False)


def _cdf(axes: Any, recoveries: list[float], total: int, label: str, until: float | None = None) -> None:
    """One step CDF of recovery times; trials that never recovered keep it below 1 (drawn on to ``until``)."""
    recoveries = sorted(recoveries)
    fractions = [(position + 1) / total for position in range(len(recoveries))] if total else []
    xs, ys = [0.0, *recoveries], [0.0, *fractions]
    if until is not None and until > xs[-1]:
        xs, ys = [*xs, until], [*ys, ys[-1]]
    axes.step(xs, ys, where="post", label=label)


def comparison_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """The recovery-time CDF of meshd and of the baseline, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for row in rows:
        label = f"{row['setup']}: {row['recovered']}/{row['trials']} recovered (limit {row['limit']})"
        _cdf(axes, row["recoveries"], row["trials"], label, row.get("limit_s"))
    axes.set_xlabel("time from the last fault to a complete, correct window again (s)")
    axes.set_ylabel("fraction of trials recovered")
    axes.set_ylim(0, 1.02)
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title("bytewax under chaos: meshd vs restarting each process")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
