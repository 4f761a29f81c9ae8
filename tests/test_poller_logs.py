"""What the poller logs on a fake clock: repeated failures summarised, device strings escaped."""

from __future__ import annotations

import json
import logging
import random

import pytest

from bridge.adapters.twc import TwcBadResponseError
from bridge.core.backoff import Backoff
from bridge.core.config import PollingConfig
from bridge.core.models import Endpoint
from bridge.core.outbox import Outbox
from bridge.runtime.poller import ConnectorPoller, IdRegistry
from tests.test_poller import VERSION, FakeTime, FakeUnit, poll_until

SUMMARY_S = 120.0


def _poller(
    configured_id: str | None = "garage", unit: FakeUnit | None = None
) -> tuple[ConnectorPoller, FakeUnit, FakeTime]:
    unit = unit or FakeUnit(FakeTime())
    time_source = unit.time
    poller = ConnectorPoller(
        label="garage",
        configured_id=configured_id,
        base_topic="twc3",
        polling=PollingConfig(vitals_s=1, vitals_idle_s=1, offline_after=6, backoff_max_s=2),
        fetcher=unit,
        outbox=Outbox(clock=time_source.clock),
        registry=IdRegistry(),
        clock=time_source.clock,
        sleep=time_source.sleep,
        backoff=Backoff(initial=0.5, maximum=2.0, jitter=0.0),
        repeat_summary_s=SUMMARY_S,
    )
    return poller, unit, time_source


class FlakyUnit(FakeUnit):
    """A fake unit answering HTTP 500 to a share of vitals requests (seeded), counting them."""

    def __init__(self, time_source: FakeTime, share: float) -> None:
        super().__init__(time_source)
        self.share = share
        self.draws = random.Random(3)
        self.failures = 0

    async def fetch(self, endpoint: Endpoint) -> bytes:
        """Answer, or fail with HTTP 500."""
        if endpoint == "vitals" and self.draws.random() < self.share:
            self.failures += 1
            raise TwcBadResponseError("unexpected response: HTTP 500", endpoint)
        return await super().fetch(endpoint)


async def test_thirty_percent_http_500_gives_a_handful_of_lines_and_exact_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10 minutes of HTTP 500 on 30 % of vitals requests: few lines, every failure counted."""
    time_source = FakeTime()
    unit = FlakyUnit(time_source, 0.3)
    poller, _, _ = _poller(unit=unit)
    with caplog.at_level(logging.INFO, logger="bridge.runtime.poller"):
        await poll_until(poller, time_source, 600)
        unit.share = 0.0  # the unit calms down
        await poll_until(poller, time_source, SUMMARY_S + 10)
    failures = unit.failures
    lines = [r.getMessage() for r in caplog.records if "vitals" in r.getMessage()]
    assert failures > 100, failures
    assert poller.status.failed_requests == failures
    assert len(lines) <= 2 + 600 / SUMMARY_S + 1, lines
    assert "HTTP 500 from vitals" in lines[0]
    summaries = [line for line in lines if "more bad answers and" in line]
    assert len(summaries) >= 3, lines
    assert "answers normally again" in lines[-1]


async def test_hostile_serial_without_usable_id_is_logged_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A serial that gives no topic id is named in the error line, escaped, on one line."""
    poller, unit, time_source = _poller(configured_id=None)
    unit.bodies["version"] = json.dumps({**VERSION, "serial_number": "\n\x1b[\u202e"}).encode()
    with caplog.at_level(logging.INFO, logger="bridge.runtime.poller"):
        await poll_until(poller, time_source, 5)
    errors = [r.getMessage() for r in caplog.records if "no usable topic id" in r.getMessage()]
    expected = (
        "unit garage: serial '\\n\\x1b[\\u202e' gives no usable topic id "
        "(must not be empty); set id"
    )
    assert errors == [expected]


async def test_serial_change_is_logged_escaped(caplog: pytest.LogCaptureFixture) -> None:
    """A unit whose serial changes to one with a newline and ANSI codes: one escaped line."""
    poller, unit, time_source = _poller()
    poller.polling = poller.polling.model_copy(update={"version_s": 2})
    await poll_until(poller, time_source, 3)
    unit.bodies["version"] = json.dumps({**VERSION, "serial_number": "AB\n\x1b[31mC"}).encode()
    with caplog.at_level(logging.INFO, logger="bridge.runtime.poller"):
        await poll_until(poller, time_source, 5)
    changed = [r.getMessage() for r in caplog.records if "serial number changed" in r.getMessage()]
    expected = (
        "unit garage: serial number changed from TEST0001 to AB\\n\\x1b[31mC "
        "(a different unit at this address?)"
    )
    assert changed == [expected]
