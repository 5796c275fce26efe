"""A chaos trial's fault schedule: decided entirely by its seed before any process starts, so a seed names a trial.

Fault kinds (each at an offset from the start of the fault phase):
- ``kill``: kill -9 of one or more slots' processes (the orchestrator restarts them);
- ``pause``: SIGSTOP of one or more processes, SIGCONT after ``duration`` (links time out at the peers meanwhile);
- ``stale``: fixed epochs only: kill -9 of one slot, whose replacement the controller mistakenly starts with an
  epoch older than any the cluster runs; it must be refused, never be ready, and fence only itself;
- ``duplicate``: a second process for a live slot, with the slot's own epoch (or ``auto``): its port is taken, so
  it must exit 1 after ``timeouts.bind`` without disturbing anyone;
- ``partition``: namespaces only: the slots of one side lose every packet to and from the other side for
  ``duration`` (silence, no reset), then the cut heals;
- ``twin``: namespaces and ``--epoch auto`` only: a second process of a live slot in a second namespace that
  answers the slot's own address (an address conflict: peers reach whichever one ARP last named) for
  ``duration``, then killed and its namespace removed. Not with fixed epochs: two live incarnations of a slot in
  one epoch break the controller's contract (A4) under which the design proves S2;
- ``worker``: worker mode only: kill -9 of the worker process alone of one or more slots (its daemon then exits 70,
  and the controller restarts it as a death).

In worker mode a ``pause`` stops each victim's daemon and its worker together (SIGCONT to both after ``duration``).
The worker-mode schedule is the plain one with some kills turned into ``worker`` faults (same time, same victims),
decided by a second random stream of the seed (``with_worker_faults``): the plain schedule of a seed never changes,
and the bytewax baseline's kill stands for the meshd trial's kill of a worker.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

KILL, PAUSE, STALE, DUPLICATE, PARTITION, TWIN = "kill", "pause", "stale", "duplicate", "partition", "twin"
WORKER = "worker"
# Relative frequency of each kind; kills are what the design's recovery is mostly about.
WEIGHTS = {KILL: 4, PAUSE: 2, STALE: 1, DUPLICATE: 1, PARTITION: 2, TWIN: 1}
# Pause between two faults' start times, seconds (0: faults pile up at once).
GAP = (0.0, 1.5)
# How long a process stays stopped: from below the heartbeat timeout to several of them.
PAUSE_LENGTH = (0.2, 2.5)
# How long a partition lasts.
PARTITION_LENGTH = (0.3, 3.0)
# How long a twin answers its slot's address.
TWIN_LENGTH = (0.5, 2.5)
# Probability that a kill or pause hits a single slot (else a random number of them, up to all for kills).
SINGLE_VICTIM = 0.6
# Worker mode: the probability that a kill of the plain schedule is a kill of the victims' workers instead.
WORKER_SHARE = 0.5
# The controller's first epoch in fixed mode; stale epochs are drawn below it, so no process ever ran them.
BASE_EPOCH = 1000


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the fault phase starts
    kind: str
    slots: tuple[int, ...]  # the victims; for a partition, one side of the cut
    duration: float = 0.0  # pause and partition length
    stale_epoch: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        text = f"+{self.at:.2f}s {self.kind} {list(self.slots)}"
        if self.duration:
            text += f" for {self.duration:.2f}s"
        if self.stale_epoch is not None:
            text += f" with epoch {self.stale_epoch}"
        return text


def kinds_for(mode: str, partitions: bool) -> list[str]:
    """The fault kinds a trial can draw: stale epochs need fixed epochs, partitions and twins namespaces, twins
    self-minted generations."""
    kinds = [KILL, PAUSE, DUPLICATE]
    if mode == "fixed":
        kinds.append(STALE)
    if partitions:
        kinds.append(PARTITION)
        if mode == "auto":
            kinds.append(TWIN)
    return kinds


def _victims(rng: random.Random, size: int, most: int) -> tuple[int, ...]:
    count = 1 if rng.random() < SINGLE_VICTIM else rng.randint(1, most)
    return tuple(sorted(rng.sample(range(size), count)))


def plan(seed: int, size: int, mode: str, partitions: bool, count: int, workers: bool = False) -> list[Fault]:
    """``count`` faults for a cluster of ``size`` processes, decided by ``seed`` alone (and, with ``workers``, some
    kills turned into kills of the workers: ``with_worker_faults``)."""
    faults = _plain(seed, size, mode, partitions, count)
    return with_worker_faults(faults, seed) if workers else faults


def with_worker_faults(faults: list[Fault], seed: int) -> list[Fault]:
    """Worker mode's schedule from a plain one: each kill becomes a ``worker`` fault (same time, same victims) with
    probability ``WORKER_SHARE``, drawn from a random stream of its own (the plain schedule's stream is untouched).
    One draw per kill or worker fault, so applying it to its own result changes nothing."""
    rng = random.Random(f"worker-faults-{seed}")  # a str seed is hashed with SHA-512: the same in every run
    result = []
    for fault in faults:
        if fault.kind in (KILL, WORKER):
            worker = rng.random() < WORKER_SHARE or fault.kind == WORKER
            fault = replace(fault, kind=WORKER if worker else KILL)
        result.append(fault)
    return result


def _plain(seed: int, size: int, mode: str, partitions: bool, count: int) -> list[Fault]:
    rng = random.Random(seed)
    kinds = kinds_for(mode, partitions)
    weights = [WEIGHTS[kind] for kind in kinds]
    stale_epochs = rng.sample(range(1, BASE_EPOCH), count)
    faults: list[Fault] = []
    at = 0.0
    for number in range(count):
        at += rng.uniform(*GAP) if number else 0.0
        kind = rng.choices(kinds, weights)[0]
        if kind == KILL:
            faults.append(Fault(round(at, 3), kind, _victims(rng, size, size)))
        elif kind == PAUSE:
            duration = round(rng.uniform(*PAUSE_LENGTH), 3)
            faults.append(Fault(round(at, 3), kind, _victims(rng, size, size - 1), duration))
        elif kind == STALE:
            faults.append(Fault(round(at, 3), kind, (rng.randrange(size),), stale_epoch=stale_epochs[number]))
        elif kind == DUPLICATE:
            faults.append(Fault(round(at, 3), kind, (rng.randrange(size),)))
        elif kind == TWIN:
            faults.append(Fault(round(at, 3), kind, (rng.randrange(size),), round(rng.uniform(*TWIN_LENGTH), 3)))
        else:
            side = tuple(sorted(rng.sample(range(size), rng.randint(1, size // 2))))
            faults.append(Fault(round(at, 3), kind, side, round(rng.uniform(*PARTITION_LENGTH), 3)))
    return faults
