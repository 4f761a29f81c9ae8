"""FailureLog: which of a run of repeated failures get a log line, with time passed in."""

from __future__ import annotations

import random

from bridge.core.failurelog import FailureLog, Report

INTERVAL = 300.0


def test_calm_thing_logs_nothing() -> None:
    """Successes alone never give a line."""
    log = FailureLog(INTERVAL)
    assert all(log.succeeded(float(t)) is None for t in range(100))


def test_one_failure_gives_a_first_line_and_a_recovery() -> None:
    """A single failure is logged at once, and so is the success that ends it."""
    log = FailureLog(INTERVAL)
    first = log.failed(10.0, "HTTP 500")
    assert first is not None
    assert (first.kind, first.failures, first.reason, first.flapping) == (
        "first",
        1,
        "HTTP 500",
        False,
    )
    assert log.failing
    recovered = log.succeeded(11.0)
    assert recovered is not None
    assert (recovered.kind, recovered.failures, recovered.span_s) == ("recovered", 0, 1.0)
    assert not log.failing
    assert log.succeeded(12.0) is None


def test_a_lasting_failure_gets_one_summary_per_interval_with_counts() -> None:
    """Failing every 10 s for 20 minutes: the first line, then one summary every 300 s."""
    log = FailureLog(INTERVAL)
    reports = [r for t in range(0, 1200, 10) if (r := log.failed(float(t), f"reason {t}"))]
    assert [r.kind for r in reports] == ["first", "summary", "summary", "summary"]
    assert [r.failures for r in reports] == [1, 30, 30, 30]
    assert [r.span_s for r in reports] == [0.0, 300.0, 300.0, 300.0]
    assert reports[-1].reason == "reason 900"
    assert not any(r.flapping for r in reports)
    end = log.succeeded(1200.0)
    assert end is not None
    assert (end.kind, end.failures, end.span_s) == ("recovered", 29, 300.0)


def _replay(log: FailureLog, outcomes: list[bool], step_s: float) -> list[tuple[float, Report]]:
    reports = []
    for index, ok in enumerate(outcomes):
        now = index * step_s
        report = log.succeeded(now) if ok else log.failed(now, "HTTP 500")
        if report is not None:
            reports.append((now, report))
    return reports


def test_thirty_percent_failures_for_ten_minutes_give_a_handful_of_lines() -> None:
    """HTTP 500 on 30 % of 1 s polls for 10 min: first, recovery, summaries, final recovery."""
    draws = random.Random(7)
    outcomes = [draws.random() >= 0.3 for _ in range(600)] + [True] * 400
    failures = outcomes.count(False)
    reports = _replay(FailureLog(INTERVAL), outcomes, 1.0)
    kinds = [report.kind for _, report in reports]
    assert kinds == ["first", "recovered", "summary", "recovered"], reports
    assert len(reports) <= 2 + 600 / INTERVAL + 1
    # Every failure is in some line's count: the first, the summaries, the final recovery.
    assert sum(report.failures for _, report in reports) == failures
    assert all(report.flapping for _, report in reports[2:])
    last_failure = max(i for i, ok in enumerate(outcomes) if not ok)
    assert reports[-1][0] == last_failure + INTERVAL


def test_a_flapping_thing_that_calms_down_gets_its_count_in_the_recovery() -> None:
    """No summary once failures stop: the recovery, an interval later, carries the count."""
    log = FailureLog(10.0)
    assert log.failed(0.0, "a") is not None
    assert log.succeeded(1.0) is not None
    assert log.failed(2.0, "b") is None  # again within the interval: flapping, counted
    assert log.succeeded(3.0) is None
    assert log.failed(8.0, "c") is None
    assert log.succeeded(12.0) is None  # a summary is due, but failures stopped
    assert log.succeeded(17.0) is None  # 9 s without a failure: not yet calm
    recovered = log.succeeded(18.0)
    assert recovered is not None
    assert (recovered.kind, recovered.failures, recovered.successes, recovered.reason) == (
        "recovered",
        2,
        4,
        "c",
    )
    assert recovered.span_s == 16.0


def test_a_flapping_thing_gets_a_summary_on_a_failure_once_an_interval() -> None:
    """While failures go on, the first one after each interval brings the summary."""
    log = FailureLog(10.0)
    log.failed(0.0, "a")
    log.succeeded(1.0)
    assert log.failed(2.0, "b") is None
    assert log.succeeded(11.0) is None
    summary = log.failed(12.5, "d")
    assert summary is not None
    assert (summary.kind, summary.failures, summary.successes, summary.span_s) == (
        "summary",
        2,
        1,
        10.5,
    )


def test_burst_allows_a_few_full_episodes_per_interval() -> None:
    """With burst 3, three outages in a row are each logged; the fourth only counted."""
    log = FailureLog(INTERVAL, burst=3)
    kinds: list[str | None] = []
    for start in (0.0, 20.0, 40.0, 60.0):
        reports = (log.failed(start, "timeout"), log.succeeded(start + 5))
        kinds.extend(report.kind if report else None for report in reports)
    assert kinds == ["first", "recovered"] * 3 + [None, None]


def test_calm_for_an_interval_makes_the_next_failure_a_first_line_again() -> None:
    """Episodes older than the interval no longer count against the burst."""
    log = FailureLog(INTERVAL)
    _replay(log, [False, True], 1.0)
    later = log.failed(1000.0, "again")
    assert later is not None
    assert later.kind == "first"
