"""Self-minted generations (``--epoch auto``): how a process picks a new one. Pure logic, no I/O.

A generation is an Epoch ``(major, minor)`` with ``major`` from the wall clock in milliseconds and ``minor`` a
random 64-bit nonce. The wall clock only makes numbers roughly follow time; correctness never depends on it:
a generation minted above a known one uses ``max(clock, known.major + 1)``, so it is newer whatever the clock says
(a clock that jumps backwards or differs between hosts changes which number is picked, never the order).

Saturation. Majors live in 64 bits, and a generation at the very top could never be outgrown: every later crash
would be unrecoverable. So a clock reading is clamped to CLOCK_CEILING before it is used, and a peer's generation
whose major lies above MAJOR_CEILING is refused (``RefuseReason.BAD_EPOCH``) and has no effect. Generations of
meshd processes start at or below CLOCK_CEILING and grow by one per mint at most beyond the largest one known, so
they stay below MAJOR_CEILING for 2**62 mints: at a million mints a second, 146,000 years.
"""

from __future__ import annotations

import enum

from meshd.core.wire import Epoch


class EpochMode(enum.StrEnum):
    """Where a process's epoch comes from (``--epoch``, the config's ``epoch``, the status's ``mode``)."""

    FIXED = "fixed"  # ``--epoch E``: a controller hands out epochs; a newer one fences
    AUTO = "auto"  # ``--epoch auto``: the cluster mints its own generations
    AWAIT = "await"  # ``--epoch await``: a fixed epoch, given later by the controller's start op


# The largest clock reading (milliseconds) a generation is minted from: the year 146 million.
CLOCK_CEILING = 2**62
# The largest major a peer's generation may have; above it, the hello is refused and changes nothing.
MAJOR_CEILING = 2**63 - 1


def mint(wall_ms: int, nonce: int, above: Epoch | None = None) -> Epoch:
    """A fresh generation, strictly newer than ``above`` when given; ``nonce`` must be in 1..2**64-1.

    ``above`` must be a generation meshd accepts (major at most MAJOR_CEILING), so ``above.major + 1`` fits.
    """
    clock = min(max(wall_ms, 0), CLOCK_CEILING)
    if above is None:
        return Epoch(clock, nonce)
    if above.major > MAJOR_CEILING:
        raise ValueError(f"cannot mint above {above}: its major is beyond MAJOR_CEILING")
    return Epoch(max(clock, above.major + 1), nonce)


def acceptable(epoch: Epoch) -> bool:
    """Whether a peer's generation lies in the range generations may take."""
    return epoch.major <= MAJOR_CEILING
