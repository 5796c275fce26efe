"""Capped exponential back-off with jitter, as a small pure object (the caller does the sleeping)."""

from __future__ import annotations

import random

# Each delay is drawn from [JITTER_FLOOR * base, base]: enough spread that peers retrying in step drift apart,
# while the wait still grows with every failure.
JITTER_FLOOR = 0.5


class Backoff:
    """Delays for successive retries: ``initial``, doubling per failure up to ``maximum``, each with jitter."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self.failures = 0

    def ceiling(self) -> float:
        """The largest delay the next call can return."""
        return min(self.maximum, self.initial * 2.0 ** min(self.failures, 64))

    def next_delay(self) -> float:
        base = self.ceiling()
        self.failures += 1
        return base * (JITTER_FLOOR + (1.0 - JITTER_FLOOR) * self._rng.random())

    def reset(self) -> None:
        self.failures = 0
