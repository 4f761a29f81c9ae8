"""Units found in the networks: added at run time with add_new, else suggested once in the log."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import bridge.runtime.found
import bridge.runtime.poller
from bridge.adapters.survey import Found, ScanReport
from bridge.adapters.twc import TwcClient
from bridge.core.config import BridgeConfig, ConnectorConfig
from bridge.core.derived import SessionEnergy
from bridge.core.networks import IPAddress
from bridge.runtime.app import Bridge
from bridge.runtime.statefile import StateFile
from bridge.sim.simulator import SimulatedUnit, simulated_serial
from tests.test_app import closed_port, simulated_client

LOGGER = "bridge.runtime"
CONFIGURED_HOST = "10.9.0.2"
FOUND_HOST = "10.9.0.7"
OTHER_HOST = "10.9.0.8"
CONFIGURED_SERIAL = simulated_serial(1)
FOUND_SERIAL = simulated_serial(7)
OTHER_SERIAL = simulated_serial(8)
LIMIT_S = 30.0
STEP_S = 0.02


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Startup asks each unit its endpoints ~1 s apart; the order matters here, not the pace."""
    monkeypatch.setattr(bridge.runtime.poller, "MIN_START_GAP_S", 0.05)
    monkeypatch.setattr(bridge.runtime.poller, "MIN_IDLE_S", 0.01)
    monkeypatch.setattr(bridge.runtime.poller, "MIN_REQUEST_GAP_S", 0.05)


def _units() -> dict[str, SimulatedUnit]:
    return {
        CONFIGURED_HOST: SimulatedUnit(CONFIGURED_SERIAL, seed=1),
        FOUND_HOST: SimulatedUnit(FOUND_SERIAL, seed=7),
        OTHER_HOST: SimulatedUnit(OTHER_SERIAL, seed=8),
    }


def _config(tmp_path: Path, *, add_new: bool, homie: bool = False) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(tmp_path)},
            "mqtt": {"host": "127.0.0.1", "port": closed_port()},
            "homie": {"enabled": homie},
            "discovery": {"networks": ["10.9.0.0/24"], "add_new": add_new},
            "connectors": [{"host": CONFIGURED_HOST, "id": "garage"}],
        }
    )


async def _asks_nothing(
    addresses: Sequence[IPAddress],
    port: int,  # noqa: ARG001 - the survey's signature
    timeout_s: float,  # noqa: ARG001
    concurrency: int,  # noqa: ARG001
    *,
    source_address: str | None = None,  # noqa: ARG001
) -> ScanReport:
    """A search of 10.9.0.0/24 that sends nothing (tests stay on loopback)."""
    return ScanReport(scanned=len(addresses))


def _bridge(config: BridgeConfig, units: dict[str, SimulatedUnit]) -> Bridge:
    return Bridge(config, client_factory=lambda c: simulated_client(units, c), survey=_asks_nothing)


def _found(host: str, serial: str, port: int = 80) -> Found:
    return Found(ipaddress.IPv4Address(host), port, serial, "1529455-02-D", "24.44.3")


async def _run_until(
    instance: Bridge, done: Callable[[], bool], *, then: Callable[[], None] | None = None
) -> None:
    """Run the bridge until ``done`` (after ``then`` once it runs), then stop it cleanly."""
    stop = asyncio.Event()
    async with asyncio.timeout(LIMIT_S), asyncio.TaskGroup() as group:
        group.create_task(instance.run(stop))
        await asyncio.sleep(0)
        if then is not None:
            then()
        for _ in range(int(LIMIT_S / STEP_S)):
            if done():
                break
            await asyncio.sleep(STEP_S)
        stop.set()


def _discovery_of(instance: Bridge, unit_id: str) -> list[str]:
    return [
        topic
        for topic in instance.outbox.retained_topics()
        if topic.startswith("homeassistant/") and f"twc3_{unit_id}" in topic
    ]


def _on_disk(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))
    return data


# --- add_new: polled, published, announced, remembered ------------------------------------------


async def test_add_new_starts_exactly_one_poller_that_publishes_and_is_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    units = _units()
    instance = _bridge(_config(tmp_path, add_new=True, homie=True), units)
    unit_id = FOUND_SERIAL.lower()
    availability = f"twc3/{unit_id}/availability"

    def add_twice() -> None:
        instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
        instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))  # the same unit again

    await _run_until(
        instance,
        lambda: (
            instance.outbox.get(availability) == "online" and bool(_discovery_of(instance, unit_id))
        ),
        then=add_twice,
    )
    # A second Found of the same unit, now at another address, adds nothing either.
    instance.add_found_unit(_found(OTHER_HOST, FOUND_SERIAL))
    assert len(instance.pollers) == 2
    assert len(instance.clients) == 2
    assert list(instance.new_units.pollers) == [FOUND_SERIAL]
    poller = instance.new_units.pollers[FOUND_SERIAL]
    assert "found" in poller.label
    assert poller.status.serial == FOUND_SERIAL
    assert instance.outbox.get(f"twc3/{unit_id}/derived/energy_wh") is not None
    assert instance.homie is not None
    assert unit_id in instance.homie.node_ids
    added = [r.getMessage() for r in caplog.records if "added as" in r.getMessage()]
    assert added == [
        (
            f"Wall Connector {FOUND_SERIAL} found at {FOUND_HOST} and added as {unit_id} "
            "([discovery] add_new)"
        )
    ]
    saved = _on_disk(tmp_path)
    assert saved["found_units"] == {FOUND_SERIAL: FOUND_HOST}
    assert saved["published"][unit_id] == unit_id
    assert all(
        owner == unit_id
        for topic, owner in saved["discovery"]["topics"].items()
        if unit_id in topic
    )


async def test_a_found_unit_comes_back_after_a_restart_and_is_not_added_again(
    tmp_path: Path,
) -> None:
    units = _units()
    first = _bridge(_config(tmp_path, add_new=True), units)
    unit_id = FOUND_SERIAL.lower()
    await _run_until(
        first,
        lambda: bool(_discovery_of(first, unit_id)),
        then=lambda: first.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL)),
    )
    announced = set(_discovery_of(first, unit_id))

    second = _bridge(_config(tmp_path, add_new=True), units)
    assert list(second.new_units.pollers) == [FOUND_SERIAL]
    assert second.ghosts == {}  # a restored found unit counts as configured
    assert "found" in second.new_units.pollers[FOUND_SERIAL].label
    second.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
    assert len(second.pollers) == 2
    await _run_until(second, lambda: set(_discovery_of(second, unit_id)) >= announced)
    # The announcer's start kept the restored unit's configs: none was deleted.
    assert all(second.outbox.get(topic) for topic in announced)
    assert _on_disk(tmp_path)["found_units"] == {FOUND_SERIAL: FOUND_HOST}


def test_a_restored_unit_starts_at_its_last_address(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    state.keep_found_unit(FOUND_SERIAL, FOUND_HOST)
    state.keep_address(FOUND_SERIAL, OTHER_HOST)  # the unit moved, and was followed
    assert state.flush()
    hosts: list[str] = []

    def factory(connector: ConnectorConfig) -> TwcClient:
        assert connector.host is not None
        hosts.append(connector.host)
        return simulated_client(_units(), connector)

    instance = Bridge(_config(tmp_path, add_new=True), client_factory=factory, survey=_asks_nothing)
    assert hosts == [CONFIGURED_HOST, OTHER_HOST]
    assert (
        instance.new_units.pollers[FOUND_SERIAL].label
        == f"{FOUND_SERIAL.lower()} (found at {OTHER_HOST})"
    )


def test_without_add_new_saved_found_units_are_not_restored_and_become_ghosts(
    tmp_path: Path,
) -> None:
    unit_id = FOUND_SERIAL.lower()
    state = StateFile(tmp_path / "state.json")
    state.keep_found_unit(FOUND_SERIAL, FOUND_HOST)
    state.keep_published(unit_id, unit_id)
    assert state.flush()
    instance = _bridge(_config(tmp_path, add_new=False), _units())
    assert instance.new_units.pollers == {}
    assert len(instance.pollers) == 1
    assert instance.ghosts == {unit_id: unit_id}


def test_a_found_unit_now_configured_is_forgotten(tmp_path: Path) -> None:
    """Once its owner pasted its block, the unit is a configured one: never added twice."""
    state = StateFile(tmp_path / "state.json")
    state.keep_found_unit(CONFIGURED_SERIAL, FOUND_HOST)
    state.keep_energy("garage", CONFIGURED_SERIAL, SessionEnergy(total_wh=5.0))
    assert state.flush()
    instance = _bridge(_config(tmp_path, add_new=True), _units())
    assert instance.new_units.pollers == {}
    assert len(instance.pollers) == 1
    assert instance.state_file.found_units() == {}


def test_a_serial_a_connector_learned_in_an_earlier_run_is_not_new(tmp_path: Path) -> None:
    """The configured unit has not answered yet in this run; its saved serial still claims it."""
    state = StateFile(tmp_path / "state.json")
    state.keep_energy("garage", FOUND_SERIAL, SessionEnergy(total_wh=5.0))
    assert state.flush()
    instance = _bridge(_config(tmp_path, add_new=True), _units())
    instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
    assert instance.new_units.pollers == {}
    assert len(instance.pollers) == 1


async def test_a_serial_a_connector_learned_in_this_run_is_not_new(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    units = _units()
    instance = _bridge(_config(tmp_path, add_new=True), units)
    await _run_until(instance, lambda: instance.pollers[0].status.serial == CONFIGURED_SERIAL)
    instance.add_found_unit(_found(FOUND_HOST, CONFIGURED_SERIAL))
    assert instance.new_units.pollers == {}
    assert len(instance.pollers) == 1
    assert not [r for r in caplog.records if CONFIGURED_SERIAL in r.getMessage()]


def test_a_found_unit_whose_id_is_taken_is_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    config = _config(tmp_path, add_new=True).model_copy(
        update={"connectors": [ConnectorConfig(host=CONFIGURED_HOST, id=FOUND_SERIAL.lower())]}
    )
    instance = _bridge(config, _units())
    instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
    instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
    assert instance.new_units.pollers == {}
    assert len(instance.pollers) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        (
            f"Wall Connector {FOUND_SERIAL} found at {FOUND_HOST} is not added: its id "
            f"{FOUND_SERIAL.lower()} is used by {FOUND_SERIAL.lower()} ({CONFIGURED_HOST})"
        )
    ]


async def test_a_unit_found_after_the_stop_never_starts_polling(tmp_path: Path) -> None:
    """Added while the bridge stops (or after): listed, but no task that would outlive run()."""
    instance = _bridge(_config(tmp_path, add_new=True), _units())
    await _run_until(instance, lambda: True)
    instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
    assert list(instance.new_units.pollers) == [FOUND_SERIAL]
    assert instance.new_units.pollers[FOUND_SERIAL].requests_made == 0


# --- without add_new: the block, once per serial ------------------------------------------------


def _suggestions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bridge.runtime.found"]


def test_without_add_new_the_block_is_logged_once_per_serial_and_nothing_is_added(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    instance = _bridge(_config(tmp_path, add_new=False), _units())
    instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
    instance.add_found_unit(_found(OTHER_HOST, FOUND_SERIAL))  # the same unit, moved: not again
    instance.add_found_unit(_found(OTHER_HOST, OTHER_SERIAL, port=8080))
    lines = _suggestions(caplog)
    assert lines == [
        (
            f"Wall Connector {FOUND_SERIAL} found at {FOUND_HOST} is not configured; to publish "
            "it, add this block to the configuration file:"
        ),
        f"# Wall Connector {FOUND_SERIAL} (part 1529455-02-D, firmware 24.44.3) at {FOUND_HOST}",
        "[[connectors]]",
        f'host = "{FOUND_HOST}"',
        'name = "Wall Connector 0007"',
        f'id = "{FOUND_SERIAL.lower()}"',
        (
            f"Wall Connector {OTHER_SERIAL} found at {OTHER_HOST}:8080 is not configured; to "
            "publish it, add this block to the configuration file:"
        ),
        (
            f"# Wall Connector {OTHER_SERIAL} (part 1529455-02-D, firmware 24.44.3) at "
            f"{OTHER_HOST}:8080"
        ),
        "[[connectors]]",
        f'host = "{OTHER_HOST}:8080"',
        'name = "Wall Connector 0008"',
        f'id = "{OTHER_SERIAL.lower()}"',
    ]
    # Pasted, the block is a valid connector of the configuration.
    block = tomllib.loads("\n".join(lines[1:6]))
    assert ConnectorConfig.model_validate(block["connectors"][0]).host == FOUND_HOST
    assert instance.new_units.pollers == {}
    assert len(instance.pollers) == 1
    assert instance.state_file.found_units() == {}


@pytest.mark.parametrize(
    ("add_new", "serial"),
    [
        (False, 'X"\nid = "pwned\x1b[2J'),
        # With add_new, a serial that gives no usable topic id is suggested instead of added.
        (True, '"\n\x1b[!'),
    ],
)
def test_device_text_in_the_block_stays_on_its_lines_and_pastes_back_as_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, *, add_new: bool, serial: str
) -> None:
    """A serial with a quote, a newline and an escape sequence cannot forge lines or keys."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    instance = _bridge(_config(tmp_path, add_new=add_new), _units())
    instance.add_found_unit(_found(FOUND_HOST, serial))
    instance.add_found_unit(_found(FOUND_HOST, serial))
    lines = _suggestions(caplog)
    assert len(lines) == 6  # the header and the block's five lines, once
    assert ("gives no usable topic id" in lines[0]) is add_new
    assert "\\n" in lines[0]  # the serial escaped in the header
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    table = tomllib.loads("\n".join(lines[1:]))["connectors"][0]
    assert set(table) == {"host", "name", "id"}
    assert table["host"] == FOUND_HOST
    assert instance.new_units.pollers == {}


def test_a_unit_answering_at_a_connectors_address_is_that_connectors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A search at start-up may see a configured unit before its first version answer."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    instance = _bridge(_config(tmp_path, add_new=True), _units())
    instance.add_found_unit(_found(CONFIGURED_HOST, CONFIGURED_SERIAL))
    assert instance.new_units.pollers == {}
    assert len(instance.pollers) == 1
    assert "[[connectors]]" not in caplog.text


async def test_a_stranger_at_a_connectors_address_is_suggested_once_its_serial_is_known(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The connector knows its own serial: a different one answering there is someone else."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    units = _units()
    instance = _bridge(_config(tmp_path, add_new=False), units)
    (poller,) = instance.pollers
    await _run_until(instance, lambda: poller.wanted_serial is not None)
    instance.add_found_unit(_found(CONFIGURED_HOST, OTHER_SERIAL))
    assert "[[connectors]]" in caplog.text
    assert OTHER_SERIAL in caplog.text


def test_a_unit_found_on_a_second_interfaces_network_is_polled_from_it(tmp_path: Path) -> None:
    """Found through a connector's source_address, it is polled from that address too."""
    config = BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(tmp_path)},
            "mqtt": {"host": "127.0.0.1", "port": closed_port()},
            "discovery": {"networks": ["10.9.0.0/24", "10.8.0.0/24"], "add_new": True},
            "connectors": [
                {"host": CONFIGURED_HOST, "id": "garage", "source_address": "10.9.0.100"}
            ],
        }
    )
    units = {**_units(), "10.8.0.7": SimulatedUnit(OTHER_SERIAL, seed=9)}
    instance = _bridge(config, units)
    instance.add_found_unit(_found(FOUND_HOST, FOUND_SERIAL))
    instance.add_found_unit(_found("10.8.0.7", OTHER_SERIAL))
    assert instance.new_units.pollers[FOUND_SERIAL].source_address == "10.9.0.100"
    assert instance.new_units.pollers[OTHER_SERIAL].source_address is None


async def test_a_search_that_crashes_does_not_stop_the_bridge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The follower runs in the bridge's task group: a bug in it must not end the bridge."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def broken_survey(*_args: object, **_kwargs: object) -> ScanReport:
        raise RuntimeError("a bug in the search")

    units = _units()
    instance = Bridge(
        _config(tmp_path, add_new=True),
        client_factory=lambda c: simulated_client(units, c),
        survey=broken_survey,
    )
    (poller,) = instance.pollers
    await _run_until(
        instance,
        lambda: (
            "discovery: the search for units crashed" in caplog.text
            and poller.wanted_serial is not None
        ),
    )
    assert "discovery: the search for units crashed" in caplog.text
    assert poller.wanted_serial == CONFIGURED_SERIAL  # the unit kept being polled


def test_found_units_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A device inventing serials cannot grow the bridge without end."""
    monkeypatch.setattr(bridge.runtime.found, "MAX_FOUND_UNITS", 2)
    caplog.set_level(logging.INFO, logger=LOGGER)
    units = {f"10.9.0.{n}": SimulatedUnit(simulated_serial(n), seed=n) for n in range(20, 25)}
    instance = _bridge(_config(tmp_path, add_new=True), {**_units(), **units})
    for host, unit in units.items():
        instance.add_found_unit(_found(host, unit.serial))
    assert len(instance.new_units.pollers) == 2
    assert caplog.text.count("is the most one bridge adds by itself") == 2
