"""A targeted search over fault timings: every combination, on a grid, of the faults that leave stale memberships.

Random seeds rarely hit a narrow window (the first design's wedge needed a pause of 1.19-1.45 s in one slot, a
zombie of that slot still reached by one host, and a crash of another slot; 8,300 random seeds at N=2 missed it).
This search enumerates instead: one pause, one zombie and one kill -9, each on every slot, with durations and
times from a grid, zombie routes from every host set, clocks skewed both ways, starts staggered both ways; and two
zombies at once, reached crosswise. Nothing in it names a particular schedule: the grid is the same for every
variant, and a failure it finds is printed as a schedule to replay.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from meshd.sim.campaign import CHUNK, Summary
from meshd.sim.schedule import Crash, Fault, Pause, Schedule, Zombie
from meshd.sim.world import Outcome, run

# The grid (virtual seconds). Pauses and zombies start early, while the mesh forms or just after, and last about
# as long as it takes a replacement to start and form a generation of its own.
PAUSE_STARTS = (0.0, 0.05, 0.2)
PAUSE_LENGTHS = (0.6, 0.9, 1.2, 1.35, 1.5, 1.8)
ZOMBIE_STARTS = (0.1, 0.4)
ZOMBIE_LIFE = 3.0
CRASH_TIMES = (0.5, 1.0, 1.5)
SKEW = 3000.0  # seconds: far enough that a newcomer's birth generation can be older than a running one
STAGGER = 0.3  # seconds between the first processes' starts
COARSE = {"PAUSE_STARTS": (0.05,), "PAUSE_LENGTHS": (0.9, 1.35, 1.8), "ZOMBIE_STARTS": (0.1,), "CRASH_TIMES": (1.0,)}


def _clocks(size: int) -> Iterator[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Start offsets and clock skews: the first slot late or the others late, clocks behind or ahead."""
    for late_first, behind_first in itertools.product((True, False), repeat=2):
        offsets = tuple(STAGGER if (slot == 0) == late_first else 0.0 for slot in range(size))
        skews = tuple((-SKEW if (slot == 0) == behind_first else SKEW) for slot in range(size))
        yield offsets, skews


def _routes(size: int, victim: int) -> list[tuple[int, ...]]:
    """Which hosts still reach a zombie: none, all the others, or (N > 2) each other host alone."""
    others = tuple(slot for slot in range(size) if slot != victim)
    return [(), others, *([(other,) for other in others] if len(others) > 1 else [])]


def schedules(size: int, *, coarse: bool = False) -> Iterator[Schedule]:
    """Every schedule of the search, auto mode (fixed epochs have no memberships to go stale)."""
    grid = {
        "PAUSE_STARTS": PAUSE_STARTS,
        "PAUSE_LENGTHS": PAUSE_LENGTHS,
        "ZOMBIE_STARTS": ZOMBIE_STARTS,
        "CRASH_TIMES": CRASH_TIMES,
    } | (COARSE if coarse else {})
    number = 0
    slots = range(size)
    for offsets, skews in _clocks(size):
        for paused, zombied, killed in itertools.product(slots, repeat=3):
            for routes in _routes(size, zombied):
                for pause_at, length, zombie_at, crash_at in itertools.product(
                    grid["PAUSE_STARTS"], grid["PAUSE_LENGTHS"], grid["ZOMBIE_STARTS"], grid["CRASH_TIMES"]
                ):
                    faults: list[Fault] = [
                        Pause(pause_at, length, slot=paused),
                        Zombie(zombie_at, ZOMBIE_LIFE, slot=zombied, stale_routes=routes),
                        Crash(crash_at, slot=killed, silent=False, restart_epoch=None),
                    ]
                    yield Schedule(number, size, "auto", offsets, skews, tuple(sorted(faults, key=lambda f: f.at)))
                    number += 1
        for first, second in itertools.product(grid["ZOMBIE_STARTS"], repeat=2):
            crosswise = [
                Zombie(first, ZOMBIE_LIFE, slot=0, stale_routes=(1,)),
                Zombie(second, ZOMBIE_LIFE, slot=1, stale_routes=(0,)),
            ]
            yield Schedule(number, size, "auto", offsets, skews, tuple(sorted(crosswise, key=lambda f: f.at)))
            number += 1


def _run(job: tuple[Schedule, str | None]) -> Outcome:
    outcome = run(*job)
    if outcome.ok:
        outcome.trace = []
    return outcome


def search(size: int, variant: str | None, jobs: int, *, coarse: bool = False) -> tuple[Summary, list[Schedule]]:
    """Run every schedule of the search; the summary and the failing schedules."""
    plan = list(schedules(size, coarse=coarse))
    summary = Summary(size, "search", variant)
    failing: list[Schedule] = []
    work = [(schedule, variant) for schedule in plan]
    if jobs <= 1:
        outcomes = list(map(_run, work))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(_run, work, chunksize=CHUNK))
    for schedule, outcome in zip(plan, outcomes, strict=True):
        summary.add(outcome)
        if not outcome.ok:
            failing.append(schedule)
    return summary, failing


def planned(size: int, number: int, *, coarse: bool = False) -> Schedule:
    """Schedule ``number`` of the search (to replay it)."""
    return next(itertools.islice(schedules(size, coarse=coarse), number, None))
