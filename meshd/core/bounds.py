"""The design's liveness bound as code (docs/design.md §5, where each term is derived), shared by the simulation and
the chaos trials."""

from __future__ import annotations

from typing import Protocol


class Timeouts(Protocol):
    """The timeouts the bound depends on (``meshd.config.Timeouts`` has them)."""

    heartbeat_timeout: float
    connect: float
    handshake: float
    backoff_max: float


def round_time(timeouts: Timeouts) -> float:
    """R = b + c + h: within R, every two live processes with no link between them end an exchange (a dial loop
    waits at most b after an attempt, and an attempt takes at most c to connect and h to exchange hellos)."""
    return timeouts.backoff_max + timeouts.connect + timeouts.handshake


def liveness_bound(timeouts: Timeouts, size: int, restart_delay: float, start_time: float, delta: float) -> float:
    """B = max(H, h) + 7R + 2(D + S) + b + (N - 1)(c + h) + 3δ: after the last fault, every process is ready in one
    generation by then.

    H heartbeat timeout, h handshake, c connect, b back-off cap, R = b + c + h, D restart delay, S start time,
    N processes, δ the network's delay once it is timely again. The phases (docs/design.md §5): dead links and
    pending exchanges end (max(H, h) + δ); two waves of exits of processes sealed before, each 2R plus a restart
    (D + S); stale memberships resolved (2R); everybody in the newest generation (b + (N - 1)(c + h)); links (R);
    views and ready flags (2δ).
    """
    r = round_time(timeouts)
    c, h, b = timeouts.connect, timeouts.handshake, timeouts.backoff_max
    settle = max(timeouts.heartbeat_timeout, h) + delta
    return settle + 7 * r + 2 * (restart_delay + start_time) + b + (size - 1) * (c + h) + 2 * delta
