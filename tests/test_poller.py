"""The polling loop on a fake clock: schedule, spacing, backoff, availability and topics."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from bridge.adapters.twc import TwcBadResponseError, TwcUnreachableError
from bridge.core.backoff import Backoff
from bridge.core.config import BridgeConfig, PollingConfig
from bridge.core.models import Endpoint
from bridge.core.outbox import Outbox
from bridge.runtime.app import START_SLOTS, Bridge
from bridge.runtime.poller import (
    MIN_IDLE_S,
    MIN_REQUEST_GAP_S,
    MIN_START_GAP_S,
    ConnectorPoller,
    IdRegistry,
)

VITALS_IDLE = {
    "contactor_closed": False,
    "vehicle_connected": False,
    "grid_v": 231.5,
    "currentA_a": 0.2,
    "evse_state": 1,
    "session_energy_wh": 0.0,
    "current_alerts": [],
    "future_field": {"x": 1},
}
VERSION = {
    "firmware_version": "25.34.1+gtest",
    "part_number": "1529455-02-D",
    "serial_number": "TEST0001",
}
LIFETIME = {"energy_wh": 1000, "avg_startup_temp": None}
WIFI = {"wifi_ssid": "SG9tZQ==", "wifi_rssi": -55}


class FakeTime:
    """A monotonic clock that only moves when the poller sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        """The current fake time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the fake time instead of waiting."""
        self.now += seconds


class FakeUnit:
    """Answers like a unit, or fails the way it is told to; records every request."""

    def __init__(self, time_source: FakeTime) -> None:
        self.time = time_source
        self.bodies: dict[str, bytes] = {
            "vitals": json.dumps(VITALS_IDLE).encode(),
            "version": json.dumps(VERSION).encode(),
            "lifetime": json.dumps(LIFETIME).encode(),
            "wifi_status": json.dumps(WIFI).encode(),
        }
        self.failure: Callable[[str], Exception] | None = None
        self.requests: list[tuple[float, str]] = []

    async def fetch(self, endpoint: Endpoint) -> bytes:
        """Answer or fail one request."""
        self.requests.append((self.time.now, endpoint))
        if self.failure is not None:
            raise self.failure(endpoint)
        self.time.now += 0.05  # a request takes a little time
        return self.bodies[endpoint]


def make_poller(
    configured_id: str | None = "garage", **polling: float
) -> tuple[ConnectorPoller, FakeUnit, FakeTime, Outbox]:
    time_source = FakeTime()
    unit = FakeUnit(time_source)
    outbox = Outbox(clock=time_source.clock)
    poller = ConnectorPoller(
        label="garage",
        configured_id=configured_id,
        base_topic="twc3",
        polling=PollingConfig(**polling),
        fetcher=unit,
        outbox=outbox,
        registry=IdRegistry(),
        clock=time_source.clock,
        sleep=time_source.sleep,
        backoff=Backoff(initial=2.0, maximum=60.0, jitter=0.0),
    )
    return poller, unit, time_source, outbox


async def poll_until(poller: ConnectorPoller, time_source: FakeTime, seconds: float) -> None:
    end = time_source.now + seconds
    for _ in range(100_000):  # bounded: each poll advances the fake clock
        if time_source.now >= end:
            return
        await poller.poll_once()
    pytest.fail("poller did not advance the clock")


async def test_start_reads_version_first_then_every_endpoint_a_second_apart() -> None:
    """At start all four endpoints are read once, version first, at least 1 s apart."""
    poller, unit, _, _ = make_poller()
    for _ in range(4):
        await poller.poll_once()
    assert [endpoint for _, endpoint in unit.requests] == [
        "version",
        "vitals",
        "lifetime",
        "wifi_status",
    ]
    times = [at for at, _ in unit.requests]
    assert all(later - earlier >= MIN_REQUEST_GAP_S for earlier, later in pairwise(times))


@pytest.mark.parametrize(
    ("answer_s", "period_s"),
    [(0.05, MIN_REQUEST_GAP_S), (0.5, MIN_REQUEST_GAP_S), (2.0, 2.0 + MIN_IDLE_S)],
)
async def test_request_period_counts_from_the_start_and_a_slow_unit_gets_a_rest(
    answer_s: float, period_s: float
) -> None:
    """The 1 s floor counts from the start of the previous request.

    At a 1 s interval a unit answering in 0.5 s is still asked every 1 s, not every 1.5 s; one
    answering in 2 s is asked again MIN_IDLE_S after its answer, never while it is answering.
    """
    poller, unit, time_source, _ = make_poller(vitals_s=1, vitals_idle_s=1)
    unit.bodies["vitals"] = json.dumps(dict(VITALS_IDLE, vehicle_connected=True)).encode()
    real_fetch = unit.fetch

    async def slow_fetch(endpoint: Endpoint) -> bytes:
        body = await real_fetch(endpoint)
        time_source.now += answer_s - 0.05
        return body

    unit.fetch = slow_fetch  # type: ignore[method-assign]
    await poll_until(poller, time_source, 60)
    vitals = [at for at, endpoint in unit.requests if endpoint == "vitals"][2:]
    gaps = [b - a for a, b in pairwise(vitals)]
    assert len(gaps) > 10
    assert all(gap == pytest.approx(period_s) for gap in gaps), gaps


@pytest.mark.parametrize("late_s", [0.03, 0.3])
async def test_late_wake_ups_do_not_stretch_the_period(late_s: float) -> None:
    """A busy loop that wakes the poller late does not slow it: the 1 s grid holds on average.

    Waking 30 ms late every time, a unit is still read 60 times a minute; each start stays at
    least MIN_START_GAP_S after the previous one, so a very late start is not made up in a burst.
    """
    poller, unit, time_source, _ = make_poller(vitals_s=1, vitals_idle_s=1)
    unit.bodies["vitals"] = json.dumps(dict(VITALS_IDLE, vehicle_connected=True)).encode()

    async def late_sleep(seconds: float) -> None:
        time_source.now += seconds + late_s

    poller._sleep = late_sleep
    await poll_until(poller, time_source, 120)
    starts = [at for at, _ in unit.requests][4:]  # every endpoint shares the 1 s floor
    gaps = [b - a for a, b in pairwise(starts)]
    assert len(gaps) > 50
    assert all(gap >= MIN_START_GAP_S - 1e-9 for gap in gaps), gaps
    average = (starts[-1] - starts[0]) / len(gaps)
    assert average == pytest.approx(max(1.0, MIN_START_GAP_S + late_s), rel=0.01)


async def test_vitals_use_idle_interval_without_vehicle_and_fast_interval_with_one() -> None:
    """Vitals are read every vitals_idle_s while unplugged and every vitals_s once plugged in."""
    poller, unit, time_source, _ = make_poller(vitals_s=5, vitals_idle_s=15)
    await poll_until(poller, time_source, 120)
    idle_reads = [at for at, endpoint in unit.requests if endpoint == "vitals"]
    gaps = [b - a for a, b in pairwise(idle_reads)]
    assert gaps
    assert all(14 <= gap <= 16.5 for gap in gaps)

    plugged = dict(VITALS_IDLE, vehicle_connected=True)
    unit.bodies["vitals"] = json.dumps(plugged).encode()
    unit.requests.clear()
    await poll_until(poller, time_source, 120)
    fast_reads = [at for at, endpoint in unit.requests if endpoint == "vitals"]
    fast_gaps = [b - a for a, b in pairwise(fast_reads)][1:]
    assert fast_gaps
    assert all(4.5 <= gap <= 6.5 for gap in fast_gaps)


async def test_other_endpoints_follow_their_own_intervals() -> None:
    """Lifetime and wifi_status are read about once a minute, version once an hour."""
    poller, unit, time_source, _ = make_poller()
    await poll_until(poller, time_source, 600)
    counts = {
        name: sum(1 for _, e in unit.requests if e == name)
        for name in ("lifetime", "wifi_status", "version")
    }
    assert 9 <= counts["lifetime"] <= 11
    assert 9 <= counts["wifi_status"] <= 11
    assert counts["version"] == 1


async def test_successful_poll_publishes_body_fields_and_availability() -> None:
    """A good answer gives the whole body, one topic per non-null field, and availability online."""
    poller, _, _, outbox = make_poller()
    for _ in range(4):
        await poller.poll_once()
    assert outbox.get("twc3/garage/availability") == "online"
    assert json.loads(outbox.get("twc3/garage/vitals") or "") == VITALS_IDLE
    assert outbox.get("twc3/garage/vitals/grid_v") == "231.5"
    assert outbox.get("twc3/garage/vitals/contactor_closed") == "false"
    assert outbox.get("twc3/garage/vitals/current_alerts") == "[]"
    assert outbox.get("twc3/garage/vitals/future_field") == '{"x":1}'
    assert outbox.get("twc3/garage/version/serial_number") == "TEST0001"
    assert outbox.get("twc3/garage/lifetime/avg_startup_temp") is None
    assert json.loads(outbox.get("twc3/garage/lifetime") or "")["avg_startup_temp"] is None


async def test_unreachable_unit_goes_offline_after_three_failures_and_backs_off() -> None:
    """Availability turns offline only at the third consecutive failure; delays grow to the cap."""
    poller, unit, time_source, outbox = make_poller()
    for _ in range(4):
        await poller.poll_once()
    unit.failure = lambda endpoint: TwcUnreachableError("connection refused", endpoint)
    await poller.poll_once()
    await poller.poll_once()
    assert outbox.get("twc3/garage/availability") == "online"
    await poller.poll_once()
    assert outbox.get("twc3/garage/availability") == "offline"
    assert outbox.get("twc3/garage/poller/last_error") == "vitals: connection refused"
    # Over ten minutes the capped backoff allows only a bounded number of attempts.
    unit.requests.clear()
    await poll_until(poller, time_source, 600)
    assert 8 <= len(unit.requests) <= 16
    times = [at for at, _ in unit.requests]
    assert max(b - a for a, b in pairwise(times)) <= 60.5


async def test_recovery_sets_online_at_the_first_good_answer_and_resets_backoff() -> None:
    """The first good answer after an outage publishes online and polling returns to normal pace."""
    poller, unit, time_source, outbox = make_poller()
    unit.failure = lambda endpoint: TwcUnreachableError("timeout", endpoint)
    await poll_until(poller, time_source, 300)
    assert outbox.get("twc3/garage/availability") == "offline"
    unit.failure = None
    await poller.poll_once()
    assert outbox.get("twc3/garage/availability") == "online"
    assert poller.status.failure_streak == 0
    unit.requests.clear()
    await poll_until(poller, time_source, 60)
    assert len(unit.requests) >= 5


async def test_unparsable_vitals_keep_last_good_state_and_are_counted() -> None:
    """Garbage from vitals leaves the last good values in place and counts a parse error."""
    poller, unit, time_source, outbox = make_poller()
    for _ in range(4):
        await poller.poll_once()
    unit.bodies["vitals"] = b"<html>oops</html>"
    await poll_until(poller, time_source, 40)
    assert outbox.get("twc3/garage/vitals/grid_v") == "231.5"
    assert int(outbox.get("twc3/garage/poller/parse_errors") or "0") >= 1


async def test_http_error_on_secondary_endpoint_does_not_mark_unit_offline() -> None:
    """A 500 from wifi_status is counted but the unit stays online while vitals answer."""
    poller, unit, time_source, outbox = make_poller()
    original = unit.fetch

    async def wifi_fails(endpoint: Endpoint) -> bytes:
        if endpoint == "wifi_status":
            unit.requests.append((time_source.now, endpoint))
            raise TwcBadResponseError("unexpected response: HTTP 500", endpoint)
        return await original(endpoint)

    unit.fetch = wifi_fails  # type: ignore[method-assign]
    await poll_until(poller, time_source, 300)
    assert outbox.get("twc3/garage/availability") == "online"
    assert int(outbox.get("twc3/garage/poller/failed_requests") or "0") >= 1


async def test_failed_version_is_retried_with_exponential_capped_backoff_reset_on_success() -> None:
    """HTTP 500 from version: asked again after 2, 4, 8 ... s up to backoff_max_s, not version_s.

    Vitals keep answering meanwhile; once version answers, the next failure starts at 2 s again.
    """
    poller, unit, time_source, _ = make_poller()  # backoff 2 s doubling up to 60 s, no jitter
    original = unit.fetch
    failing = [True]

    async def version_fails(endpoint: Endpoint) -> bytes:
        if endpoint == "version" and failing[0]:
            unit.requests.append((time_source.now, endpoint))
            raise TwcBadResponseError("unexpected response: HTTP 500", endpoint)
        return await original(endpoint)

    unit.fetch = version_fails  # type: ignore[method-assign]
    await poll_until(poller, time_source, 300)
    asked = [at for at, endpoint in unit.requests if endpoint == "version"]
    gaps = [later - earlier for earlier, later in pairwise(asked)]
    # A retry may wait up to ~2 s more for another endpoint's read (one a second).
    expected = [2, 4, 8, 16, 32, 60, 60]
    assert len(gaps) >= len(expected)
    assert all(want <= gap <= want + 2.5 for gap, want in zip(gaps, expected, strict=False)), gaps
    assert poller.status.online is True
    failing[0] = False
    await poll_until(poller, time_source, 11)
    assert poller.status.serial == "TEST0001"
    failing[0] = True
    poller._due["version"] = time_source.now  # its next hourly read, now
    await poll_until(poller, time_source, 5)
    asked = [at for at, endpoint in unit.requests if endpoint == "version"]
    assert 2 <= asked[-1] - asked[-2] <= 4.5  # the backoff starts over at 2 s


async def test_topic_id_comes_from_the_serial_when_not_configured() -> None:
    """Without id or name the serial number in lower case names the topics."""
    poller, _, _, outbox = make_poller(configured_id=None)
    for _ in range(4):
        await poller.poll_once()
    assert outbox.get("twc3/test0001/availability") == "online"
    assert outbox.get("twc3/test0001/vitals/grid_v") == "231.5"


async def test_same_topic_id_claimed_twice_publishes_only_the_first_unit() -> None:
    """A second unit that would get an id already in use publishes nothing under it."""
    registry = IdRegistry()
    assert registry.claim("garage", "first") is None
    assert registry.claim("garage", "second") == "first"
    assert registry.claim("garage", "first") is None


async def test_start_delay_spreads_the_first_request() -> None:
    """A poller with a start delay makes its first request that much later, then keeps its period.

    So units of one bridge do not all ask at the same moment every interval.
    """
    time_source = FakeTime()
    unit = FakeUnit(time_source)
    start = time_source.now
    poller = ConnectorPoller(
        label="garage",
        configured_id="garage",
        base_topic="twc3",
        polling=PollingConfig(vitals_s=1, vitals_idle_s=1),
        fetcher=unit,
        outbox=Outbox(clock=time_source.clock),
        registry=IdRegistry(),
        clock=time_source.clock,
        sleep=time_source.sleep,
        start_delay_s=0.4,
    )
    for _ in range(6):
        await poller.poll_once()
    times = [at - start for at, _ in unit.requests]
    assert times[0] == pytest.approx(0.4)
    assert all(t % 1 == pytest.approx(0.4) for t in times), times


def test_bridge_spreads_its_units_over_one_vitals_interval_in_slots(tmp_path: Path) -> None:
    """Units start in START_SLOTS groups a tenth of the vitals interval apart."""
    config = BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(tmp_path)},
            "polling": {"vitals_s": 2},
            "connectors": [
                {"host": f"192.0.2.{i}", "id": f"u{i}"} for i in range(1, 2 * START_SLOTS + 2)
            ],
        }
    )
    bridge = Bridge(config, clock=lambda: 1000.0)  # one instant for all: only the slots differ
    firsts = [
        poller.next_request()[1] - bridge.pollers[0].next_request()[1] for poller in bridge.pollers
    ]
    slot = 2 / START_SLOTS
    assert firsts[:START_SLOTS] == pytest.approx([i * slot for i in range(START_SLOTS)])
    assert firsts[START_SLOTS:] == pytest.approx(firsts[: START_SLOTS + 1])


async def test_absurd_values_warn_once_per_field_and_stay_raw_on_their_topics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Uptime 2**64-1 and grid 1e308: one warning each, raw topics kept, no derived last_boot."""
    poller, unit, time_source, outbox = make_poller(vitals_s=1, vitals_idle_s=1)
    absurd = dict(VITALS_IDLE, uptime_s=2**64 - 1, grid_v=1e308, evse_state="four")
    unit.bodies["vitals"] = json.dumps(absurd).encode()
    with caplog.at_level("WARNING", logger="bridge.runtime.poller"):
        await poll_until(poller, time_source, 30)
    vitals_reads = [endpoint for _, endpoint in unit.requests if endpoint == "vitals"]
    assert len(vitals_reads) > 5
    warnings = [r.getMessage() for r in caplog.records if "derived values treat" in r.message]
    assert len(warnings) == 3, warnings
    (uptime,) = [w for w in warnings if "uptime_s" in w]
    assert "vitals field uptime_s has a value outside physical sense (18446744073709551615)" in (
        uptime
    )
    assert "raw value is still published on its topic" in uptime
    assert any("evse_state has a value of unexpected type" in w for w in warnings)
    assert outbox.get("twc3/garage/vitals/uptime_s") == str(2**64 - 1)
    assert outbox.get("twc3/garage/vitals/grid_v") == "1" + "0" * 308
    assert outbox.get("twc3/garage/derived/last_boot") is None
    assert outbox.get("twc3/garage/availability") == "online"
