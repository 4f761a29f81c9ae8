"""The announcer keeps retained discovery configs in step; the re-announcer answers HA's birth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest

from bridge.core.outbox import Deferred, Message, Outbox
from bridge.presentation.discovery import (
    DiscoveryMode,
    UnitInfo,
    bridge_configs,
    entity_configs,
    unit_entities,
)
from bridge.runtime.announce import Announcer, Reannouncer
from bridge.runtime.statefile import StateFile
from tests.discovery_samples import GARAGE, SITE
from tests.ha_schema import problems_in_device_config, problems_in_entity_config

CARPORT: Final = UnitInfo(unit_id="carport", serial="TEST0002", name="Carport")
FIELDS: Final[dict[str, list[str]]] = {
    "vitals": ["grid_v", "grid_hz", "vehicle_connected", "evse_state", "mystery_field"],
    "lifetime": ["energy_wh", "uptime_s"],
}
BRIDGE_ENTITY_TOPIC: Final = "homeassistant/binary_sensor/twc3_bridge_twc3/state/config"
BRIDGE_DEVICE_TOPIC: Final = "homeassistant/device/twc3_bridge_twc3/config"
GARAGE_DEVICE_TOPIC: Final = "homeassistant/device/twc3_test0001/config"
GRID_V_TOPIC: Final = "homeassistant/sensor/twc3_test0001/vitals_grid_v/config"
GRID_HZ_TOPIC: Final = "homeassistant/sensor/twc3_test0001/vitals_grid_hz/config"
EVSE_STATE_TOPIC: Final = "homeassistant/sensor/twc3_test0001/vitals_evse_state/config"


def _fields(**changes: list[str]) -> dict[str, list[str]]:
    """A fresh copy of FIELDS (so no test shares lists with another), with endpoints replaced."""
    return {endpoint: list(names) for endpoint, names in {**FIELDS, **changes}.items()}


def _garage_topics(fields: dict[str, list[str]] | None = None) -> set[str]:
    return set(entity_configs(SITE, GARAGE, unit_entities(fields or _fields())))


def _carport_topics() -> set[str]:
    return set(entity_configs(SITE, CARPORT, unit_entities(_fields())))


def _send_all(outbox: Outbox) -> list[Message]:
    batch = outbox.pending()
    for message in batch:
        outbox.mark_sent(message)
    return batch


def _deleted(batch: list[Message]) -> set[str]:
    return {m.topic for m in batch if m.retain and not m.payload}


def _published(batch: list[Message]) -> dict[str, Any]:
    return {m.topic: json.loads(m.payload) for m in batch if m.retain and m.payload}


def _saved_topics(state: StateFile) -> dict[str, str]:
    return state.announced_topics()


def _announcer(
    state: StateFile | None,
    mode: DiscoveryMode = "entity",
    owners: frozenset[str] = frozenset({"garage", "carport"}),
) -> tuple[Announcer, Outbox]:
    outbox = Outbox()
    return Announcer(SITE, mode, outbox, state, set(owners)), outbox


def _announce_both(state: StateFile, mode: DiscoveryMode = "entity") -> None:
    announcer, outbox = _announcer(state, mode)
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    announcer.update_unit("carport", CARPORT, _fields())
    _send_all(outbox)


class CheckingStateFile(StateFile):
    """A state file that checks, after every write, that the file on disk is complete JSON."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.updates = 0
        self.results: list[bool] = []
        self.snapshots: list[dict[str, Any]] = []

    def keep_announced(
        self, topics: Mapping[str, str], components: Mapping[str, Mapping[str, str]]
    ) -> None:
        """Count the changes handed over in memory."""
        self.updates += 1
        super().keep_announced(topics, components)

    def flush(self) -> bool:
        """Write, then read the file back as JSON and look for leftover temporary files."""
        pending = self.dirty
        result = super().flush()
        if pending:
            self.results.append(result)
        if pending and result:
            self.snapshots.append(json.loads(self.path.read_text(encoding="utf-8")))
            assert [p.name for p in self.path.parent.iterdir()] == [self.path.name]
        return result


# --- announcing ---------------------------------------------------------------------------------


def test_first_announce_puts_every_config(tmp_path: Path) -> None:
    """start() and the first update put the bridge's and every entity's config, retained."""
    state = StateFile(tmp_path / "state.json")
    announcer, outbox = _announcer(state)
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    batch = outbox.pending()
    assert batch
    assert all(m.retain and m.payload for m in batch)
    expected = {
        **bridge_configs(SITE, "entity"),
        **entity_configs(SITE, GARAGE, unit_entities(_fields())),
    }
    assert _published(batch) == expected
    assert len(batch) == len(expected)
    assert set(announcer.announced_topics()) == set(expected)
    assert _saved_topics(state) == {
        BRIDGE_ENTITY_TOPIC: "bridge",
        **dict.fromkeys(_garage_topics(), "garage"),
    }
    for topic, payload in _published(batch).items():
        assert problems_in_entity_config(topic.split("/")[1], payload) == [], topic


@pytest.mark.parametrize("mode", ["entity", "device"])
def test_unit_configs_are_held_unrendered(tmp_path: Path, mode: DiscoveryMode) -> None:
    """A unit's configs are kept as what renders them, not as text (memory at 1000 units)."""
    announcer, outbox = _announcer(StateFile(tmp_path / "state.json"), mode=mode)
    announcer.update_unit("garage", GARAGE, _fields())
    held = [outbox._retained[topic] for topic in announcer.announced_topics()]
    assert held
    assert all(isinstance(value, Deferred) for value in held)


def test_same_update_again_puts_nothing(tmp_path: Path) -> None:
    """An update with equal info and fields publishes nothing and leaves the file alone."""
    state = CheckingStateFile(tmp_path / "state.json")
    announcer, outbox = _announcer(state)
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    _send_all(outbox)
    assert state.flush()
    updates = state.updates
    same_info = UnitInfo(**{f: getattr(GARAGE, f) for f in GARAGE.__slots__})
    announcer.update_unit("garage", same_info, _fields())
    announcer.update_unit("garage", GARAGE, _fields())
    assert outbox.pending() == []
    assert state.updates == updates
    assert not state.dirty


def test_changed_info_republishes_only_the_unit(tmp_path: Path) -> None:
    """New firmware re-puts the unit's configs (changed device block) and nothing else."""
    announcer, outbox = _announcer(StateFile(tmp_path / "state.json"))
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    announcer.update_unit("carport", CARPORT, _fields())
    _send_all(outbox)
    updated = UnitInfo(**{**{f: getattr(GARAGE, f) for f in GARAGE.__slots__}, "firmware": "26.1"})
    announcer.update_unit("garage", updated, _fields())
    batch = outbox.pending()
    assert set(_published(batch)) == _garage_topics()
    assert _deleted(batch) == set()
    assert {p["device"]["sw_version"] for p in _published(batch).values()} == {"26.1"}


def test_removed_field_deletes_its_config(tmp_path: Path) -> None:
    """A field gone from the body gets an empty retained config and leaves the state file."""
    state = StateFile(tmp_path / "state.json")
    announcer, outbox = _announcer(state)
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    _send_all(outbox)
    fewer = _fields(vitals=["grid_v", "vehicle_connected", "mystery_field"])
    announcer.update_unit("garage", GARAGE, fewer)
    batch = outbox.pending()
    assert batch == [
        Message(GRID_HZ_TOPIC, ""),
        Message(EVSE_STATE_TOPIC, ""),
    ]
    saved = _saved_topics(state)
    assert set(saved) == {BRIDGE_ENTITY_TOPIC} | _garage_topics(fewer)
    assert GRID_HZ_TOPIC not in saved
    assert GRID_V_TOPIC in saved


def test_restart_removes_configs_of_a_connector_no_longer_configured(tmp_path: Path) -> None:
    """A new announcer on the same state file deletes only the departed connector's configs."""
    state = StateFile(tmp_path / "state.json")
    _announce_both(state)
    announcer, outbox = _announcer(state, owners=frozenset({"garage"}))
    announcer.start()
    batch = outbox.pending()
    assert _deleted(batch) == _carport_topics()
    assert set(_published(batch)) == {BRIDGE_ENTITY_TOPIC}
    assert set(announcer.announced_topics()) == {BRIDGE_ENTITY_TOPIC} | _garage_topics()
    _send_all(outbox)
    announcer.update_unit("garage", GARAGE, _fields())
    assert _deleted(outbox.pending()) == set()
    assert set(_published(outbox.pending())) == _garage_topics()


def test_restart_forgets_the_departed_connector_in_the_state_file(tmp_path: Path) -> None:
    """After start() the state file no longer lists the departed connector's configs."""
    state = StateFile(tmp_path / "state.json")
    _announce_both(state)
    announcer, _ = _announcer(state, owners=frozenset({"garage"}))
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    assert set(_saved_topics(state)) == {BRIDGE_ENTITY_TOPIC} | _garage_topics()


def test_mode_off_deletes_everything_announced_before(tmp_path: Path) -> None:
    """Turning discovery off removes every config announced by an earlier run."""
    state = StateFile(tmp_path / "state.json")
    _announce_both(state)
    announcer, outbox = _announcer(state, mode="off")
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    batch = outbox.pending()
    assert {m.topic for m in batch} == _deleted(batch)
    assert _deleted(batch) == {BRIDGE_ENTITY_TOPIC} | _garage_topics() | _carport_topics()
    assert announcer.announced_topics() == []
    assert _saved_topics(state) == {}


def test_device_mode_removed_field_stays_a_stub_for_the_run(tmp_path: Path) -> None:
    """A field gone from the body is a {"platform": ...} stub in every payload until restart."""
    state = StateFile(tmp_path / "state.json")
    announcer, outbox = _announcer(state, mode="device")
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    _send_all(outbox)

    fewer = _fields(vitals=["grid_v", "evse_state", "mystery_field"])
    announcer.update_unit("garage", GARAGE, fewer)
    (message,) = _send_all(outbox)
    components = json.loads(message.payload)["components"]
    assert components["vitals_grid_hz"] == {"platform": "sensor"}
    assert components["vitals_vehicle_connected"] == {"platform": "binary_sensor"}
    assert problems_in_device_config(json.loads(message.payload)) == []

    later = UnitInfo(**{**{f: getattr(GARAGE, f) for f in GARAGE.__slots__}, "firmware": "26.1"})
    announcer.update_unit("garage", later, fewer)
    (message,) = _send_all(outbox)
    components = json.loads(message.payload)["components"]
    assert components["vitals_grid_hz"] == {"platform": "sensor"}
    assert components["vitals_vehicle_connected"] == {"platform": "binary_sensor"}

    restarted, restarted_outbox = _announcer(state, mode="device")
    restarted.start()
    restarted.update_unit("garage", later, fewer)
    components = _published(restarted_outbox.pending())[GARAGE_DEVICE_TOPIC]["components"]
    assert "vitals_grid_hz" not in components
    assert set(components) == {
        "vitals_grid_v",
        "vitals_evse_state",
        "vitals_mystery_field",
        "lifetime_energy_wh",
        "lifetime_uptime_s",
    }


def test_device_mode_stub_survives_a_restart(tmp_path: Path) -> None:
    """Components announced by an earlier run are stubbed when the new run no longer has them."""
    state = StateFile(tmp_path / "state.json")
    _announce_both(state, mode="device")
    announcer, outbox = _announcer(state, mode="device")
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields(lifetime=["energy_wh"]))
    published = _published(outbox.pending())
    assert published[GARAGE_DEVICE_TOPIC]["components"]["lifetime_uptime_s"] == {
        "platform": "sensor"
    }


def test_device_mode_stub_is_not_lost_when_superseded_before_sending(tmp_path: Path) -> None:
    """A removal stub still reaches the broker when another update follows before sending."""
    announcer, outbox = _announcer(StateFile(tmp_path / "state.json"), mode="device")
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    _send_all(outbox)
    fewer = _fields(vitals=["grid_v", "evse_state", "mystery_field"])
    announcer.update_unit("garage", GARAGE, fewer)  # broker down: nothing is sent
    later = UnitInfo(**{**{f: getattr(GARAGE, f) for f in GARAGE.__slots__}, "firmware": "26.1"})
    announcer.update_unit("garage", later, fewer)
    components = _published(outbox.pending())[GARAGE_DEVICE_TOPIC]["components"]
    assert components.get("vitals_grid_hz") == {"platform": "sensor"}


# --- the state file -----------------------------------------------------------------------------


def test_state_file_is_complete_json_after_every_save(tmp_path: Path) -> None:
    """Each write leaves a whole JSON object on disk and no temporary file beside it."""
    state = CheckingStateFile(tmp_path / "state.json")
    announcer, outbox = _announcer(state)
    announcer.start()
    assert state.flush()
    announcer.update_unit("garage", GARAGE, _fields())
    assert state.flush()
    announcer.update_unit("carport", CARPORT, _fields())
    assert state.flush()
    announcer.update_unit("garage", GARAGE, _fields(lifetime=["energy_wh"]))
    assert state.flush()
    _send_all(outbox)
    assert state.results == [True] * 4
    assert [set(s["discovery"]["topics"]) for s in state.snapshots] == [
        {BRIDGE_ENTITY_TOPIC},
        {BRIDGE_ENTITY_TOPIC} | _garage_topics(),
        {BRIDGE_ENTITY_TOPIC} | _garage_topics() | _carport_topics(),
        {BRIDGE_ENTITY_TOPIC} | _garage_topics(_fields(lifetime=["energy_wh"])) | _carport_topics(),
    ]


def test_state_file_keeps_the_other_parts(tmp_path: Path) -> None:
    """The announcer changes only what discovery announced in the state file."""
    state = StateFile(tmp_path / "state.json")
    state.keep_address("TEST0001", "192.0.2.50")
    assert state.flush()
    announcer, _ = _announcer(StateFile(state.path))
    announcer.start()
    assert announcer._state is not None
    assert announcer._state.flush()
    again = StateFile(state.path)
    assert again.address_of("TEST0001") == "192.0.2.50"
    assert set(again.announced_topics()) == {BRIDGE_ENTITY_TOPIC}


def test_wildcard_topics_in_the_state_file_are_never_deleted_or_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config topic with a wildcard in the file is dropped at load, never sent to the broker."""
    path = tmp_path / "state.json"
    bad = "homeassistant/sensor/+/x/config"
    path.write_text(json.dumps({"discovery": {"topics": {bad: "gone", GRID_V_TOPIC: "gone"}}}))
    caplog.set_level(logging.WARNING)
    announcer, outbox = _announcer(StateFile(path))
    announcer.start()
    assert _deleted(outbox.pending()) == {GRID_V_TOPIC}
    assert all("+" not in m.topic for m in outbox.pending())
    assert len([r for r in caplog.records if "invalid discovery topic" in r.getMessage()]) == 1


def _unwritable_state(tmp_path: Path) -> CheckingStateFile:
    """A state file that cannot be written: a read-only folder, or (as root) a file as folder."""
    if os.geteuid() == 0:  # root ignores permissions; a regular file as parent makes mkdir fail
        blocker = tmp_path / "data"
        blocker.write_text("not a folder")
        return CheckingStateFile(blocker / "state.json")
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o500)
    return CheckingStateFile(data / "state.json")


@pytest.fixture
def unwritable_state(tmp_path: Path) -> Iterator[CheckingStateFile]:
    """An unwritable state file; the folder is made writable again afterwards for cleanup."""
    state = _unwritable_state(tmp_path)
    yield state
    if state.path.parent.is_dir():
        state.path.parent.chmod(0o700)


def test_unwritable_data_dir_does_not_stop_announcing(
    unwritable_state: CheckingStateFile, caplog: pytest.LogCaptureFixture
) -> None:
    """Announcing works without a writable state file; its save fails and warns only once."""
    caplog.set_level(logging.INFO)
    announcer, outbox = _announcer(unwritable_state)
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    announcer.update_unit("carport", CARPORT, _fields())
    announcer.update_unit("garage", GARAGE, _fields(lifetime=["energy_wh"]))
    for _ in range(3):
        assert not unwritable_state.flush()
    batch = outbox.pending()
    assert set(_published(batch)) == (
        {BRIDGE_ENTITY_TOPIC} | _garage_topics(_fields(lifetime=["energy_wh"])) | _carport_topics()
    )
    assert unwritable_state.dirty  # kept for the next try
    assert len(unwritable_state.results) == 3
    assert not any(unwritable_state.results)
    save_warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "cannot write state file" in r.getMessage()
    ]
    assert len(save_warnings) == 1
    assert not unwritable_state.path.exists()


def test_unreadable_data_dir_warns_only_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable data dir is reported once at start, however often the announcer saves."""
    caplog.set_level(logging.INFO)
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    state = StateFile(blocker / "state.json")
    announcer, _ = _announcer(state)
    announcer.start()
    state.flush()
    announcer.update_unit("garage", GARAGE, _fields())
    state.flush()
    announcer.update_unit("carport", CARPORT, _fields())
    state.flush()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "cannot write" in w]) == 1, warnings
    assert len([w for w in warnings if "cannot be read" in w]) == 1, warnings


def test_announcer_without_state_file(tmp_path: Path) -> None:
    """With no state file at all the announcer still announces and removes within one run."""
    announcer, outbox = _announcer(None)
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    _send_all(outbox)
    announcer.update_unit("garage", GARAGE, _fields(lifetime=["energy_wh"]))
    assert _deleted(outbox.pending()) == {
        "homeassistant/sensor/twc3_test0001/lifetime_uptime_s/config"
    }
    assert list(tmp_path.iterdir()) == []


# --- re-announcing on Home Assistant's birth ----------------------------------------------------


async def _wait_until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - the re-announcer offers a counter, not an event
        await asyncio.sleep(0.001)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _outbox_with_states_first() -> Outbox:
    outbox = Outbox()
    outbox.put("twc3/garage/vitals/grid_v", "241.3")
    outbox.put("twc3/garage/availability", "online")
    announcer = Announcer(SITE, "entity", outbox, None, {"garage"})
    announcer.start()
    announcer.update_unit("garage", GARAGE, _fields())
    outbox.put("twc3/garage/vitals/grid_hz", "59.98")
    _send_all(outbox)
    assert outbox.pending() == []
    return outbox


async def test_births_in_quick_succession_reannounce_once() -> None:
    """Three requests before the delay ends cause one republish, discovery configs first."""
    outbox = _outbox_with_states_first()
    delays: list[tuple[float, float]] = []

    def rand(low: float, high: float) -> float:
        delays.append((low, high))
        return 0.0

    reannouncer = Reannouncer(outbox, "homeassistant/", rand=rand)
    async with asyncio.timeout(2):
        task = asyncio.create_task(reannouncer.run())
        for _ in range(3):
            reannouncer.request()
        await _wait_until(lambda: reannouncer.reannounced >= 1)
        await asyncio.sleep(0.05)
        await _stop(task)
    assert reannouncer.reannounced == 1
    assert delays == [(1.0, 3.0)]
    topics = [m.topic for m in outbox.pending()]
    assert sorted(topics) == sorted(outbox.retained_topics())
    first_state = next(i for i, t in enumerate(topics) if not t.startswith("homeassistant/"))
    assert all(t.startswith("homeassistant/") for t in topics[:first_state])
    assert not any(t.startswith("homeassistant/") for t in topics[first_state:])
    assert topics[first_state:] == [
        "twc3/garage/vitals/grid_v",
        "twc3/garage/availability",
        "twc3/garage/vitals/grid_hz",
    ]


async def test_birth_during_the_delay_is_folded_in_and_a_later_one_counts() -> None:
    """A request during the random delay joins it; one after the republish starts another."""
    outbox = _outbox_with_states_first()
    reannouncer = Reannouncer(outbox, "homeassistant/", rand=lambda _low, _high: 0.05)
    async with asyncio.timeout(2):
        task = asyncio.create_task(reannouncer.run())
        reannouncer.request()
        await asyncio.sleep(0.02)
        reannouncer.request()
        await _wait_until(lambda: reannouncer.reannounced >= 1)
        await asyncio.sleep(0.1)
        assert reannouncer.reannounced == 1
        _send_all(outbox)
        reannouncer.request()
        await _wait_until(lambda: reannouncer.reannounced >= 2)
        await _stop(task)
    assert reannouncer.reannounced == 2
    assert outbox.pending()
