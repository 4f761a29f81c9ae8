"""Switching discovery between entity and device mode hands entities over (migrate_discovery)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from bridge.core.outbox import Message, Outbox
from bridge.presentation.discovery import (
    DiscoveryMode,
    UnitInfo,
    device_config,
    device_config_topic,
    entity_configs,
    unit_entities,
)
from bridge.runtime.announce import Announcer
from bridge.runtime.statefile import StateFile
from tests.discovery_samples import GARAGE, SITE
from tests.ha_schema import problems_in_discovery_message, problems_in_migration_request

CARPORT: Final = UnitInfo(unit_id="carport", serial="TEST0002", name="Carport")
FIELDS: Final[dict[str, list[str]]] = {
    "vitals": ["grid_v", "grid_hz", "vehicle_connected", "evse_state"],
    "lifetime": ["energy_wh", "uptime_s"],
}
BRIDGE_ENTITY_TOPIC: Final = "homeassistant/binary_sensor/twc3_bridge_twc3/state/config"
BRIDGE_DEVICE_TOPIC: Final = "homeassistant/device/twc3_bridge_twc3/config"
GARAGE_DEVICE_TOPIC: Final = device_config_topic(SITE, GARAGE)
MIGRATE: Final = '{"migrate_discovery":true}'
GRACE_S: Final = 5.0


class Clock:
    """Time passed in by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The time now."""
        return self.now


def _garage_entity_topics() -> set[str]:
    return set(entity_configs(SITE, GARAGE, unit_entities(FIELDS)))


def _carport_entity_topics() -> set[str]:
    return set(entity_configs(SITE, CARPORT, unit_entities(FIELDS)))


def _fields() -> dict[str, list[str]]:
    return {endpoint: list(names) for endpoint, names in FIELDS.items()}


class Run:
    """One bridge run: an announcer, its outbox, and every message it sent, in order."""

    def __init__(self, state: StateFile, mode: DiscoveryMode) -> None:
        self.clock = Clock()
        self.outbox = Outbox(clock=self.clock)
        self.announcer = Announcer(
            SITE,
            mode,
            self.outbox,
            state,
            {"garage", "carport"},
            clock=self.clock,
            grace_s=GRACE_S,
        )
        self.sent: list[Message] = []

    def send(self) -> list[Message]:
        """Hand everything pending to the broker; each payload must pass HA's schema."""
        batch = self.outbox.pending()
        for message in batch:
            assert problems_in_discovery_message(message.topic, message.payload) == [], message
            self.outbox.mark_sent(message)
        self.sent.extend(batch)
        return batch

    def advance(self, seconds: float) -> list[Message]:
        """Let time pass, take the hand-overs on, and send what that produced."""
        self.clock.now += seconds
        self.announcer.advance_migrations()
        return self.send()

    def finish_handover(self) -> None:
        """Step through a whole hand-over: delivered, wait, release, delivered, wait, clear."""
        for _ in range(4):
            self.advance(0)
            self.advance(GRACE_S)


def _first_run(tmp_path: Path, mode: DiscoveryMode) -> StateFile:
    state = StateFile(tmp_path / "state.json")
    run = Run(state, mode)
    run.announcer.start()
    run.announcer.update_unit("garage", GARAGE, _fields())
    run.announcer.update_unit("carport", CARPORT, _fields())
    run.send()
    assert not run.announcer.migrating
    return state


def _half_way_to_device(tmp_path: Path) -> tuple[StateFile, Run]:
    """Entity mode switched to device: the device config is out, the old topics are not cleared."""
    state = _first_run(tmp_path, "entity")
    run = Run(state, "device")
    run.announcer.start()
    run.announcer.update_unit("garage", GARAGE, _fields())
    run.send()
    run.advance(0)
    run.advance(GRACE_S)
    return state, run


def _index(sent: list[Message], topic: str, kind: str) -> int:
    """Where the first marker / config / deletion of ``topic`` was sent."""
    for index, message in enumerate(sent):
        is_kind = {
            "marker": message.payload == MIGRATE,
            "deletion": message.payload == "",
            "config": message.payload not in {"", MIGRATE},
        }[kind]
        if message.topic == topic and is_kind:
            return index
    raise AssertionError(f"no {kind} sent for {topic}")


def _topics(batch: list[Message], payload: str | None = None) -> set[str]:
    return {m.topic for m in batch if payload is None or m.payload == payload}


def test_migration_request_is_exactly_what_home_assistant_accepts() -> None:
    """HA's MIGRATE_DISCOVERY_SCHEMA takes one key, true; anything more is read as a config."""
    assert problems_in_migration_request(json.loads(MIGRATE)) == []
    assert problems_in_migration_request({"migrate_discovery": 1}) != []
    assert problems_in_migration_request({"migrate_discovery": True, "name": "x"}) != []


def test_entity_to_device_hands_over_in_the_documented_order(tmp_path: Path) -> None:
    """Markers on the old topics, then (after a grace) the device config, then the old go."""
    state = _first_run(tmp_path, "entity")
    run = Run(state, "device")
    run.announcer.start()
    run.announcer.update_unit("garage", GARAGE, _fields())
    first = run.send()
    # Only migrate requests so far: the bridge's and the garage's old entity topics.
    assert {m.payload for m in first} == {MIGRATE}
    assert _topics(first) == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()

    assert run.advance(0) == []  # delivered: the grace starts now
    assert run.advance(GRACE_S - 0.1) == []  # Home Assistant is still unloading
    released = run.advance(0.1)
    assert _topics(released) == {BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC}
    garage = next(m for m in released if m.topic == GARAGE_DEVICE_TOPIC)
    assert (
        json.loads(garage.payload)
        == (device_config(SITE, GARAGE, unit_entities(FIELDS))[GARAGE_DEVICE_TOPIC])
    )

    assert run.advance(0) == []
    assert run.advance(GRACE_S - 0.1) == []
    cleared = run.advance(0.1)
    assert {m.payload for m in cleared} == {""}
    assert _topics(cleared) == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()
    for topic in _garage_entity_topics():
        assert (
            _index(run.sent, topic, "marker")
            < _index(run.sent, GARAGE_DEVICE_TOPIC, "config")
            < _index(run.sent, topic, "deletion")
        )
    # The carport was not polled in this run: its entities stay as they are, untouched.
    saved = state.announced_topics()
    assert set(saved) == {BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC} | _carport_entity_topics()
    assert not _topics(run.sent) & _carport_entity_topics()
    assert run.announcer.migrating

    run.announcer.update_unit("carport", CARPORT, _fields())
    run.send()
    run.finish_handover()
    assert not run.announcer.migrating
    assert set(state.announced_topics()) == {
        BRIDGE_DEVICE_TOPIC,
        GARAGE_DEVICE_TOPIC,
        device_config_topic(SITE, CARPORT),
    }


def test_device_to_entity_hands_over_in_the_documented_order(tmp_path: Path) -> None:
    """Rollback: a marker on the device topic, then the entity configs, then the device topic."""
    state = _first_run(tmp_path, "device")
    assert state.announced_components()["garage"]
    run = Run(state, "entity")
    run.announcer.start()
    run.announcer.update_unit("garage", GARAGE, _fields())
    first = run.send()
    assert {m.payload for m in first} == {MIGRATE}
    assert _topics(first) == {BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC}

    run.advance(0)
    released = run.advance(GRACE_S)
    assert _topics(released) == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()
    run.advance(0)
    cleared = run.advance(GRACE_S)
    assert {m.payload for m in cleared} == {""}
    assert _topics(cleared) == {BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC}
    for topic in _garage_entity_topics():
        assert (
            _index(run.sent, GARAGE_DEVICE_TOPIC, "marker")
            < _index(run.sent, topic, "config")
            < _index(run.sent, GARAGE_DEVICE_TOPIC, "deletion")
        )
    assert "garage" not in state.announced_components()  # they described the cleared config
    assert GARAGE_DEVICE_TOPIC not in state.announced_topics()


def test_nothing_moves_on_until_the_broker_has_the_previous_step(tmp_path: Path) -> None:
    """A broker outage holds the hand-over; a reconnect resends markers before new configs."""
    state = _first_run(tmp_path, "entity")
    run = Run(state, "device")
    run.announcer.start()
    run.announcer.update_unit("garage", GARAGE, _fields())
    # Not sent (the broker is away): however long it takes, no device config is released.
    run.clock.now += 100 * GRACE_S
    run.announcer.advance_migrations()
    run.clock.now += 100 * GRACE_S
    run.announcer.advance_migrations()
    assert _topics(run.outbox.pending(), MIGRATE) == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()
    assert GARAGE_DEVICE_TOPIC not in _topics(run.outbox.pending())

    run.send()
    run.advance(0)
    run.advance(GRACE_S)  # released
    # The connection drops before the device config's delivery is noticed: everything again.
    run.outbox.republish_all(first_prefix="homeassistant/")
    assert run.advance(100 * GRACE_S) != []  # resent; the clock ran, but delivery is new
    resent = run.sent[-(len(_garage_entity_topics()) + 3) :]
    order = [m.topic for m in resent]
    assert order.index(GARAGE_DEVICE_TOPIC) > max(order.index(t) for t in _garage_entity_topics())
    assert run.advance(0) == []  # the delivery is noticed: the grace counts from here
    assert run.advance(GRACE_S - 0.1) == []
    assert _topics(run.advance(0.1), "") == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()


def test_restart_in_the_middle_starts_the_hand_over_again(tmp_path: Path) -> None:
    """The state file keeps the old topics until they are cleared; a new run migrates again."""
    state, _ = _half_way_to_device(tmp_path)
    state.flush()

    reread = StateFile(tmp_path / "state.json")
    assert set(reread.announced_topics()) >= _garage_entity_topics() | {GARAGE_DEVICE_TOPIC}
    again = Run(reread, "device")
    again.announcer.start()
    again.announcer.update_unit("garage", GARAGE, _fields())
    assert _topics(again.send(), MIGRATE) == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()
    again.finish_handover()
    assert _topics(again.sent, "") == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()
    assert set(reread.announced_topics()) == (
        {BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC} | _carport_entity_topics()
    )


def test_switching_back_in_the_middle_rolls_back(tmp_path: Path) -> None:
    """Entity → device stopped half-way, then entity mode again: the device config is undone."""
    state, _ = _half_way_to_device(tmp_path)
    state.flush()

    back = Run(StateFile(tmp_path / "state.json"), "entity")
    back.announcer.start()
    back.announcer.update_unit("garage", GARAGE, _fields())
    assert _topics(back.send(), MIGRATE) == {BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC}
    back.finish_handover()
    assert _topics(back.sent, "") == {BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC}
    assert not back.announcer.migrating


def test_off_removes_everything_even_in_the_middle_of_a_hand_over(tmp_path: Path) -> None:
    """Off means no discovery: every config of either form is removed, no migration."""
    state, _ = _half_way_to_device(tmp_path)
    state.flush()

    off = Run(StateFile(tmp_path / "state.json"), "off")
    off.announcer.start()
    batch = off.send()
    assert {m.payload for m in batch} == {""}
    assert _topics(batch) == (
        {BRIDGE_ENTITY_TOPIC, BRIDGE_DEVICE_TOPIC, GARAGE_DEVICE_TOPIC}
        | _garage_entity_topics()
        | _carport_entity_topics()
    )
    assert not off.announcer.migrating


def test_a_reconnect_after_the_new_configs_restarts_the_last_wait(tmp_path: Path) -> None:
    """Requests and new configs sent again together: the old topics wait a grace after them."""
    _, run = _half_way_to_device(tmp_path)  # the device config is released and sent
    run.advance(0)  # its delivery is noticed: the last wait begins
    run.clock.now += GRACE_S  # the wait is over, but a reconnect comes first
    run.outbox.republish_all(first_prefix="homeassistant/")
    resent = run.advance(0)
    assert GARAGE_DEVICE_TOPIC in _topics(resent)
    assert _topics(resent, "") == set(), "old topics cleared right behind the copies"
    assert run.advance(0) == []  # the copies' delivery is noticed: the grace counts from here
    assert _topics(run.advance(GRACE_S - 0.1), "") == set()
    assert _topics(run.advance(0.1), "") == {BRIDGE_ENTITY_TOPIC} | _garage_entity_topics()
