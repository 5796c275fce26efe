"""The design's liveness bound as code (docs/design.md §5), shared by the simulation and the chaos trials."""

from __future__ import annotations

from typing import Protocol


class Timeouts(Protocol):
    """The timeouts the bound depends on (``meshd.config.Timeouts`` has them)."""

    heartbeat_timeout: float
    connect: float
    handshake: float
    backoff_max: float


def liveness_bound(timeouts: Timeouts, size: int, restart_delay: float, start_time: float, delta: float) -> float:
    """B = 2H + 2·(D + S) + (N + 2)·(b + c + h) + h + 2δ: after the last fault, every process is ready by then.

    H heartbeat timeout, D restart delay, S start time, N processes, b back-off cap, c connect and h handshake
    timeouts, δ the network's delay once it is timely again.
    """
    heartbeat = timeouts.heartbeat_timeout
    per_dial = timeouts.backoff_max + timeouts.connect + timeouts.handshake
    return 2 * heartbeat + 2 * (restart_delay + start_time) + (size + 2) * per_dial + timeouts.handshake + 2 * delta
