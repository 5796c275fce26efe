"""Self-minted generations (``--epoch auto``): how a process picks a new one. Pure logic, no I/O.

A generation is an Epoch ``(major, minor)`` with ``major`` from the wall clock in milliseconds and ``minor`` a
random 64-bit nonce. The wall clock only makes numbers roughly follow time; correctness never depends on it:
a generation minted above a known one uses ``max(clock, known.major + 1)``, so it is newer whatever the clock says
(a clock that jumps backwards or differs between hosts changes which number is picked, never the order).
"""

from __future__ import annotations

from meshd.core.wire import U64_MAX, Epoch


def mint(wall_ms: int, nonce: int, above: Epoch | None = None) -> Epoch:
    """A fresh generation, strictly newer than ``above`` when given; ``nonce`` must be in 1..2**64-1."""
    major = max(wall_ms, 0) if above is None else max(wall_ms, above.major + 1)
    return Epoch(min(major, U64_MAX), nonce)
