"""Capped exponential back-off with jitter (meshd.backoff): ceilings, jitter bounds, reset."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.backoff import JITTER_FLOOR, Backoff


class FixedRandom:
    """An rng stub whose random() always returns one value, to hit the exact ends of the jitter range."""

    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


CEILINGS = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_ceiling_doubles_from_initial_and_caps_at_maximum():
    backoff = Backoff(0.05, 1.0, random.Random(1))
    ceilings = []
    for _ in CEILINGS:
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == pytest.approx(CEILINGS)
    assert backoff.failures == len(CEILINGS)


def test_delays_lie_between_half_the_ceiling_and_the_ceiling():
    backoff = Backoff(0.05, 1.0, random.Random(1234))
    for failures in range(100):
        ceiling = min(1.0, 0.05 * 2**failures)
        assert backoff.ceiling() == pytest.approx(ceiling)
        delay = backoff.next_delay()
        assert 0.5 * ceiling <= delay <= ceiling


def test_delays_are_jittered():
    backoff = Backoff(1.0, 1.0, random.Random(7))
    delays = {backoff.next_delay() for _ in range(20)}
    assert len(delays) == 20
    assert min(delays) < 0.75 < max(delays)


def test_same_seed_same_delays():
    first = Backoff(0.05, 1.0, random.Random(99))
    second = Backoff(0.05, 1.0, random.Random(99))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


@pytest.mark.parametrize(("value", "factor"), [(0.0, JITTER_FLOOR), (1.0, 1.0)])
def test_exact_jitter_bounds(value, factor):
    backoff = Backoff(0.25, 2.0, FixedRandom(value))
    delays = [backoff.next_delay() for _ in range(6)]
    assert delays == [factor * ceiling for ceiling in (0.25, 0.5, 1.0, 2.0, 2.0, 2.0)]


def test_lower_bound_is_half_the_ceiling():
    """The documented jitter: delays lie in [cap/2, cap] (the lowest draw gives half the ceiling)."""
    assert Backoff(0.5, 8.0, FixedRandom(0.0)).next_delay() == 0.25
    assert Backoff(0.5, 8.0, FixedRandom(0.999999)).next_delay() == pytest.approx(0.5, rel=1e-5)


def test_reset_goes_back_to_initial():
    backoff = Backoff(0.05, 1.0, FixedRandom(1.0))
    for _ in range(5):
        backoff.next_delay()
    assert backoff.ceiling() == 1.0
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.ceiling() == 0.05
    assert backoff.next_delay() == 0.05
    assert backoff.next_delay() == 0.1


def test_many_failures_stay_at_maximum_without_overflow():
    backoff = Backoff(0.05, 1.0, FixedRandom(1.0))
    backoff.failures = 5000
    assert backoff.ceiling() == 1.0
    assert backoff.next_delay() == 1.0


@given(
    initial=st.floats(0.001, 10.0),
    factor=st.floats(1.0, 1000.0),
    seed=st.integers(0, 2**32),
    count=st.integers(1, 80),
)
def test_every_delay_within_jitter_of_its_capped_ceiling(initial, factor, seed, count):
    maximum = initial * factor
    backoff = Backoff(initial, maximum, random.Random(seed))
    for failures in range(count):
        ceiling = min(maximum, initial * 2.0**failures)
        assert backoff.ceiling() == ceiling
        delay = backoff.next_delay()
        assert JITTER_FLOOR * ceiling <= delay <= ceiling
