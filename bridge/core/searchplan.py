"""When one lost unit is due to be looked for: after a delay, then less and less often."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# While a unit stays lost, the wait between searches doubles up to this many search_every_s.
MAX_BACKOFF_FACTOR: Final = 8


@dataclass(slots=True)
class SearchPlan:
    """One unit's search schedule, with the time passed in.

    Due when the unit has been unreachable for ``search_after_s`` (at once when it has no address
    yet), then at most once per ``search_every_s``, the wait doubling after every search while
    it stays lost (capped at :data:`MAX_BACKOFF_FACTOR` x ``search_every_s``); reachable again,
    the plan starts over.
    """

    search_after_s: float
    search_every_s: float
    _next_at: float | None = field(default=None, init=False)
    _wait_s: float = field(default=0.0, init=False)

    def due(self, now: float, unreachable_since: float | None, *, has_address: bool) -> bool:
        """Whether to look for the unit now.

        ``unreachable_since``: when its current outage began (``None`` while it answers).
        """
        if unreachable_since is None:
            self.reset()
            return False
        if self._next_at is not None:
            return now >= self._next_at
        if not has_address:
            return True
        return now >= unreachable_since + self.search_after_s

    def searched(self, now: float) -> None:
        """A search looked for the unit at ``now``: the next one waits, longer each time."""
        cap = MAX_BACKOFF_FACTOR * self.search_every_s
        self._wait_s = self.search_every_s if self._next_at is None else min(self._wait_s * 2, cap)
        self._next_at = now + self._wait_s

    def reset(self) -> None:
        """The unit answers: a later outage starts the plan from the beginning."""
        self._next_at = None
        self._wait_s = 0.0

    @property
    def next_at(self) -> float | None:
        """When the next search after the last one is allowed (``None`` before any)."""
        return self._next_at
