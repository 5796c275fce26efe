"""Many seeds, spread over worker processes, summed up: the figures ``python -m meshd.sim`` prints."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from attrs import asdict, define, field

from meshd.sim.schedule import generate
from meshd.sim.world import Outcome, run

# Seeds handed to a worker at once: large enough to amortise the hand-over, small enough to keep both cores busy.
CHUNK = 8
# Failing seeds whose schedule and violations are kept for the report.
FAILURES_SHOWN = 10


def mode_of(seed: int, mode: str) -> str:
    """``mixed`` runs even seeds with fixed epochs and odd seeds with self-minted generations."""
    if mode != "mixed":
        return mode
    return "fixed" if seed % 2 == 0 else "auto"


def run_seed(seed: int, size: int, mode: str, variant: str | None) -> Outcome:
    return run(generate(seed, size, mode_of(seed, mode)), variant)


def _run_job(job: tuple[int, int, str, str | None]) -> Outcome:
    outcome = run_seed(*job)
    if outcome.ok:
        outcome.trace = []  # only a failing seed's trace is worth sending back
    return outcome


def run_seeds(seeds: Iterable[int], size: int, mode: str, variant: str | None, jobs: int) -> Iterator[Outcome]:
    """Outcomes in seed order, computed by ``jobs`` worker processes (in this process when ``jobs`` is 1)."""
    work = [(seed, size, mode, variant) for seed in seeds]
    if jobs <= 1:
        yield from map(_run_job, work)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(_run_job, work, chunksize=CHUNK)


def default_jobs() -> int:
    return len(os.sched_getaffinity(0))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, -(-len(values) * fraction // 1))
    return values[int(rank) - 1]


@define
class Summary:
    size: int
    mode: str
    variant: str | None
    seeds: int = 0
    converged: int = 0
    times: list[float] = field(factory=list)
    bound: float = 0.0
    by_mode: Counter[str] = field(factory=Counter)
    failed_by_mode: Counter[str] = field(factory=Counter)
    exits_per_process: Counter[int] = field(factory=Counter)  # number of 75 exits of one slot in one seed -> count
    exit_codes: Counter[int] = field(factory=Counter)
    failures: list[Outcome] = field(factory=list)
    failing_seeds: list[int] = field(factory=list)

    def add(self, outcome: Outcome) -> None:
        self.seeds += 1
        self.bound = max(self.bound, outcome.bound)
        self.by_mode[outcome.mode] += 1
        for codes in outcome.exits:
            self.exits_per_process[codes.get(75, 0)] += 1
            self.exit_codes.update(codes)
        if outcome.converged_after is not None and outcome.ok:
            self.converged += 1
            self.times.append(outcome.converged_after)
        if not outcome.ok:
            self.failed_by_mode[outcome.mode] += 1
            self.failing_seeds.append(outcome.seed)
            if len(self.failures) < FAILURES_SHOWN:
                self.failures.append(outcome)

    @property
    def ok(self) -> bool:
        return not self.failing_seeds

    def time_figures(self) -> dict[str, float] | None:
        if not self.times:
            return None
        ordered = sorted(self.times)
        return {
            "p50": percentile(ordered, 0.50),
            "p99": percentile(ordered, 0.99),
            "max": ordered[-1],
            "mean": statistics.fmean(ordered),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "mode": self.mode,
            "variant": self.variant,
            "seeds": self.seeds,
            "converged": self.converged,
            "bound": self.bound,
            "time_to_converge": self.time_figures(),
            "runs_by_mode": dict(self.by_mode),
            "failed_by_mode": dict(self.failed_by_mode),
            "fenced_exits_per_process": {str(k): v for k, v in sorted(self.exits_per_process.items())},
            "exit_codes": {str(k): v for k, v in sorted(self.exit_codes.items())},
            "failing_seeds": self.failing_seeds,
            "failures": [asdict(outcome) for outcome in self.failures],
        }

    def report(self) -> list[str]:
        """The summary a person reads: seeds, convergence, times, exits, failing seeds."""
        lines = [
            f"meshd simulation: {self.size} processes, {self.mode} epochs"
            + (f", BROKEN VARIANT {self.variant}" if self.variant else ""),
            f"  seeds run        {self.seeds}  ({', '.join(f'{m} {n}' for m, n in sorted(self.by_mode.items()))})",
            f"  converged        {self.converged}  ({100.0 * self.converged / max(1, self.seeds):.2f}%,"
            f" within B = {self.bound:.2f}s of the last fault, no safety violation)",
        ]
        figures = self.time_figures()
        if figures is not None:
            lines.append(
                "  time to converge "
                + "  ".join(f"{name} {value:.3f}s" for name, value in figures.items())
                + "  (virtual, from the last fault to all ready in one generation)"
            )
        processes = sum(self.exits_per_process.values())
        spread = "  ".join(
            f"{count} exits: {100.0 * n / max(1, processes):.2f}%"
            for count, n in sorted(self.exits_per_process.items())
        )
        lines.append(f"  exits per process (75 per slot per seed)  {spread}")
        lines.append(
            "  exit codes       " + "  ".join(f"{code}: {n}" for code, n in sorted(self.exit_codes.items()))
            if self.exit_codes
            else "  exit codes       none"
        )
        if self.failing_seeds:
            shown = " ".join(str(seed) for seed in self.failing_seeds[:50])
            more = f" (+{len(self.failing_seeds) - 50} more)" if len(self.failing_seeds) > 50 else ""
            lines.append(f"  FAILING SEEDS    {len(self.failing_seeds)}: {shown}{more}")
        else:
            lines.append("  failing seeds    none")
        return lines


def describe_failure(outcome: Outcome) -> list[str]:
    """A failing seed as a person needs it: what failed, the schedule, the violations, and how to replay it."""
    schedule = generate(outcome.seed, outcome.size, outcome.mode)
    lines = [f"FAIL seed {outcome.seed} ({outcome.mode}): {outcome.failure}"]
    lines += schedule.describe()
    lines += [f"  {violation}" for violation in outcome.violations]
    lines.append(f"  replay: python -m meshd.sim --replay {outcome.seed} --size {outcome.size} --mode {outcome.mode}")
    return lines
