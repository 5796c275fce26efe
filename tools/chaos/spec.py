"""What one chaos trial is given (``TrialSpec``): its seed, epoch mode, size, timeouts, fault schedule and bounds.

The campaign (``tools.chaos.__main__``) makes one per trial; the runner (``tools.chaos.trial``) and its parts (the
controller of ``processes``, ``observe``, ``inject``, ``worker_mode``) all read it. It lives apart from the runner so
that they can without importing the runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.chaos.faults import Fault
from tools.chaos.results import STARTUP
from tools.chaos.workers import ALLTOALL_KIND, BYTEWAX_KIND


@dataclass(frozen=True)
class TrialSpec:
    index: int
    seed: int
    mode: str  # "fixed" or "auto"
    size: int
    timeouts: dict[str, float]
    faults: list[Fault]
    bound: float  # the design's B for this configuration, seconds
    settle: float  # how long a converged mesh must then hold, seconds
    workers: bool = False  # every daemon runs a worker (``worker``: examples/alltoall.py, or the bytewax job)
    worker: str = ALLTOALL_KIND
    startup: float = STARTUP  # bytewax: the engine's start-up allowance beyond B for results to flow again

    @property
    def bytewax(self) -> bool:
        return self.workers and self.worker == BYTEWAX_KIND

    @property
    def fixed(self) -> bool:
        return self.mode == "fixed"
