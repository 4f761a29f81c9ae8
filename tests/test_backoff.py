"""Retry delays: exponential, capped, jittered within bounds, reset on success."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.backoff import Backoff


def _middle() -> float:
    return 0.5  # spread factor exactly 1: no jitter


def _lowest() -> float:
    return 0.0


def _highest() -> float:
    return 0.999_999_999  # random.random() never returns 1.0


def test_delays_double_up_to_the_cap() -> None:
    """Without jitter, delays go initial × 2^n until the maximum, then stay there."""
    backoff = Backoff(initial=1.0, maximum=60.0, factor=2.0, jitter=0.2, rand=_middle)
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_failures_are_counted() -> None:
    """Each next_delay() records one failure."""
    backoff = Backoff(rand=_middle)
    for _ in range(4):
        backoff.next_delay()
    assert backoff.failures == 4


def test_other_factor_and_initial() -> None:
    """The initial delay and the factor shape the sequence (2, 6, 18, …)."""
    backoff = Backoff(initial=2.0, maximum=100.0, factor=3.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(5)] == [2.0, 6.0, 18.0, 54.0, 100.0]


def test_factor_one_is_constant() -> None:
    """factor=1 gives a constant delay."""
    backoff = Backoff(initial=5.0, maximum=60.0, factor=1.0, jitter=0.0)
    assert {backoff.next_delay() for _ in range(10)} == {5.0}


def test_lowest_jitter_bound() -> None:
    """The smallest random draw shortens the delay by the jitter fraction."""
    backoff = Backoff(initial=10.0, maximum=1000.0, jitter=0.2, rand=_lowest)
    assert backoff.next_delay() == pytest.approx(8.0)
    assert backoff.next_delay() == pytest.approx(16.0)


def test_highest_jitter_bound() -> None:
    """The largest random draw lengthens the delay by at most the jitter fraction."""
    backoff = Backoff(initial=10.0, maximum=1000.0, jitter=0.2, rand=_highest)
    first = backoff.next_delay()
    assert 11.99 < first <= 12.0


def test_jitter_never_exceeds_the_cap() -> None:
    """At the cap, jitter may shorten the delay but never lengthen it past the maximum."""
    backoff = Backoff(initial=1.0, maximum=10.0, jitter=0.5, rand=_highest)
    delays = [backoff.next_delay() for _ in range(12)]
    assert max(delays) <= 10.0
    assert delays[-1] == 10.0
    low = Backoff(initial=1.0, maximum=10.0, jitter=0.5, rand=_lowest)
    assert [low.next_delay() for _ in range(12)][-1] == pytest.approx(5.0)


def test_jitter_spreads_delays() -> None:
    """With a real random source, delays for one step differ between units."""
    delays = {Backoff(rand=random.Random(seed).random).next_delay() for seed in range(20)}
    assert len(delays) > 1
    assert all(0.8 <= delay <= 1.2 for delay in delays)


@settings(max_examples=100, deadline=None)
@given(
    initial=st.floats(0.01, 10.0),
    cap_factor=st.floats(1.0, 100.0),
    factor=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**32),
)
def test_delays_stay_within_jitter_bounds(
    initial: float, cap_factor: float, factor: float, jitter: float, seed: int
) -> None:
    """Every delay lies in [base × (1 − jitter), min(max, base × (1 + jitter))]."""
    maximum = initial * cap_factor
    backoff = Backoff(initial, maximum, factor, jitter, rand=random.Random(seed).random)
    for attempt in range(30):
        base = min(maximum, initial * factor**attempt)
        delay = backoff.next_delay()
        assert delay > 0
        assert delay <= maximum
        assert base * (1 - jitter) * (1 - 1e-9) <= delay <= base * (1 + jitter) * (1 + 1e-9)


def test_reset_starts_over() -> None:
    """After reset() the next delay is the initial one again."""
    backoff = Backoff(initial=1.0, maximum=60.0, rand=_middle)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 1.0
    assert backoff.next_delay() == 2.0


def test_many_failures_do_not_overflow() -> None:
    """Thousands of consecutive failures keep returning the cap."""
    backoff = Backoff(initial=1.0, maximum=60.0, factor=10.0, rand=_middle)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": -1.0},
        {"initial": 10.0, "maximum": 5.0},
        {"factor": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
    ids=[
        "zero-initial",
        "negative-initial",
        "max-below-initial",
        "shrinking",
        "jitter-1",
        "jitter<0",
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    """Nonsensical settings raise ValueError at construction."""
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(
            initial=kwargs.get("initial", 1.0),
            maximum=kwargs.get("maximum", 60.0),
            factor=kwargs.get("factor", 2.0),
            jitter=kwargs.get("jitter", 0.2),
        )


def test_large_factor_does_not_overflow() -> None:
    """Any accepted factor keeps returning the cap instead of raising."""
    backoff = Backoff(initial=1.0, maximum=60.0, factor=1e6, rand=_middle)
    delays = [backoff.next_delay() for _ in range(70)]
    assert delays[-1] == 60.0
