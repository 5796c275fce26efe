"""The daemon's heartbeat clock: every link's heartbeat sender waits on it for the next tick.

Ticks are the points ``k * interval`` of one grid. One timer per daemon expires at each tick and wakes every
sender at once, instead of one timer per link: a trio timer ends by a cancellation, which is most of what an idle
link costs. On one host every daemon shares the grid too (trio's clock is the system's monotonic clock), so a
daemon's heartbeats go out in one burst and its peers' arrive in one.
"""

from __future__ import annotations

import math
from typing import NoReturn

import trio

from meshd.core.wire import Heartbeat, encode

# A heartbeat never changes: encode it once.
HEARTBEAT_FRAME = encode(Heartbeat())


def next_tick(now: float, interval: float) -> float:
    """The first point of the grid ``k * interval`` strictly after ``now`` (float rounding cannot return ``now``)."""
    tick = (math.floor(now / interval) + 1) * interval
    return tick if tick > now else tick + interval


class HeartbeatClock:
    """Wakes every waiting heartbeat sender at each tick of the grid (``run`` keeps the time)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._tick = trio.Event()

    async def run(self) -> NoReturn:
        while True:
            await trio.sleep_until(next_tick(trio.current_time(), self.interval))
            tick, self._tick = self._tick, trio.Event()
            tick.set()

    async def wait(self) -> None:
        """Until the next tick."""
        await self._tick.wait()
