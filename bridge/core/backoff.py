"""Exponential, jittered, capped retry delays that reset on success."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays for consecutive failures: ``initial × factor^n``, capped, with ±``jitter`` spread.

    Jitter keeps many units (or many bridges) that failed together from retrying in lock-step.
    """

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= maximum, factor >= 1, 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rand = rand
        self.failures = 0

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        try:
            base = min(self.maximum, self.initial * self.factor ** min(self.failures, 64))
        except OverflowError:
            base = self.maximum
        self.failures += 1
        spread = 1 + self.jitter * (2 * self._rand() - 1)
        return min(self.maximum, base * spread)

    def fresh(self) -> Backoff:
        """A new backoff with the same settings and no failures."""
        return Backoff(self.initial, self.maximum, self.factor, self.jitter, self._rand)

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.failures = 0
