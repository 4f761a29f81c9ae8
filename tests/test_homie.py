"""Homie 4 builders: ids, datatypes from the entity table, and valid topics and payloads."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import ValidationError

from bridge.core.config import BridgeConfig, HomieConfig
from bridge.core.outbox import Outbox
from bridge.presentation.entities import ENTITIES, entity_for
from bridge.presentation.homie import (
    EXTENSIONS,
    HOMIE_UNITS,
    HOMIE_VERSION,
    HomiePublisher,
    build_property,
    datatype_for,
    device_messages,
    homie_id,
    homie_payload,
    is_homie_id,
    node_messages,
    node_properties,
    property_id,
    unique_id,
    unit_values,
    value_messages,
)
from bridge.sim.simulator import SimulatedUnit

ROOT = "homie/twc3-bridge"
NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def sample_values() -> dict[tuple[str, str], object]:
    """Every field of a simulated unit's four bodies plus one value per derived entity."""
    unit = SimulatedUnit("SIMHOMIE0001", seed=1)
    bodies = {
        "vitals": unit.vitals(),
        "lifetime": unit.lifetime(),
        "version": unit.version(),
        "wifi_status": unit.wifi_status(),
    }
    derived: dict[str, object] = {}
    for entity in ENTITIES:
        if entity.endpoint != "derived":
            continue
        if entity.options:
            derived[entity.field] = entity.options[0]
        elif entity.component == "binary_sensor":
            derived[entity.field] = True
        elif entity.unit or entity.state_class:
            derived[entity.field] = 12.5
        else:
            derived[entity.field] = "text"
    return unit_values(bodies, derived)


def assert_valid(messages: dict[str, str]) -> None:
    """Every topic level below the base is a Homie id or a $attribute; no payload is empty."""
    for topic, payload in messages.items():
        assert payload, topic
        for level in topic.split("/")[1:]:
            assert level.startswith("$") or is_homie_id(level), topic


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("car_port", "car-port"),
        ("_car__port_", "car-port"),
        ("Garage-WC", "garage-wc"),
        ("currentA_a", "currenta-a"),
        ("twc3_pgt2212345678", "twc3-pgt2212345678"),
        ("___", ""),
    ],
)
def test_homie_id_maps_to_lowercase_hyphenated_ids(text: str, expected: str) -> None:
    """Ids become [a-z0-9-] with single hyphens and none at either end."""
    assert homie_id(text) == expected
    assert not expected or is_homie_id(expected)


def test_is_homie_id_rejects_invalid_ids() -> None:
    """Underscores, capitals, leading or trailing hyphens and empty ids are not Homie ids."""
    assert is_homie_id("grid-v")
    for bad in ("", "-grid", "grid-", "grid_v", "Grid", "$state", "a/b"):
        assert not is_homie_id(bad), bad


def test_property_ids_are_prefixed_by_endpoint_and_unique() -> None:
    """Vitals keep their name, lifetime and derived get a prefix; no two table rows collide."""
    assert property_id("vitals", "grid_v") == "grid-v"
    assert property_id("derived", "power_w") == "derived-power-w"
    assert property_id("lifetime", "uptime_s") == "lifetime-uptime-s"
    ids = [property_id(e.endpoint, e.field) for e in ENTITIES]
    assert len(ids) == len(set(ids))
    assert all(is_homie_id(i) for i in ids)


def test_unique_id_appends_a_number() -> None:
    """A taken id gets -2, -3 … appended."""
    assert unique_id("a", []) == "a"
    assert unique_id("a", ["a"]) == "a-2"
    assert unique_id("a", ["a", "a-2"]) == "a-3"


def test_datatypes_come_from_the_table() -> None:
    """Binary sensors are boolean, options enum, units numbers; text stays string."""
    assert datatype_for(entity_for("vitals", "vehicle_connected")) == "boolean"
    assert datatype_for(entity_for("derived", "status")) == "enum"
    assert datatype_for(entity_for("vitals", "grid_v")) == "float"
    assert datatype_for(entity_for("vitals", "uptime_s")) == "integer"
    assert datatype_for(entity_for("lifetime", "charge_starts")) == "integer"
    assert datatype_for(entity_for("version", "firmware_version"), "24.1") == "string"
    assert datatype_for(entity_for("derived", "last_seen"), "2025-01-01T00:00:00Z") == "string"


def test_silent_table_rows_take_the_datatype_of_their_value() -> None:
    """Rows without unit, options or precision (the state code, unknown fields) follow the value."""
    assert datatype_for(entity_for("vitals", "evse_state"), 4) == "integer"
    assert datatype_for(entity_for("vitals", "new_field"), 1.5) == "float"
    assert datatype_for(entity_for("vitals", "new_flag"), False) == "boolean"  # noqa: FBT003
    assert datatype_for(entity_for("vitals", "current_alerts"), []) == "string"


def test_units_and_formats_come_from_the_table() -> None:
    """$unit is the table's unit when Homie knows it; enums list their options in $format."""
    grid = build_property(entity_for("vitals", "grid_v"))
    assert grid.attributes() == {"$name": "Grid voltage", "$datatype": "float", "$unit": "V"}
    status = build_property(entity_for("derived", "status"))
    assert status.attributes()["$format"] == "disconnected,connected,charging"
    assert "$unit" not in status.attributes()
    # μV and dB are not in the Homie unit list: no $unit rather than one openHAB misreads.
    assert build_property(entity_for("vitals", "input_thermopile_uv")).unit is None
    assert build_property(entity_for("wifi_status", "wifi_snr")).unit is None
    assert build_property(entity_for("wifi_status", "wifi_rssi")).unit == "dBm"
    for entity in ENTITIES:
        prop = build_property(entity, 1)
        assert prop.unit is None or prop.unit in HOMIE_UNITS


@pytest.mark.parametrize(
    ("datatype", "value", "fmt", "expected"),
    [
        ("boolean", True, None, "true"),
        ("boolean", False, None, "false"),
        ("boolean", 1, None, None),
        ("integer", 104615, None, "104615"),
        ("integer", 12.6, None, "13"),
        ("integer", True, None, None),
        ("integer", "12", None, None),
        ("float", 241.3, None, "241.3"),
        ("float", 240.0, None, "240"),
        ("float", math.nan, None, None),
        ("enum", "charging", "connected,charging", "charging"),
        ("enum", "unknown_42", "ready,unknown", "unknown"),
        ("enum", "weird", "a,b", None),
        ("string", "24.36.3", None, "24.36.3"),
        ("string", [1, 2], None, "[1,2]"),
        ("string", "", None, None),
        ("string", None, None, None),
    ],
)
def test_payloads_match_their_datatype(
    datatype: str, value: object, fmt: str | None, expected: str | None
) -> None:
    """Values become Homie payloads, or None when they cannot be one of the datatype."""
    assert homie_payload(datatype, value, fmt) == expected  # type: ignore[arg-type]


def test_device_node_and_property_messages_are_complete_and_valid() -> None:
    """Device, node and property attributes required by Homie 4 and openHAB are all present."""
    values = sample_values()
    props = node_properties(values)
    assert len({p.id for p in props}) == len(props) == len(values)
    device = device_messages(ROOT, "Bridge", ["car-port"])
    assert device == {
        f"{ROOT}/$homie": HOMIE_VERSION,
        f"{ROOT}/$name": "Bridge",
        f"{ROOT}/$extensions": EXTENSIONS,
        f"{ROOT}/$nodes": "car-port",
    }
    node = node_messages(ROOT, "car-port", "Car port", props)
    assert node[f"{ROOT}/car-port/$name"] == "Car port"
    assert node[f"{ROOT}/car-port/$type"]
    assert node[f"{ROOT}/car-port/$properties"].split(",") == [p.id for p in props]
    for prop in props:
        base = f"{ROOT}/car-port/{prop.id}"
        assert node[f"{base}/$name"]
        assert node[f"{base}/$datatype"] in {"integer", "float", "boolean", "string", "enum"}
        if prop.datatype == "enum":
            assert node[f"{base}/$format"]
    assert_valid(device | node)


# An entry of Homie 4's $extensions list: ``<reverse-domain id>:<version>:[<homie versions>]``.
EXTENSION_ENTRY = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+:\d+\.\d+\.\d+:\[[0-9x.;]+\]")


def test_extensions_is_a_retainable_list_of_valid_entries() -> None:
    """$extensions is never empty (a retained empty payload deletes it) and each entry is valid."""
    outbox = Outbox()
    HomiePublisher(outbox, "homie", "twc3-bridge", "Bridge").start()
    payload = outbox.get(f"{ROOT}/$extensions")
    assert payload
    entries = payload.split(",")
    assert all(EXTENSION_ENTRY.fullmatch(entry) for entry in entries), entries
    assert any("4.x" in entry.split(":")[2] for entry in entries)


def test_value_messages_are_valid_for_their_datatype() -> None:
    """Every published value parses as its property's datatype."""
    values = sample_values()
    props = node_properties(values)
    messages = value_messages(ROOT, "car-port", props, values)
    assert_valid(messages)
    by_id = {p.id: p for p in props}
    assert messages
    for topic, payload in messages.items():
        prop = by_id[topic.rsplit("/", 1)[1]]
        if prop.datatype in {"integer", "float"}:
            assert NUMBER.fullmatch(payload), (topic, payload)
        if prop.datatype == "integer":
            assert "." not in payload
        if prop.datatype == "boolean":
            assert payload in {"true", "false"}
        if prop.datatype == "enum":
            assert prop.format is not None
            assert payload in prop.format.split(",")


def test_node_properties_keep_known_ids_and_skip_missing_values() -> None:
    """Known properties keep their place; None values wait; new values are appended."""
    first = node_properties({("vitals", "grid_v"): 240.0, ("derived", "power_w"): None})
    assert [p.id for p in first] == ["grid-v"]
    second = node_properties(
        {("derived", "power_w"): 10.0, ("vitals", "grid_v"): 241.0}, known=first
    )
    assert [p.id for p in second] == ["grid-v", "derived-power-w"]


def test_publisher_announces_before_ready_and_says_disconnected() -> None:
    """$state is init at start and ready after the node attributes, values and $nodes."""
    outbox = Outbox()
    homie = HomiePublisher(outbox, "homie", "twc3-bridge", "Bridge")
    homie.start()
    assert outbox.get(f"{ROOT}/$state") == "init"
    assert outbox.get(f"{ROOT}/$homie") == HOMIE_VERSION
    assert outbox.get(f"{ROOT}/$nodes") is None  # no empty payload: it would delete
    homie.update_unit("car_port", "Car port", {("vitals", "grid_v"): 240.5})
    homie.update_unit("garage", None, {("vitals", "grid_v"): 239.0})
    pending = [m.topic for m in outbox.pending()]
    assert pending[-1] == f"{ROOT}/$state"
    assert outbox.get(f"{ROOT}/$state") == "ready"
    assert outbox.get(f"{ROOT}/$nodes") == "car-port,garage"
    assert outbox.get(f"{ROOT}/car-port/grid-v") == "240.5"
    assert outbox.get(f"{ROOT}/garage/$name") == "garage"
    assert all(m.retain for m in outbox.pending())
    assert homie.shutdown_messages() == [(f"{ROOT}/$state", "disconnected")]


def test_publisher_value_updates_do_not_reannounce() -> None:
    """A changed value only updates its topic; a new value extends $properties."""
    outbox = Outbox()
    homie = HomiePublisher(outbox, "homie", "twc3-bridge", "Bridge")
    homie.start()
    homie.update_unit("car_port", None, {("vitals", "grid_v"): 240.5})
    for message in outbox.pending():
        outbox.mark_sent(message)
    homie.update_unit("car_port", None, {("vitals", "grid_v"): 241.0})
    assert [m.topic for m in outbox.pending()] == [f"{ROOT}/car-port/grid-v"]
    homie.update_unit(
        "car_port", None, {("vitals", "grid_v"): 241.0, ("derived", "charging"): True}
    )
    assert outbox.get(f"{ROOT}/car-port/$properties") == "grid-v,derived-charging"
    assert [m.topic for m in outbox.pending()][-1] == f"{ROOT}/$state"


def test_node_ids_of_colliding_units_stay_unique() -> None:
    """Two unit ids that map to one Homie id get distinct node ids."""
    homie = HomiePublisher(Outbox(), "homie", "twc3-bridge", "Bridge")
    homie.update_unit("car_port", None, {("vitals", "grid_v"): 1.0})
    homie.update_unit("car-port", None, {("vitals", "grid_v"): 1.0})
    assert homie.node_ids == ["car-port", "car-port-2"]


def test_homie_config_defaults_off_and_validates_ids() -> None:
    """[homie] is disabled by default; device_id and base_topic must suit Homie and openHAB."""
    assert BridgeConfig().homie.enabled is False
    config = BridgeConfig.model_validate({"homie": {"enabled": True}})
    assert (config.homie.base_topic, config.homie.device_id) == ("homie", "twc3-bridge")
    for bad in ({"device_id": "TWC"}, {"device_id": "-x"}, {"base_topic": "a/b"}):
        with pytest.raises(ValidationError):
            HomieConfig.model_validate(bad)


def test_restore_state_publishes_the_current_state_again() -> None:
    """After the Will connection reconnects, the current $state is sent again over a lost."""
    outbox = Outbox()
    homie = HomiePublisher(outbox, "homie", "twc3-bridge", "Bridge")
    homie.restore_state()
    assert outbox.pending() == []
    homie.start()
    homie.update_unit("car_port", None, {("vitals", "grid_v"): 1.0})
    for message in outbox.pending():
        outbox.mark_sent(message)
    homie.restore_state()
    assert [(m.topic, m.payload) for m in outbox.pending()] == [(f"{ROOT}/$state", "ready")]


@pytest.mark.parametrize("datatype", ["integer", "float"])
def test_homie_payload_of_an_integer_of_hundreds_of_digits(datatype: str) -> None:
    """math.isfinite overflowed on it and crashed the poller; now it is written out in full."""
    huge = int("7" * 400)
    assert homie_payload(datatype, huge) == "7" * 400  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("datatype", ["integer", "float"])
def test_homie_payload_of_a_non_finite_number_is_none(datatype: str, value: float) -> None:
    """No NaN or infinity ever reaches a numeric Homie property."""
    assert homie_payload(datatype, value) is None  # type: ignore[arg-type]


def test_homie_payload_of_the_largest_float_as_integer() -> None:
    """1e308 as an integer property is its 309 digits, not an error."""
    payload = homie_payload("integer", 1e308)
    assert payload is not None
    assert len(payload) == 309
