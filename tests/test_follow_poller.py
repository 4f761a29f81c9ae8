"""A followed unit's poller on a fake clock: moves, "not found", and a wrong serial refused."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest

from bridge.adapters.twc import TwcBadResponseError, TwcUnreachableError
from bridge.core.backoff import Backoff
from bridge.core.config import PollingConfig
from bridge.core.models import ENDPOINTS, Endpoint
from bridge.core.outbox import Outbox
from bridge.runtime.poller import ConnectorPoller, IdRegistry
from tests.test_poller import FakeTime

OLD = "192.0.2.50"
NEW = "192.0.2.77"
SERIAL = "PGT0000000001"
OTHER_SERIAL = "PGT0000000002"
VITALS = {"contactor_closed": False, "vehicle_connected": False, "grid_v": 231.5}
LIFETIME = {"energy_wh": 1000}
WIFI = {"wifi_rssi": -55}


def bodies(serial: str) -> dict[str, bytes]:
    """One unit's four answers."""
    version = {
        "firmware_version": "25.34.1",
        "part_number": "1529455-02-D",
        "serial_number": serial,
    }
    return {
        "vitals": json.dumps(VITALS).encode(),
        "version": json.dumps(version).encode(),
        "lifetime": json.dumps(LIFETIME).encode(),
        "wifi_status": json.dumps(WIFI).encode(),
    }


class FakeNetwork:
    """Units by address; the fetcher asks whichever address it was last pointed at."""

    def __init__(self, target: str | None) -> None:
        self.units: dict[str, dict[str, bytes]] = {}
        self.target = target
        self.requests: list[tuple[str | None, Endpoint]] = []

    def retarget(self, host: str) -> None:
        """Point the next request at ``host`` (what TwcClient.retarget does)."""
        self.target = host

    async def fetch(self, endpoint: Endpoint) -> bytes:
        """Answer as the unit at the target address, or time out when there is none."""
        self.requests.append((self.target, endpoint))
        unit = self.units.get(self.target or "")
        if unit is None:
            raise TwcUnreachableError("timeout", endpoint)
        return unit[endpoint]


def make_poller(
    *,
    address: str | None = OLD,
    serial: str | None = SERIAL,
    following: bool = True,
    time_source: FakeTime | None = None,
    fallback: str | None = None,
) -> tuple[ConnectorPoller, FakeNetwork, FakeTime, Outbox]:
    time_source = time_source or FakeTime()
    network = FakeNetwork(address)
    outbox = Outbox(clock=time_source.clock)
    poller = ConnectorPoller(
        label="garage",
        configured_id="garage",
        base_topic="twc3",
        polling=PollingConfig(offline_after=3, backoff_max_s=60),
        fetcher=network,
        outbox=outbox,
        registry=IdRegistry(),
        clock=time_source.clock,
        sleep=time_source.sleep,
        backoff=Backoff(initial=2.0, maximum=60.0, jitter=0.0),
        address=address,
        serial=serial,
        retarget=network.retarget,
        following=following,
        fallback=fallback,
    )
    return poller, network, time_source, outbox


async def polls(poller: ConnectorPoller, count: int) -> None:
    for _ in range(count):
        await poller.poll_once()


def events(outbox: Outbox) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in outbox.pending() if not m.retain]


async def test_a_lost_unit_moved_is_asked_at_the_new_address_next_version_first() -> None:
    poller, network, time_source, outbox = make_poller()
    network.units[OLD] = bodies(SERIAL)
    await polls(poller, 4)
    del network.units[OLD]  # the unit took another address
    await polls(poller, 4)
    assert poller.status.online is False
    assert outbox.get("twc3/garage/derived/reachability") == "timeout"
    lost_at = poller.unreachable_since()
    assert lost_at is not None
    assert lost_at < time_source.now
    network.units[NEW] = bodies(SERIAL)
    network.requests.clear()

    poller.move_to(NEW)

    assert poller.address == NEW
    assert outbox.get("twc3/garage/derived/reachability") == "moved"
    moved = [e for e in events(outbox) if e["type"] == "moved"]
    assert len(moved) == 1
    assert (moved[0]["from"], moved[0]["to"], moved[0]["unit"]) == (OLD, NEW, "garage")
    await poller.poll_once()
    assert network.requests == [(NEW, "version")]
    assert outbox.get("twc3/garage/derived/reachability") == "reachable"
    assert outbox.get("twc3/garage/availability") == "online"
    assert poller.unreachable_since() is None


async def test_a_failure_at_the_new_address_keeps_moved_until_a_good_answer() -> None:
    poller, network, _, outbox = make_poller()
    await polls(poller, 4)  # nobody at OLD: offline
    poller.move_to(NEW)
    await poller.poll_once()  # nobody at NEW yet either
    assert outbox.get("twc3/garage/derived/reachability") == "moved"
    network.units[NEW] = bodies(SERIAL)
    await polls(poller, 2)
    assert outbox.get("twc3/garage/derived/reachability") == "reachable"


async def test_move_to_cuts_the_backoff_wait_short() -> None:
    """A poller sleeping out a long backoff asks the new address as soon as it is moved."""
    time_source = FakeTime()
    poller, network, _, _ = make_poller(time_source=time_source)
    await polls(poller, 6)  # a long backoff is due now
    _, planned = poller.next_request()
    assert planned - time_source.now > 10
    never = asyncio.Event()

    async def blocking_sleep(_seconds: float) -> None:
        await never.wait()  # only a move ends this wait

    poller._sleep = blocking_sleep
    network.units[NEW] = bodies(SERIAL)
    network.requests.clear()
    waiting = asyncio.create_task(poller.poll_once())
    for _ in range(10):  # bounded: let the poll reach its sleep
        await asyncio.sleep(0)
    assert not waiting.done()
    poller.move_to(NEW)
    await asyncio.wait_for(waiting, timeout=5)  # the wait ended without the clock moving
    await poller.poll_once()
    assert network.requests == [(NEW, "version")]
    assert poller.status.online is True


async def test_cancelling_a_sleeping_poller_still_cancels_it() -> None:
    poller, _, _, _ = make_poller()
    await polls(poller, 4)
    never = asyncio.Event()

    async def blocking_sleep(_seconds: float) -> None:
        await never.wait()

    poller._sleep = blocking_sleep
    waiting = asyncio.create_task(poller.poll_once())
    for _ in range(10):
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_an_answer_from_before_the_move_is_not_counted() -> None:
    """A request in flight to the old address when the unit is moved says nothing."""
    poller, network, _, _ = make_poller()

    async def moved_meanwhile(endpoint: Endpoint) -> bytes:
        poller.move_to(NEW)
        raise TwcUnreachableError("timeout", endpoint)

    network.fetch = moved_meanwhile  # type: ignore[method-assign]
    await poller.poll_once()
    assert poller.status.failure_streak == 0
    assert poller.status.failed_requests == 0


async def test_the_move_is_one_log_line_saying_how_to_make_it_permanent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller, _, _, _ = make_poller()
    caplog.set_level(logging.INFO)
    poller.move_to(NEW)
    poller.move_to(NEW)  # already there: nothing more
    lines = [r.getMessage() for r in caplog.records if "moved" in r.getMessage()]
    expected = (
        f"unit garage (serial {SERIAL}) moved from {OLD} to {NEW}; topics, entities and energy "
        f'total kept; to make it permanent set host = "{NEW}"'
    )
    assert lines == [expected]


async def test_a_bad_address_is_not_moved_to(caplog: pytest.LogCaptureFixture) -> None:
    poller, _, _, _ = make_poller()
    poller.move_to("http://192.0.2.9/")
    assert poller.address == OLD
    assert "not moved to" in caplog.text


async def test_another_serial_at_the_address_is_refused_while_following() -> None:
    poller, network, _, outbox = make_poller()
    network.units[OLD] = bodies(OTHER_SERIAL)
    await polls(poller, 6)
    assert poller.status.serial is None
    assert poller.status.online is False
    assert not poller.duplicate
    assert all(endpoint == "version" for _, endpoint in network.requests)
    assert outbox.get("twc3/garage/vitals") is None
    assert outbox.get("twc3/garage/availability") == "offline"
    assert outbox.get("twc3/garage/derived/reachability") == "unexpected response"
    assert outbox.get("twc3/garage/poller/last_error") == (
        f"version: unexpected response: another Wall Connector (serial {OTHER_SERIAL}) answers here"
    )
    assert poller.unreachable_since() is not None


async def test_a_learned_serial_is_wanted_too() -> None:
    """Without a configured serial, the one learned is followed: another one is refused."""
    poller, network, _, outbox = make_poller(serial=None)
    assert poller.wanted_serial is None
    network.units[OLD] = bodies(SERIAL)
    await polls(poller, 4)
    assert poller.wanted_serial == SERIAL
    del network.units[OLD]
    await polls(poller, 1)  # an outage: the next answer must show the serial again
    network.units[OLD] = bodies(OTHER_SERIAL)
    vitals_before = outbox.get("twc3/garage/vitals")
    await polls(poller, 3)
    assert poller.status.serial == SERIAL
    assert outbox.get("twc3/garage/vitals") == vitals_before
    assert [endpoint for _, endpoint in network.requests[-3:]] == ["version"] * 3


async def test_another_serial_is_adopted_when_not_following(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller, network, _, _ = make_poller(serial=None, following=False)
    network.units[OLD] = bodies(SERIAL)
    await polls(poller, 4)
    network.units[OLD] = bodies(OTHER_SERIAL)
    poller._due["version"] = 0.0  # ask version next
    await poller.poll_once()
    assert poller.status.serial == OTHER_SERIAL
    assert poller.status.online is True
    assert "serial number changed" in caplog.text


async def test_a_unit_without_an_address_is_not_found_and_never_asked() -> None:
    time_source = FakeTime()
    start = time_source.now
    poller, network, _, outbox = make_poller(address=None, time_source=time_source)
    assert poller.address is None
    assert poller.unreachable_since() == start
    await polls(poller, 5)
    assert poller.attempted == set(ENDPOINTS)  # startup is not held up by it
    assert network.requests == []
    assert poller.requests_made == 0
    assert poller.status.failed_requests == 0
    assert poller.status.online is False
    assert outbox.get("twc3/garage/availability") == "offline"
    assert outbox.get("twc3/garage/derived/reachability") == "not found"
    assert poller.unreachable_since() == start


async def test_a_unit_found_by_serial_alone_gets_its_id_from_the_serial() -> None:
    time_source = FakeTime()
    network = FakeNetwork(None)
    outbox = Outbox(clock=time_source.clock)
    poller = ConnectorPoller(
        label="serial PGT0000000001",
        configured_id=None,
        base_topic="twc3",
        polling=PollingConfig(),
        fetcher=network,
        outbox=outbox,
        registry=IdRegistry(),
        clock=time_source.clock,
        sleep=time_source.sleep,
        serial=SERIAL,
        retarget=network.retarget,
        following=True,
    )
    assert poller.topics is not None
    assert poller.topics.unit_id == "pgt0000000001"
    network.units[NEW] = bodies(SERIAL)
    poller.move_to(NEW)
    await polls(poller, 4)
    assert network.requests[0] == (NEW, "version")
    assert outbox.get("twc3/pgt0000000001/availability") == "online"


def test_the_followed_unit_interface_is_there() -> None:
    poller, _, _, _ = make_poller()
    assert (poller.wanted_serial, poller.address, poller.source_address) == (SERIAL, OLD, None)
    assert poller.unreachable_since() is None


class MovingTime(FakeTime):
    """Fake time whose next sleep ends with a move (the follower acting meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.move: Callable[[], object] | None = None

    async def sleep(self, seconds: float) -> None:
        """Advance the fake time, then make the pending move."""
        await super().sleep(seconds)
        move, self.move = self.move, None
        if move is not None:
            move()


async def test_a_healthy_unit_moved_while_it_sleeps_is_asked_its_version_first() -> None:
    """The endpoint planned before the sleep is never sent to the new address unchecked."""
    time_source = MovingTime()
    poller, network, _, outbox = make_poller(time_source=time_source)
    network.units[OLD] = bodies(SERIAL)
    await polls(poller, 4)
    stranger = bodies(OTHER_SERIAL)
    stranger["vitals"] = json.dumps({**VITALS, "grid_v": 999.0}).encode()
    network.units[NEW] = stranger
    time_source.move = lambda: poller.move_to(NEW)
    network.requests.clear()
    await polls(poller, 3)
    assert network.requests[0] == (NEW, "version")
    assert outbox.get("twc3/garage/vitals/grid_v") != "999"


async def test_a_web_server_at_the_old_address_gets_the_backoff_not_a_request_a_second() -> None:
    """While who answers is checked, an answer that is no Wall Connector's is a failure."""
    poller, network, time_source, _ = make_poller()
    network.units[OLD] = bodies(SERIAL)
    await polls(poller, 4)
    del network.units[OLD]
    await polls(poller, 2)  # an outage: who answers here is checked first from now on

    async def not_found(endpoint: Endpoint) -> bytes:
        network.requests.append((network.target, endpoint))
        raise TwcBadResponseError("unexpected response: HTTP 404", endpoint)

    network.fetch = not_found  # type: ignore[method-assign]
    network.requests.clear()
    start = time_source.now
    while time_source.now - start < 600:
        await poller.poll_once()
    # Backoff 2 s doubling to 60 s: about 15 requests in 10 minutes, not 600.
    assert len(network.requests) < 30, len(network.requests)
    assert poller.unreachable_since() is not None


async def test_a_version_answer_without_a_serial_is_not_this_unit() -> None:
    """Any device answering JSON at the old address is refused, and the unit stays lost."""
    poller, network, _, outbox = make_poller()
    network.units[OLD] = bodies(SERIAL)
    await polls(poller, 4)
    del network.units[OLD]
    await polls(poller, 4)
    network.units[OLD] = dict.fromkeys(ENDPOINTS, b'{"status": "ok"}')
    await polls(poller, 8)
    assert outbox.get("twc3/garage/vitals/status") is None
    assert poller.unreachable_since() is not None
    assert "no serial number" in str(poller.status.last_error)


async def test_a_unit_not_at_its_last_address_is_tried_at_the_configured_host_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The owner gave it a reservation and wrote the new host: no search needed."""
    caplog.set_level(logging.INFO)
    poller, network, _, outbox = make_poller(address=NEW, fallback=OLD)
    network.units[OLD] = bodies(SERIAL)
    await polls(poller, 3)
    assert [target for target, _ in network.requests[:2]] == [NEW, OLD]
    assert network.requests[1] == (OLD, "version")
    assert poller.address == OLD
    assert poller.unreachable_since() is None
    assert "trying the configured host" in caplog.text
    assert "moved" not in caplog.text
    assert outbox.get("twc3/garage/derived/reachability") != "moved"


async def test_a_unit_found_at_its_last_address_keeps_it() -> None:
    poller, network, _, _ = make_poller(address=NEW, fallback=OLD)
    network.units[NEW] = bodies(SERIAL)
    await polls(poller, 4)
    network.units.pop(NEW)
    await polls(poller, 4)  # a later outage is the follower's business, not the fallback's
    assert {target for target, _ in network.requests} == {NEW}
