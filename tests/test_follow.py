"""The follower: searches when a unit is due, moves only by serial, counts, keeps to its budget."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from bridge.adapters.survey import Found, ScanReport
from bridge.core.config import DiscoveryConfig
from bridge.core.networks import IPAddress
from bridge.core.outbox import Outbox
from bridge.presentation.discovery import Site, bridge_configs
from bridge.presentation.topics import TopicLayout
from bridge.runtime.follow import Follower, same_address

SERIAL_A, SERIAL_B, SERIAL_NEW = "PGT22213075021", "B7S24024J01612", "NEW00000000001"
LAYOUT = TopicLayout("twc3")
HOUR_S = 3600.0


@dataclass
class FakeUnit:
    """A polled unit as the follower sees it."""

    label: str
    serial: str | None
    polled_at: str | None
    source: str | None = None
    lost_at: float | None = None
    moves: list[str] = field(default_factory=list)

    @property
    def wanted_serial(self) -> str | None:
        """The serial it is followed by."""
        return self.serial

    @property
    def address(self) -> str | None:
        """Where it is polled."""
        return self.polled_at

    @property
    def source_address(self) -> str | None:
        """Its configured source address."""
        return self.source

    def unreachable_since(self) -> float | None:
        """When its outage began."""
        return self.lost_at

    def move_to(self, host: str) -> bool:
        """Record the move; it answers there."""
        self.moves.append(host)
        self.polled_at = host
        self.lost_at = None  # it answers at its new address
        return True


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The test's time."""
        return self.now


@dataclass
class FakeSurvey:
    """Answers with ``answers`` (address -> serial) among the addresses it is given."""

    answers: dict[str, str]
    port: int = 80
    calls: list[tuple[int, str | None]] = field(default_factory=list)
    running: int = 0
    most_running: int = 0
    gate: asyncio.Event | None = None

    async def __call__(
        self,
        addresses: Sequence[IPAddress],
        port: int,
        timeout_s: float,  # noqa: ARG002 - the real survey's signature
        concurrency: int,  # noqa: ARG002 - the real survey's signature
        *,
        source_address: str | None = None,
    ) -> ScanReport:
        """Found: the answers among ``addresses``; counts searches running at once."""
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.calls.append((len(addresses), source_address))
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            listed = {str(address) for address in addresses}
            found = [
                Found(ipaddress.ip_address(address), port, serial)
                for address, serial in sorted(self.answers.items())
                if address in listed
            ]
            return ScanReport(scanned=len(addresses), found=found)
        finally:
            self.running -= 1


@dataclass
class AddressBook:
    """Records what the follower asks the state file to keep."""

    kept: list[tuple[str, str]] = field(default_factory=list)

    def keep_address(self, serial: str, host: str) -> None:
        """Record it."""
        self.kept.append((serial, host))


def _config(**overrides: object) -> DiscoveryConfig:
    values: dict[str, object] = {"networks": ["127.0.0.0/29"], **overrides}
    return DiscoveryConfig.model_validate(values)


def _follower(
    units: list[FakeUnit],
    survey: FakeSurvey,
    *,
    clock: Clock | None = None,
    config: DiscoveryConfig | None = None,
) -> tuple[Follower, Outbox, AddressBook, list[Found]]:
    outbox, book = Outbox(), AddressBook()
    unclaimed: list[Found] = []
    follower = Follower(
        config or _config(),
        units=lambda: units,
        outbox=outbox,
        layout=LAYOUT,
        state_file=book,
        on_unclaimed=unclaimed.append,
        clock=clock or Clock(),
        survey=survey,
    )
    return follower, outbox, book, unclaimed


async def test_a_unit_found_at_a_new_address_is_moved_and_remembered() -> None:
    clock = Clock()
    unit = FakeUnit("garage", SERIAL_A, "127.0.0.2", lost_at=0.0)
    survey = FakeSurvey({"127.0.0.5": SERIAL_A})
    follower, _, book, unclaimed = _follower([unit], survey, clock=clock)
    clock.now = 300.0
    assert follower.due_units(clock.now) == [unit]
    await follower.search()
    assert unit.moves == ["127.0.0.5"]
    assert book.kept == [(SERIAL_A, "127.0.0.5")]
    assert unclaimed == []


async def test_a_different_serial_is_never_adopted() -> None:
    """The unit's old address now answers with another serial: that one is not ours."""
    unit = FakeUnit("garage", SERIAL_A, "127.0.0.2", lost_at=0.0)
    other = FakeUnit("driveway", SERIAL_B, "127.0.0.3", lost_at=0.0)
    survey = FakeSurvey({"127.0.0.2": SERIAL_NEW, "127.0.0.4": SERIAL_B})
    follower, _, book, unclaimed = _follower([unit, other], survey)
    await follower.search()
    assert unit.moves == []
    assert other.moves == ["127.0.0.4"]  # driveway's serial answered elsewhere: it moved
    assert book.kept == [(SERIAL_B, "127.0.0.4")]
    assert [found.serial for found in unclaimed] == [SERIAL_NEW]


async def test_a_unit_answering_where_it_is_polled_is_not_moved() -> None:
    """Found both at its address and at another: it stays (port 80 spelt either way)."""
    unit = FakeUnit("garage", SERIAL_A, "127.0.0.2:80", lost_at=0.0)
    survey = FakeSurvey({"127.0.0.2": SERIAL_A, "127.0.0.6": SERIAL_A})
    follower, _, book, _ = _follower([unit], survey)
    await follower.search()
    assert unit.moves == []
    assert book.kept == []


async def test_a_move_on_another_port_keeps_the_port() -> None:
    unit = FakeUnit("garage", SERIAL_A, "127.0.0.2:8080", lost_at=0.0)
    survey = FakeSurvey({"127.0.0.3": SERIAL_A})
    follower, _, _, _ = _follower([unit], survey, config=_config(port=8080))
    await follower.search()
    assert unit.moves == ["127.0.0.3:8080"]


async def test_units_without_a_serial_are_not_followed() -> None:
    unit = FakeUnit("garage", None, "127.0.0.2", lost_at=0.0)
    follower, _, _, _ = _follower([unit], FakeSurvey({}))
    assert follower.due_units(10_000.0) == []


async def test_counters_are_published_on_the_bridge_search_topics() -> None:
    unit = FakeUnit("garage", SERIAL_A, None, lost_at=0.0)
    survey = FakeSurvey({"127.0.0.3": SERIAL_A, "127.0.0.4": SERIAL_NEW})
    config = _config(networks=["127.0.0.0/29", "127.0.1.0/30"])
    follower, outbox, _, _ = _follower([unit], survey, config=config)
    await follower.search()
    await follower.search()
    assert outbox.get(LAYOUT.bridge_search("searches")) == "2"
    assert outbox.get(LAYOUT.bridge_search("addresses_asked")) == str(2 * (6 + 2))
    assert outbox.get(LAYOUT.bridge_search("units_found")) == "4"
    assert LAYOUT.bridge_search("searches") == "twc3/bridge/discovery/searches"


async def test_each_network_is_probed_from_the_source_address_inside_it() -> None:
    unit = FakeUnit("carport", SERIAL_A, "127.0.1.1", source="127.0.1.2", lost_at=0.0)
    survey = FakeSurvey({})
    config = _config(networks=["127.0.0.0/29", "127.0.1.0/30"])
    follower, _, _, _ = _follower([unit], survey, config=config)
    await follower.search()
    assert survey.calls == [(6, None), (2, "127.0.1.2")]


async def test_searches_never_overlap_even_when_units_become_due_meanwhile() -> None:
    """Two searches asked for at once run one after the other; units due meanwhile wait."""
    clock = Clock()
    first = FakeUnit("garage", SERIAL_A, "127.0.0.2", lost_at=0.0)
    second = FakeUnit("driveway", SERIAL_B, "127.0.0.3", lost_at=None)
    gate = asyncio.Event()
    survey = FakeSurvey({"127.0.0.4": SERIAL_A}, gate=gate)
    follower, _, _, _ = _follower([first, second], survey, clock=clock)
    clock.now = 300.0
    searches = [asyncio.create_task(follower.search()) for _ in range(3)]
    await asyncio.sleep(0)
    second.lost_at = clock.now  # lost during the search
    clock.now += 300.0
    gate.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*searches)
    assert survey.most_running == 1
    assert first.moves == ["127.0.0.4"]


async def test_run_searches_once_for_units_due_together_and_dispatches_unclaimed() -> None:
    clock = Clock()
    units = [FakeUnit(f"unit{n}", f"SERIAL{n}", f"127.0.0.{n}", lost_at=0.0) for n in (2, 3)]
    survey = FakeSurvey({"127.0.0.6": SERIAL_NEW})
    stop_at = 301.0

    async def fake_sleep(seconds: float) -> None:
        clock.now += seconds
        if clock.now > stop_at:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    outbox, book = Outbox(), AddressBook()
    unclaimed: list[Found] = []
    follower = Follower(
        _config(),
        units=lambda: units,
        outbox=outbox,
        layout=LAYOUT,
        state_file=book,
        on_unclaimed=unclaimed.append,
        clock=clock,
        sleep=fake_sleep,
        survey=survey,
    )
    with pytest.raises(asyncio.CancelledError):
        await follower.run()
    assert follower.counters.searches == 1
    assert survey.calls == [(6, None)]
    assert [found.serial for found in unclaimed] == [SERIAL_NEW]
    assert book.kept == []
    assert outbox.get(LAYOUT.bridge_search("searches")) == "1"


@pytest.mark.parametrize("units_lost", [1, 5, 40])
async def test_search_budget_over_an_hour(units_lost: int) -> None:
    """N units lost together over a simulated hour: the plan's searches, however many units.

    After 300 s, then 900 s later, then 1800 s later: at 300, 1200 and 3000 s.
    """
    clock = Clock()
    units = [
        FakeUnit(f"unit{n}", f"SERIAL{n}", f"127.0.0.{n % 6 + 1}", lost_at=0.0)
        for n in range(units_lost)
    ]
    searched_at: list[float] = []
    survey = FakeSurvey({})

    async def recording(*args: object, **kwargs: object) -> ScanReport:
        searched_at.append(clock.now)
        return await survey(*args, **kwargs)  # type: ignore[arg-type]

    async def fake_sleep(seconds: float) -> None:
        clock.now += seconds
        if clock.now > HOUR_S:
            raise asyncio.CancelledError

    follower = Follower(
        _config(),
        units=lambda: units,
        outbox=Outbox(),
        layout=LAYOUT,
        state_file=AddressBook(),
        on_unclaimed=lambda _found: None,
        clock=clock,
        sleep=fake_sleep,
        survey=recording,
    )
    with pytest.raises(asyncio.CancelledError):
        await follower.run()
    assert searched_at == [300.0, 1200.0, 3000.0]


async def test_a_unit_added_later_with_no_address_is_searched_at_once() -> None:
    clock = Clock()
    units: list[FakeUnit] = []
    follower, _, _, _ = _follower(units, FakeSurvey({}), clock=clock)
    clock.now = 50.0
    assert follower.due_units(clock.now) == []
    units.append(FakeUnit("by-serial", SERIAL_A, None, lost_at=50.0))
    assert follower.due_units(clock.now) == units


def test_search_counters_are_announced_only_while_searching() -> None:
    """Home Assistant gets the three counters, at the follower's topics, when [discovery] is on."""
    quiet = bridge_configs(Site("homeassistant", "twc3"), "device")
    searching = bridge_configs(Site("homeassistant", "twc3", searching=True), "device")
    (quiet_config,) = quiet.values()
    (search_config,) = searching.values()
    topics = {c["state_topic"] for c in search_config["components"].values()}
    assert topics == {
        LAYOUT.bridge_state,
        *(LAYOUT.bridge_search(name) for name in ("searches", "addresses_asked", "units_found")),
    }
    assert len(quiet_config["components"]) == 1


async def test_strangers_are_handed_on_after_the_moves() -> None:
    """A stranger at a unit's old address is judged once the unit was moved away from it."""
    unit = FakeUnit("garage", SERIAL_A, "127.0.0.2", lost_at=0.0)
    survey = FakeSurvey({"127.0.0.2": SERIAL_NEW, "127.0.0.5": SERIAL_A})
    seen_at_hand_over: list[str | None] = []
    follower = Follower(
        _config(),
        units=lambda: [unit],
        outbox=Outbox(),
        layout=LAYOUT,
        state_file=AddressBook(),
        on_unclaimed=lambda _found: seen_at_hand_over.append(unit.address),
        clock=Clock(),
        survey=survey,
    )
    await follower.search()
    assert unit.moves == ["127.0.0.5"]
    assert seen_at_hand_over == ["127.0.0.5"]


async def test_add_new_searches_at_start_and_then_every_interval() -> None:
    """With add_new the networks are searched for new units even while no unit is lost."""
    clock = Clock()
    survey = FakeSurvey({"127.0.0.3": SERIAL_NEW})
    follower, _, _, unclaimed = _follower(
        [], survey, clock=clock, config=_config(add_new=True, search_every_s=900)
    )
    assert follower.new_units_due(clock.now)
    await follower.search()
    assert [found.serial for found in unclaimed] == [SERIAL_NEW]
    clock.now = 899.0
    assert not follower.new_units_due(clock.now)
    clock.now = 900.0
    assert follower.new_units_due(clock.now)
    plain, _, _, _ = _follower([], FakeSurvey({}), clock=clock)
    assert not plain.new_units_due(clock.now)


async def test_a_unit_that_answers_is_never_moved() -> None:
    """Polled by a host name, it is found at its own address: that is no move."""
    unit = FakeUnit("garage", SERIAL_A, "twc-garage.lan", lost_at=None)
    lost = FakeUnit("driveway", SERIAL_B, "127.0.0.3", lost_at=0.0)
    survey = FakeSurvey({"127.0.0.2": SERIAL_A, "127.0.0.4": SERIAL_B})
    follower, _, book, unclaimed = _follower([unit, lost], survey)
    await follower.search()
    assert unit.moves == []
    assert book.kept == [(SERIAL_B, "127.0.0.4")]
    assert unclaimed == []


def test_addresses_are_compared_as_addresses() -> None:
    found = Found(ipaddress.ip_address("::1"), 80, SERIAL_A)
    assert same_address("[0:0::1]:80", found)
    assert same_address("::1", found)
    assert not same_address("[::1]:8080", found)
    assert not same_address("localhost", found)
    assert not same_address(None, found)


async def test_new_units_wait_until_the_connectors_told_their_serials() -> None:
    clock = Clock()
    ready = [False]
    follower = Follower(
        _config(add_new=True),
        units=list,
        outbox=Outbox(),
        layout=LAYOUT,
        state_file=AddressBook(),
        on_unclaimed=lambda _found: None,
        clock=clock,
        survey=FakeSurvey({}),
        ready=lambda: ready[0],
    )
    assert not follower.new_units_due(clock.now)
    ready[0] = True
    assert follower.new_units_due(clock.now)
