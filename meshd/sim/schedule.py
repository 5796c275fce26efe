"""A seed's schedule of faults: pure data, decided entirely by (seed, size, mode). No trio here.

Faults fall in a window after the cluster starts (some while it is still forming); each ends (heals, resumes, the
zombie dies) by the schedule's ``last_fault``, the ``t₀`` of the design's liveness theorem. After it the network
is timely and every slot has one process, as assumptions A1 and A2 require.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from attrs import frozen

# Virtual seconds after the start during which faults begin.
WINDOW = (0.0, 6.0)
# How many faults one seed injects.
FAULTS_PER_SEED = (1, 6)
# How long a pause, partition, lossy or slow period, busy port or zombie lasts.
DURATION = (0.05, 3.0)
# Latency of every segment when the path has no fault: well below every timeout (A2's δ).
BASE_LATENCY = (0.0002, 0.002)
# Extra latency on a slow path, and the chance that a segment of a lossy path is lost.
SLOW_EXTRA = (0.05, 0.6)
LOSS = (0.05, 0.5)
# How far each process's wall clock is off, and how far a clock jump moves it (auto mode mints from it).
CLOCK_SKEW = 3600.0
CLOCK_JUMP = 7200.0


@frozen
class Fault:
    at: float

    @property
    def end(self) -> float:
        return self.at

    def describe(self) -> str:
        raise NotImplementedError  # every kind of fault says what it does


@frozen
class Lasting(Fault):
    """A fault that holds for ``duration`` and then ends by itself (heals, resumes, dies)."""

    duration: float

    @property
    def end(self) -> float:
        return self.at + self.duration


# What the controller gives a crashed slot's replacement (fixed mode), as the schedule says it.
RESTART_EPOCHS = {
    "newer": "a newer epoch",
    "older": "an epoch older than the cluster's (a controller bug: it must be fenced)",
    "equal": "the dead process's own epoch (a controller that breaks A4)",
}


@frozen
class Crash(Fault):
    """kill -9 (the kernel closes the sockets) or, ``silent``, the whole host dies (nobody answers)."""

    slot: int
    silent: bool
    restart_epoch: str | None  # fixed mode: the replacement's epoch from the controller: "newer", "older", "equal"

    def describe(self) -> str:
        how = "host crash (silent)" if self.silent else "kill -9"
        given = f", restarted with {RESTART_EPOCHS[self.restart_epoch]}" if self.restart_epoch else ""
        return f"{how} of slot {self.slot}{given}"


@frozen
class Pause(Lasting):
    slot: int

    def describe(self) -> str:
        return f"SIGSTOP slot {self.slot} for {self.duration:.3f}s"


@frozen
class Partition(Lasting):
    """Silent loss between ``side`` and every other host (one way: only from ``side`` to the others)."""

    side: tuple[int, ...]
    one_way: bool

    def describe(self) -> str:
        arrow = "->" if self.one_way else "<->"
        return f"partition {list(self.side)} {arrow} rest for {self.duration:.3f}s"


@frozen
class Lossy(Lasting):
    a: int
    b: int
    loss: float

    def describe(self) -> str:
        return f"lossy path {self.a}<->{self.b} ({self.loss:.0%} of segments lost) for {self.duration:.3f}s"


@frozen
class Slow(Lasting):
    a: int
    b: int
    extra: float

    def describe(self) -> str:
        return f"slow path {self.a}<->{self.b} (+{self.extra * 1000:.0f} ms) for {self.duration:.3f}s"


@frozen
class ResetHandshake(Fault):
    """The next connection between two hosts is reset ``after`` seconds after it opens (mid-handshake)."""

    a: int
    b: int
    after: float

    def describe(self) -> str:
        return f"reset the next connection {self.a}<->{self.b} {self.after * 1000:.1f} ms after it opens"


@frozen
class ResetLinks(Fault):
    a: int
    b: int

    def describe(self) -> str:
        return f"reset every connection {self.a}<->{self.b}"


@frozen
class Zombie(Lasting):
    """The slot's process is taken for dead but lives on: its replacement takes over the address while the hosts
    in ``stale_routes`` still reach the zombie there, until it dies ``duration`` later."""

    slot: int
    stale_routes: tuple[int, ...]

    def describe(self) -> str:
        return f"zombie of slot {self.slot} for {self.duration:.3f}s, still reached by {list(self.stale_routes)}"


@frozen
class BusyPort(Lasting):
    """kill -9 of the slot, and its port held by someone else for ``duration``: the restarts fail to bind."""

    slot: int

    def describe(self) -> str:
        return f"kill -9 of slot {self.slot}, its port busy for {self.duration:.3f}s"


@frozen
class ClockJump(Fault):
    slot: int
    delta: float

    def describe(self) -> str:
        return f"wall clock of slot {self.slot} jumps {self.delta:+.0f}s"


@frozen
class Schedule:
    seed: int
    size: int
    mode: str  # "fixed" or "auto"
    start_offsets: tuple[float, ...]  # when each slot's first process starts
    clock_skews: tuple[float, ...]  # seconds each slot's wall clock is off
    faults: tuple[Fault, ...]

    @property
    def last_fault(self) -> float:
        """t₀: when the last fault ends; from here on the network is timely and every slot has one process."""
        return max([fault.end for fault in self.faults] + list(self.start_offsets))

    def describe(self) -> list[str]:
        lines = [
            f"seed {self.seed}: {self.size} processes, {self.mode} epochs, last fault ends at {self.last_fault:.3f}"
        ]
        lines += [f"  t={fault.at:7.3f}  {fault.describe()}" for fault in self.faults]
        return lines


def generate(seed: int, size: int, mode: str) -> Schedule:
    """The schedule of ``seed``; every random choice comes from one generator seeded with it."""
    rng = random.Random(f"schedule/{seed}/{size}/{mode}")
    starts = tuple(rng.choice([0.0, rng.uniform(0.0, 0.5)]) for _ in range(size))
    skews = tuple(rng.uniform(-CLOCK_SKEW, CLOCK_SKEW) for _ in range(size))
    makers = _fault_makers(rng, size, mode)
    count = rng.randint(*FAULTS_PER_SEED)
    faults = sorted((rng.choice(makers)(rng.uniform(*WINDOW)) for _ in range(count)), key=lambda fault: fault.at)
    return Schedule(seed, size, mode, starts, skews, tuple(faults))


def _fault_makers(rng: random.Random, size: int, mode: str) -> list[Callable[[float], Fault]]:
    def slot() -> int:
        return rng.randrange(size)

    def pair() -> tuple[int, int]:
        a, b = rng.sample(range(size), 2)
        return a, b

    def duration() -> float:
        return rng.uniform(*DURATION)

    def crash(at: float) -> Fault:
        epoch = rng.choice(["newer", "newer", "older", "equal"]) if mode == "fixed" else None
        return Crash(at, slot=slot(), silent=rng.random() < 0.3, restart_epoch=epoch)

    def partition(at: float) -> Fault:
        side = tuple(sorted(rng.sample(range(size), rng.randint(1, max(1, size // 2)))))
        return Partition(at, duration(), side=side, one_way=rng.random() < 0.3)

    def zombie(at: float) -> Fault:
        victim = slot()
        others = [index for index in range(size) if index != victim]
        lasting = duration()
        stale = tuple(sorted(rng.sample(others, rng.randint(0, len(others)))))
        return Zombie(at, lasting, slot=victim, stale_routes=stale)

    def pause(at: float) -> Fault:
        victim = slot()
        return Pause(at, duration(), slot=victim)

    def lossy(at: float) -> Fault:
        a, b = pair()
        return Lossy(at, duration(), a, b, loss=rng.uniform(*LOSS))

    def slow(at: float) -> Fault:
        a, b = pair()
        return Slow(at, duration(), a, b, extra=rng.uniform(*SLOW_EXTRA))

    def busy_port(at: float) -> Fault:
        victim = slot()
        return BusyPort(at, duration(), slot=victim)

    makers: list[Callable[[float], Fault]] = [
        crash,
        crash,
        pause,
        partition,
        lossy,
        slow,
        lambda at: ResetHandshake(at, *pair(), after=rng.uniform(0.0, 0.004)),
        lambda at: ResetLinks(at, *pair()),
        zombie,
        busy_port,
    ]
    if mode == "auto":
        makers.append(lambda at: ClockJump(at, slot=slot(), delta=rng.uniform(-CLOCK_JUMP, CLOCK_JUMP)))
    return makers
