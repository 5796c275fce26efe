"""Fixtures shared by the test modules: the real-time guard of the virtual-time tests, the process harness, and
the restarting orchestrator of an auto-mode cluster of real processes."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
import trio

from meshd.cluster.controller import RESTART_DELAY
from meshd.cluster.policy import EpochController
from meshd.core.generation import EpochMode
from tests.harness.orchestrate import Orchestrate, Orchestrator, TomlEpoch
from tests.harness.procs import Harness

# Real seconds any one test may take. Virtual time cannot bound a livelock (tasks that never block never let the
# clock jump, so no trio timeout fires), e.g. two daemons replacing each other's connections forever.
WALL_CLOCK_LIMIT = 30


class WallClockExpired(BaseException):
    """Not an Exception (let alone the OSError that TimeoutError is): no handler in the daemon may swallow it."""


@pytest.fixture
def wall_clock_guard() -> Iterator[None]:
    """Fail a test that livelocks in one virtual instant instead of hanging the suite."""

    def expire(signum: int, frame: object) -> None:
        raise WallClockExpired(f"over {WALL_CLOCK_LIMIT} s of real time: a livelock at one virtual instant?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, WALL_CLOCK_LIMIT, 1)  # and again every second, should one be lost
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def harness(tmp_path):
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
async def orchestrate(harness: Harness) -> AsyncIterator[Orchestrate]:
    """``await orchestrate(size=4, launch=all, toml=False)``: an auto-mode cluster under a restarting orchestrator
    (``tests.harness.procs.Orchestrator``).

    With ``toml=True`` the config file says ``epoch = "auto"`` and the command line gives no ``--epoch``.
    """
    async with trio.open_nursery() as nursery:

        async def start(size: int = 4, launch: Iterable[int] | None = None, toml: bool = False) -> Orchestrator:
            cluster = harness.cluster(size, name="generations")
            options: dict[str, Any] = {}
            if toml:
                config = harness.tmp / "auto.toml"
                config.write_text('epoch = "auto"\n' + cluster.config.read_text(encoding="utf-8"), encoding="utf-8")
                options = {"config": config, "cls": TomlEpoch}
            policy = EpochController(EpochMode.AUTO)
            controller = harness.controller(cluster, policy, restart_delay=RESTART_DELAY, **options)
            await nursery.start(controller.run, range(size) if launch is None else list(launch))
            return Orchestrator(harness, cluster, controller)

        yield start
        nursery.cancel_scope.cancel()
