"""A fuzz campaign: many seeded inputs of one target, over several processes, with their outcomes and crashes tallied.

A crash is any exception a target's ``run`` raises (``common.Violation`` included). Crashes are grouped by where
they were raised; each group keeps its shortest input, so the input printed is already small.
"""

from __future__ import annotations

import random
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tools.fuzz.targets import TARGETS

# Where a crash was raised is named relative to this directory (the checkout).
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Crash:
    """The crashes raised at one place: how many, and the shortest input that raised one there."""

    signature: str
    count: int
    data: bytes
    traceback: str


@dataclass
class Result:
    """What a campaign (or one process's share of it) found."""

    target: str
    inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    crashes: dict[str, Crash] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def crash_count(self) -> int:
        return sum(crash.count for crash in self.crashes.values())

    def add_crash(self, crash: Crash) -> None:
        known = self.crashes.get(crash.signature)
        if known is None:
            self.crashes[crash.signature] = crash
            return
        shortest = crash if len(crash.data) < len(known.data) else known
        count = known.count + crash.count
        self.crashes[crash.signature] = Crash(crash.signature, count, shortest.data, shortest.traceback)

    def merge(self, other: Result) -> None:
        self.inputs += other.inputs
        self.outcomes.update(other.outcomes)
        for crash in other.crashes.values():
            self.add_crash(crash)


def signature(exc: BaseException) -> str:
    """Where ``exc`` was raised, and from which call into meshd: one group per bug, whatever the input."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if frame.filename.startswith(str(ROOT / "meshd"))] or frames

    def place(frame: traceback.FrameSummary) -> str:
        path = Path(frame.filename)
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        return f"{shown}:{frame.lineno} ({frame.name})"

    where = place(frames[-1])
    entry = place(ours[0])
    return f"{type(exc).__name__} at {where}" + ("" if entry == where else f" from {entry}")


def replay(target: str, data: bytes) -> list[str]:
    """One input through ``target``: its outcomes, or the exception (a crash)."""
    return TARGETS[target].run(data)


def run_share(target: str, inputs: int, seed: int, share: int) -> Result:
    """``inputs`` inputs of ``target`` from the generator seeded by (seed, target, share), in this process."""
    chosen = TARGETS[target]
    rng = random.Random(f"{seed}:{target}:{share}")
    result = Result(target)
    for _ in range(inputs):
        data = chosen.generate(rng)
        try:
            result.outcomes.update(chosen.run(data))
        except Exception as exc:
            result.add_crash(Crash(signature(exc), 1, data, traceback.format_exc()))
    result.inputs = inputs
    return result


def run(target: str, inputs: int, *, seed: int = 0, jobs: int = 1) -> Result:
    """A campaign of ``inputs`` inputs of ``target``, shared among ``jobs`` processes (1: in this one)."""
    started = time.perf_counter()
    shares = [inputs // jobs + (share < inputs % jobs) for share in range(jobs)]
    result = Result(target)
    if jobs == 1:
        result.merge(run_share(target, inputs, seed, 0))
    else:
        with ProcessPoolExecutor(jobs) as pool:
            for part in pool.map(run_share, [target] * jobs, shares, [seed] * jobs, range(jobs)):
                result.merge(part)
    result.seconds = time.perf_counter() - started
    return result
