"""Which of a run of repeated failures to log: the first, a counted summary now and then, recovery.

One :class:`FailureLog` watches one thing that can fail again and again (one endpoint of one unit,
or one unit's availability). It is told of every failure and every success, with the time, and
says when a line is worth writing:

- the first failure after a calm period, and the success that ends it (``first``, ``recovered``);
- once ``burst`` such episodes started within ``summary_interval_s``, the thing is *flapping*:
  nothing more is logged for each failure or success, only a ``summary`` with counts at most
  once per interval (on a failure), and ``recovered`` once a whole interval went by without one;
- a failure that lasts (an endpoint answering HTTP 500 for hours) gets a ``summary`` once per
  interval too.

Exact counts are the poller's business (``poller/failed_requests``); this only decides on lines.
Pure: time is passed in, nothing is logged here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

DEFAULT_SUMMARY_INTERVAL_S: Final = 300.0

ReportKind = Literal["first", "summary", "recovered"]


@dataclass(frozen=True)
class Report:
    """A line worth logging, and what happened since the previous one."""

    kind: ReportKind
    failures: int
    """Failures since the previous report (1 for ``first``)."""
    successes: int
    """Successes since the previous report."""
    span_s: float
    """Seconds since the previous report (0 for ``first``)."""
    reason: str
    """The latest failure's reason."""
    flapping: bool
    """Whether single failures are summarised instead of logged (``burst`` was exceeded)."""


class FailureLog:
    """Decides which failures and recoveries of one thing get a log line."""

    def __init__(
        self, summary_interval_s: float = DEFAULT_SUMMARY_INTERVAL_S, burst: int = 1
    ) -> None:
        """``burst``: episodes per ``summary_interval_s`` logged in full before only summaries."""
        self.summary_interval_s = summary_interval_s
        self.burst = max(1, burst)
        self._failing = False
        self._flapping = False
        self._episode_starts: deque[float] = deque()
        self._last_report = 0.0
        self._last_failure = 0.0
        self._failures = 0
        self._successes = 0
        self._reason = ""

    @property
    def failing(self) -> bool:
        """Whether a run of failures has started and not yet been reported as over."""
        return self._failing

    def failed(self, now: float, reason: str) -> Report | None:
        """Record one failure; the report to log, if any."""
        self._last_failure = now
        self._reason = reason
        if self._failing:
            self._failures += 1
            return self._summary_if_due(now)
        self._failing = True
        while self._episode_starts and now - self._episode_starts[0] >= self.summary_interval_s:
            self._episode_starts.popleft()
        if len(self._episode_starts) >= self.burst:
            # Again, and too soon: count from here, say so in the next summary.
            self._flapping = True
            self._failures, self._successes, self._last_report = 1, 0, now
            return None
        self._episode_starts.append(now)
        self._flapping = False
        return self._report("first", now, failures=1)

    def succeeded(self, now: float) -> Report | None:
        """Record one success; the report to log, if any."""
        if not self._failing:
            return None
        self._successes += 1
        if not self._flapping or now - self._last_failure >= self.summary_interval_s:
            self._failing = False
            return self._report("recovered", now)
        # No summary here: once failures stop, the next line is the recovery, with the count.
        return None

    def _summary_if_due(self, now: float) -> Report | None:
        if self._failures and now - self._last_report >= self.summary_interval_s:
            return self._report("summary", now)
        return None

    def _report(self, kind: ReportKind, now: float, failures: int | None = None) -> Report:
        report = Report(
            kind=kind,
            failures=self._failures if failures is None else failures,
            successes=self._successes,
            span_s=0.0 if kind == "first" else now - self._last_report,
            reason=self._reason,
            flapping=self._flapping,
        )
        self._failures = 0
        self._successes = 0
        self._last_report = now
        return report
