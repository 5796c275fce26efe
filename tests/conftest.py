"""Fixtures shared by the test modules: the real-time guard of the virtual-time tests, the process harness."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.proc_harness import Harness

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
