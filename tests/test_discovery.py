"""Home Assistant discovery payloads: exact shapes, HA's rules over every entity, the enum."""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
from collections import Counter
from typing import Any, Final

import pytest

from bridge import __version__
from bridge.core.derived import EVSE_STATE_NAMES, evse_state_name
from bridge.core.groups import MemberState, group_values
from bridge.presentation.discovery import (
    Site,
    UnitInfo,
    bridge_configs,
    device_config,
    entity_configs,
    group_configs,
    object_id,
    unit_entities,
)
from bridge.presentation.entities import (
    BRIDGE_ENTITIES,
    ENTITIES,
    EVSE_STATE_UNKNOWN,
    GROUP_ENTITIES,
    Entity,
    entities_for_fields,
    entity_for,
)
from bridge.presentation.publishing import field_messages
from tests.discovery_samples import GARAGE as INFO
from tests.discovery_samples import SITE
from tests.ha_schema import (
    discovery_topic_problem,
    problems_in_device_config,
    problems_in_entity_config,
)

NODE: Final = "homeassistant/sensor/twc3_test0001"
BINARY_NODE: Final = "homeassistant/binary_sensor/twc3_test0001"

DEVICE: Final[dict[str, Any]] = {
    "identifiers": ["twc3_test0001"],
    "name": "Garage",
    "manufacturer": "Tesla",
    "model": "Wall Connector Gen 3",
    "model_id": "1529455-02-D",
    "serial_number": "TEST0001",
    "sw_version": "25.34.1+gtest",
    "connections": [["mac", "aa:bb:cc:dd:ee:01"]],
    "configuration_url": "http://192.0.2.50/",
    "via_device": "twc3_bridge_twc3",
}
ORIGIN: Final[dict[str, Any]] = {
    "name": "twc3-mqtt-bridge",
    "sw_version": __version__,
    "support_url": "https://github.com/twc3-mqtt-bridge/twc3-mqtt-bridge",
}
AVAILABILITY: Final[list[dict[str, str]]] = [
    {"topic": "twc3/bridge/state"},
    {"topic": "twc3/garage/availability"},
]
# What every unit entity payload carries besides its own keys.
SHARED: Final[dict[str, Any]] = {
    "availability": AVAILABILITY,
    "availability_mode": "all",
    "qos": 1,
    "device": DEVICE,
    "origin": ORIGIN,
}
STATE_NAME_TEMPLATE: Final = (
    "{{ value if value in ['booting', 'not_connected', 'connected', 'ready', 'negotiating', "
    "'transition', 'waiting_car', 'charging', 'unknown'] else 'unknown' }}"
)
UNKNOWN_FIELDS: Final[dict[str, list[str]]] = {
    "vitals": ["new_sensor_mv", "Odd-Key9"],
    "lifetime": ["future_counter"],
    "wifi_status": ["wifi_band"],
}
# Every field the table knows.
ALL_FIELDS: Final[dict[str, list[str]]] = {}
for _entity in ENTITIES:
    ALL_FIELDS.setdefault(_entity.endpoint, []).append(_entity.field)
for _endpoint, _names in UNKNOWN_FIELDS.items():
    ALL_FIELDS[_endpoint].extend(_names)


def _single(configs: dict[str, dict[str, Any]], topic: str) -> dict[str, Any]:
    assert topic in configs, sorted(configs)
    return configs[topic]


def _all_entities() -> list[Entity]:
    return unit_entities(copy.deepcopy(ALL_FIELDS))


def _all_entity_configs() -> dict[str, dict[str, Any]]:
    return entity_configs(SITE, INFO, _all_entities())


def _all_device_components() -> dict[str, dict[str, Any]]:
    ((_, payload),) = device_config(SITE, INFO, _all_entities()).items()
    components: dict[str, dict[str, Any]] = payload["components"]
    return components


# --- exact payloads -----------------------------------------------------------------------------


def test_grid_voltage_payload_is_exact() -> None:
    """The grid voltage sensor has exactly the expected keys and values."""
    configs = entity_configs(SITE, INFO, entities_for_fields("vitals", ["grid_v"]))
    assert list(configs) == [f"{NODE}/vitals_grid_v/config"]
    assert configs[f"{NODE}/vitals_grid_v/config"] == {
        "name": "Grid voltage",
        "device_class": "voltage",
        "unit_of_measurement": "V",
        "state_class": "measurement",
        "suggested_display_precision": 1,
        "unique_id": "TEST0001_vitals_grid_v",
        "default_entity_id": "sensor.twc3_garage_vitals_grid_v",
        "state_topic": "twc3/garage/vitals/grid_v",
        **SHARED,
    }


def test_vehicle_connected_payload_is_exact() -> None:
    """The plug binary sensor matches the plain true/false payloads of its field topic."""
    configs = entity_configs(SITE, INFO, entities_for_fields("vitals", ["vehicle_connected"]))
    assert _single(configs, f"{BINARY_NODE}/vitals_vehicle_connected/config") == {
        "name": "Vehicle connected",
        "payload_on": "true",
        "payload_off": "false",
        "device_class": "plug",
        "unique_id": "TEST0001_vitals_vehicle_connected",
        "default_entity_id": "binary_sensor.twc3_garage_vitals_vehicle_connected",
        "state_topic": "twc3/garage/vitals/vehicle_connected",
        **SHARED,
    }


def test_state_name_enum_payload_is_exact() -> None:
    """The evse_state_name enum reads derived/evse_state_name and lists every name it can show."""
    configs = entity_configs(SITE, INFO, entities_for_fields("derived", ["evse_state_name"]))
    assert _single(configs, f"{NODE}/derived_evse_state_name/config") == {
        "name": "State",
        "device_class": "enum",
        "options": [
            "booting",
            "not_connected",
            "connected",
            "ready",
            "negotiating",
            "transition",
            "waiting_car",
            "charging",
            "unknown",
        ],
        "value_template": STATE_NAME_TEMPLATE,
        "entity_category": "diagnostic",
        "unique_id": "TEST0001_derived_evse_state_name",
        "default_entity_id": "sensor.twc3_garage_derived_evse_state_name",
        "state_topic": "twc3/garage/derived/evse_state_name",
        **SHARED,
    }


def test_unknown_field_payload_is_a_disabled_diagnostic_sensor() -> None:
    """A field the table does not know becomes a plain, disabled diagnostic sensor."""
    configs = entity_configs(SITE, INFO, entities_for_fields("vitals", ["new_sensor_mv"]))
    assert configs == {
        f"{NODE}/vitals_new_sensor_mv/config": {
            "name": "New sensor mv",
            "entity_category": "diagnostic",
            "enabled_by_default": False,
            "unique_id": "TEST0001_vitals_new_sensor_mv",
            "default_entity_id": "sensor.twc3_garage_vitals_new_sensor_mv",
            "state_topic": "twc3/garage/vitals/new_sensor_mv",
            **SHARED,
        }
    }


BRIDGE_ENTITY: Final[dict[str, Any]] = {
    "name": "Connection state",
    "device_class": "connectivity",
    "payload_on": "online",
    "payload_off": "offline",
    "entity_category": "diagnostic",
    "unique_id": "twc3_bridge_twc3_state",
    "default_entity_id": "binary_sensor.twc3_bridge_twc3_state",
    "state_topic": "twc3/bridge/state",
    "qos": 1,
}
BRIDGE_COMPONENT: Final = {key: value for key, value in BRIDGE_ENTITY.items() if key != "qos"}
BRIDGE_DEVICE: Final[dict[str, Any]] = {
    "identifiers": ["twc3_bridge_twc3"],
    "name": "TWC3 MQTT bridge",
    "manufacturer": "twc3-mqtt-bridge",
    "model": "TWC3 to MQTT bridge",
    "sw_version": __version__,
}


def test_bridge_connectivity_payload_is_exact() -> None:
    """The bridge entity reads the bridge state topic and has no availability of its own."""
    assert bridge_configs(SITE, "entity") == {
        "homeassistant/binary_sensor/twc3_bridge_twc3/state/config": {
            **BRIDGE_ENTITY,
            "device": BRIDGE_DEVICE,
            "origin": ORIGIN,
        }
    }


def test_bridge_device_payload_is_exact() -> None:
    """In device mode the bridge is one device payload with its connectivity component."""
    assert bridge_configs(SITE, "device") == {
        "homeassistant/device/twc3_bridge_twc3/config": {
            "device": BRIDGE_DEVICE,
            "origin": ORIGIN,
            "qos": 1,
            "components": {"state": {"platform": "binary_sensor", **BRIDGE_COMPONENT}},
        }
    }


GROUP_DEVICE: Final[dict[str, Any]] = {
    "identifiers": ["twc3_group_carport"],
    "name": "Power-sharing group Car Port",
    "manufacturer": "twc3-mqtt-bridge",
    "model": "Wall Connector power-sharing group",
    "via_device": "twc3_bridge_twc3",
}
GROUP_POWER: Final[dict[str, Any]] = {
    "name": "Power",
    "device_class": "power",
    "unit_of_measurement": "W",
    "state_class": "measurement",
    "suggested_display_precision": 0,
    "unique_id": "twc3_group_carport_power_w",
    "default_entity_id": "sensor.twc3_group_carport_power_w",
    "state_topic": "twc3/group/carport/power_w",
}
GROUP_FIELDS: Final = (
    "power_w",
    "current_a",
    "members_online",
    "members_configured",
    "members_charging",
)


def test_group_entity_payloads_are_exact() -> None:
    """A group's entities keep their ids and topics; only the bridge must be online."""
    configs = group_configs(SITE, "carport", "Car Port", "entity")
    assert list(configs) == [
        f"homeassistant/sensor/twc3_group_carport/{field}/config" for field in GROUP_FIELDS
    ]
    assert configs["homeassistant/sensor/twc3_group_carport/power_w/config"] == {
        **GROUP_POWER,
        "availability": AVAILABILITY[:1],
        "qos": 1,
        "device": GROUP_DEVICE,
        "origin": ORIGIN,
    }
    assert [payload["unique_id"] for payload in configs.values()] == [
        f"twc3_group_carport_{field}" for field in GROUP_FIELDS
    ]


def test_group_device_payload_is_exact() -> None:
    """In device mode a group is one payload with a component per total."""
    ((topic, payload),) = group_configs(SITE, "carport", "Car Port", "device").items()
    assert topic == "homeassistant/device/twc3_group_carport/config"
    assert list(payload["components"]) == list(GROUP_FIELDS)
    assert payload == {
        "device": GROUP_DEVICE,
        "origin": ORIGIN,
        "availability": AVAILABILITY[:1],
        "qos": 1,
        "components": {
            **payload["components"],
            "power_w": {"platform": "sensor", **GROUP_POWER},
        },
    }


def test_group_and_bridge_payloads_pass_ha_schema() -> None:
    """The group's and the bridge's payloads are valid in both modes."""
    entity_mode = {
        **group_configs(SITE, "carport", "Car Port", "entity"),
        **bridge_configs(SITE, "entity"),
    }
    assert {
        topic: problems_in_entity_config(topic.split("/")[1], payload)
        for topic, payload in entity_mode.items()
    } == {topic: [] for topic in entity_mode}
    device_mode = {
        **group_configs(SITE, "carport", "Car Port", "device"),
        **bridge_configs(SITE, "device"),
    }
    assert {topic: problems_in_device_config(p) for topic, p in device_mode.items()} == {
        topic: [] for topic in device_mode
    }
    topics = [*entity_mode, *device_mode]
    assert {topic: discovery_topic_problem(topic) for topic in topics} == dict.fromkeys(topics)


def test_group_entities_show_what_the_group_totals_publish() -> None:
    """Every group entity reads a value group_values publishes (the leader is text only)."""
    published = group_values("garage", {"garage": MemberState(online=True)})
    assert [entity.field for entity in GROUP_ENTITIES] == list(GROUP_FIELDS)
    assert set(GROUP_FIELDS) == set(published) - {"leader"}
    assert all(entity.scope == "group" for entity in GROUP_ENTITIES)
    assert {entity.scope for entity in BRIDGE_ENTITIES} == {"bridge"}


def test_unit_device_payload_is_exact() -> None:
    """A device payload shares availability at the root and ends with removal stubs."""
    entities = entities_for_fields("vitals", ["grid_v"])
    assert device_config(SITE, INFO, entities, {"vitals_grid_hz": "sensor"}) == {
        "homeassistant/device/twc3_test0001/config": {
            "device": DEVICE,
            "origin": ORIGIN,
            "availability": AVAILABILITY,
            "availability_mode": "all",
            "qos": 1,
            "components": {
                "vitals_grid_v": {
                    "platform": "sensor",
                    "name": "Grid voltage",
                    "device_class": "voltage",
                    "unit_of_measurement": "V",
                    "state_class": "measurement",
                    "suggested_display_precision": 1,
                    "unique_id": "TEST0001_vitals_grid_v",
                    "default_entity_id": "sensor.twc3_garage_vitals_grid_v",
                    "state_topic": "twc3/garage/vitals/grid_v",
                },
                "vitals_grid_hz": {"platform": "sensor"},
            },
        }
    }


def test_device_block_drops_what_ha_would_reject() -> None:
    """A malformed MAC and a non-http configuration URL are left out of the device block."""
    info = UnitInfo(
        unit_id="garage",
        serial="TEST0001",
        mac="not-a-mac",
        configuration_url="ftp://192.0.2.50/",
    )
    ((_, payload),) = entity_configs(SITE, info, entities_for_fields("vitals", ["grid_v"])).items()
    assert payload["device"] == {
        "identifiers": ["twc3_test0001"],
        "name": "Wall Connector garage",
        "manufacturer": "Tesla",
        "model": "Wall Connector Gen 3",
        "serial_number": "TEST0001",
        "via_device": "twc3_bridge_twc3",
    }
    assert problems_in_entity_config("sensor", payload) == []


# --- HA's rules over every entity ---------------------------------------------------------------


def test_every_entity_config_passes_ha_schema() -> None:
    """Every per-entity payload for a body with every known and some unknown fields is valid."""
    configs = {**_all_entity_configs(), **bridge_configs(SITE, "entity")}
    problems = {
        topic: found
        for topic, payload in configs.items()
        if (found := problems_in_entity_config(topic.split("/")[1], payload))
    }
    assert problems == {}


def test_every_device_config_passes_ha_schema() -> None:
    """The device payloads for the same body (and the bridge's) are valid."""
    configs = {
        **device_config(SITE, INFO, _all_entities(), {"vitals_gone": "sensor"}),
        **bridge_configs(SITE, "device"),
    }
    problems = {topic: problems_in_device_config(payload) for topic, payload in configs.items()}
    assert problems == {topic: [] for topic in configs}


def test_every_entity_is_announced_on_its_own_topic() -> None:
    """No two entities share a discovery topic (a shared one would overwrite the other)."""
    entities = _all_entities()
    configs = entity_configs(SITE, INFO, entities)
    assert len(configs) == len(entities)
    assert len(_all_device_components()) == len(entities)


def test_discovery_topics_are_valid_and_unique() -> None:
    """Every discovery topic matches HA's TOPIC_MATCHER, in both modes."""
    topics = [
        *_all_entity_configs(),
        *bridge_configs(SITE, "entity"),
        *device_config(SITE, INFO, _all_entities()),
        *bridge_configs(SITE, "device"),
    ]
    assert {topic: discovery_topic_problem(topic) for topic in topics} == dict.fromkeys(topics)
    assert [t for t, n in Counter(topics).items() if n > 1] == []


def test_unique_ids_are_unique() -> None:
    """No unique_id is used twice, in either mode (HA would drop the second entity)."""
    entity_mode = [
        payload["unique_id"]
        for payload in {**_all_entity_configs(), **bridge_configs(SITE, "entity")}.values()
    ]
    device_mode = [component["unique_id"] for component in _all_device_components().values()]
    assert [u for u, n in Counter(entity_mode).items() if n > 1] == []
    assert [u for u, n in Counter(device_mode).items() if n > 1] == []
    assert sorted(entity_mode) == sorted([*device_mode, "twc3_bridge_twc3_state"])


def test_default_entity_ids_are_unique() -> None:
    """No two entities suggest the same initial entity_id."""
    ids = [payload["default_entity_id"] for payload in _all_entity_configs().values()]
    assert [i for i, n in Counter(ids).items() if n > 1] == []


def test_field_levels_are_valid_object_ids_so_no_two_fields_share_a_topic() -> None:
    """Keys that sanitise alike keep the first; the level is already a valid object id."""
    levels, skipped = field_messages({"odd.key": 1, "odd_key": 2})
    assert levels == {"odd_key": "1"}
    assert skipped == 1
    assert object_id("odd_key") == "odd_key"


def test_state_topics_are_under_the_unit() -> None:
    """Every unit entity reads a topic under twc3/garage/, in both modes."""
    topics = [p["state_topic"] for p in _all_entity_configs().values()]
    topics += [c["state_topic"] for c in _all_device_components().values()]
    assert [t for t in topics if not t.startswith("twc3/garage/")] == []
    entity_mode = {p["unique_id"]: p["state_topic"] for p in _all_entity_configs().values()}
    device_mode = {c["unique_id"]: c["state_topic"] for c in _all_device_components().values()}
    assert entity_mode == device_mode


def test_every_unit_entity_carries_the_full_device_and_availability() -> None:
    """Each per-entity payload repeats the device (with name), origin and both availabilities."""
    for payload in _all_entity_configs().values():
        assert payload["device"] == DEVICE
        assert payload["origin"] == ORIGIN
        if payload["state_topic"].endswith("/derived/reachability"):
            # Why a unit is unreachable matters most while it is: only the bridge must be up.
            assert payload["availability"] == AVAILABILITY[:1]
            continue
        assert payload["availability"] == AVAILABILITY
        assert payload["availability_mode"] == "all"
        assert "object_id" not in payload


# --- the evse_state enum ------------------------------------------------------------------------


def _state_name_entity() -> Entity:
    return entity_for("derived", "evse_state_name")


def test_state_name_template_maps_every_code() -> None:
    """Published names pass through; unknown_<n> and anything else render 'unknown'."""
    template = _state_name_entity().value_template
    assert template is not None
    names = [evse_state_name(code) for code in range(16)]
    samples = {
        name: (name if not name.startswith("unknown_") else "unknown") for name in names if name
    }
    samples["garbage"] = EVSE_STATE_UNKNOWN
    if importlib.util.find_spec("jinja2") is not None:
        jinja2 = importlib.import_module("jinja2")
        compiled = jinja2.Environment(autoescape=False).from_string(template)
        assert {value: compiled.render(value=value) for value in samples} == samples
    else:  # jinja2 is not a dependency: check the template text instead
        listed = ast.literal_eval(template[template.index("[") : template.index("]") + 1])
        assert {value if value in listed else EVSE_STATE_UNKNOWN for value in samples} == set(
            samples.values()
        )
        assert template.endswith(f"else '{EVSE_STATE_UNKNOWN}' }}}}")


def test_state_name_template_renders_only_listed_options() -> None:
    """Every value the template can produce is one of the enum's options."""
    entity = _state_name_entity()
    producible = {*EVSE_STATE_NAMES.values(), EVSE_STATE_UNKNOWN}
    assert set(entity.options) == producible
    assert len(entity.options) == len(set(entity.options))


# --- entity_for / entities_for_fields -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("new_sensor_mv", "New sensor mv"),
        ("Odd-Key9", "Odd Key9"),
        ("dotted.key_x", "Dotted key x"),
        ("x" * 80, "X" + "x" * 63),
        ("___", "___"),
    ],
)
def test_entity_for_unknown_field(field: str, name: str) -> None:
    """An unknown field gets a readable name and a disabled diagnostic sensor."""
    entity = entity_for("vitals", field)
    assert entity == Entity("vitals", field, name, category="diagnostic", enabled=False)
    assert entity.component == "sensor"
    assert entity.reads == field


def test_entity_for_known_field_is_the_table_row() -> None:
    """A known field returns the table's own row."""
    assert entity_for("vitals", "grid_v") in ENTITIES
    assert entity_for("lifetime", "uptime_s").name == "Lifetime powered time"
    assert entity_for("vitals", "uptime_s").name == "Uptime"


def test_entity_for_a_field_on_another_endpoint_is_unknown() -> None:
    """A table field under a different endpoint is not mistaken for the table's row."""
    assert entity_for("version", "grid_v").device_class is None


def _good_sensor() -> dict[str, Any]:
    ((_, payload),) = entity_configs(SITE, INFO, entities_for_fields("vitals", ["grid_v"])).items()
    return copy.deepcopy(payload)


def _changed(**changes: Any) -> dict[str, Any]:
    payload = _good_sensor()
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def _with_device(**changes: Any) -> dict[str, Any]:
    payload = _good_sensor()
    payload["device"].update(changes)
    return payload


SENSOR_PROBLEMS: Final[list[tuple[dict[str, Any], str]]] = [
    (_changed(unit_of_measurement="kWh"), "not valid with device_class 'voltage'"),
    (_changed(unit_of_measurement="µV"), "not valid with device_class 'voltage'"),  # U+00B5
    (_changed(device_class="temperature", unit_of_measurement="C"), "not valid with"),
    (_changed(device_class="energy", unit_of_measurement="Wh"), "impossible for device_class"),
    (_changed(state_class="total_increasing_x"), "state_class"),
    (_changed(device_class="enum", unit_of_measurement=None, options=["a"]), "enum sensor with"),
    (_changed(options=["a"]), "options need device_class enum"),
    (
        _changed(device_class="enum", unit_of_measurement=None, state_class=None, options=[]),
        "empty options",
    ),
    (_changed(last_reset_value_template="{{ 0 }}"), "last_reset_value_template"),
    (_changed(entity_category="config"), "entity_category"),
    (_changed(suggested_display_precision=-1), "suggested_display_precision"),
    (_changed(suggested_display_precision=True), "suggested_display_precision"),
    (_changed(icon="counter"), "icon"),
    (_changed(availability_topic="twc3/bridge/state"), "availability together"),
    (_changed(availability_mode="every"), "availability_mode"),
    (_changed(availability=[{"topic": "a", "qos": 1}]), "unknown key 'qos'"),
    (_changed(state_topic=None), "state_topic is required"),
    (_changed(state_topic="twc3/+/grid_v"), "wildcard"),
    (_changed(state_topic="twc3/#"), "wildcard"),
    (_changed(state_topic="twc3/\x07/grid_v"), "control"),
    (_changed(state_topic=""), "must not be empty"),
    (_changed(unique_id=None), "unique_id"),
    (_changed(object_id="grid_v"), "object_id"),
    (_changed(default_entity_id="binary_sensor.grid_v"), "default_entity_id"),
    (_changed(default_entity_id="sensor.Grid-V"), "default_entity_id"),
    (_changed(expire_after="90"), "expire_after"),
    (_changed(unit="V"), "hygiene: unknown key 'unit'"),
    (_with_device(mac="aa:bb:cc:dd:ee:01"), "device has the unknown key 'mac'"),
    (_with_device(identifiers=[], connections=[]), "neither identifiers nor connections"),
    (_with_device(connections=[["mac", "AA:BB:CC:DD:EE:01"]]), "lowercase"),
    (_with_device(connections=[["mac"]]), "[type, value] pair"),
    (_with_device(configuration_url="ftp://192.0.2.50/"), "configuration_url"),
    (_with_device(name=""), "device has no name"),
    (_changed(origin={"sw_version": "1"}), "origin has no name"),
    (_changed(origin={"name": "x", "url": "https://x"}), "origin has the unknown key 'url'"),
]


@pytest.mark.parametrize(("payload", "expected"), SENSOR_PROBLEMS)
def test_checker_flags_bad_sensor_payloads(payload: dict[str, Any], expected: str) -> None:
    """The checker reports each schema rejection (and our own rules) on an otherwise good sensor."""
    problems = problems_in_entity_config("sensor", payload)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"device_class": "charging"}, "device_class 'charging'"),
        ({"payload_on": True}, "payload_on"),
        ({"payload_on": "x", "payload_off": "x"}, "payload_on equals payload_off"),
        ({"unit_of_measurement": "V"}, "unknown key 'unit_of_measurement'"),
    ],
)
def test_checker_flags_bad_binary_sensor_payloads(changes: dict[str, Any], expected: str) -> None:
    """Binary sensors need a known device class and string payloads."""
    configs = entity_configs(SITE, INFO, entities_for_fields("vitals", ["vehicle_connected"]))
    ((_, payload),) = configs.items()
    assert problems_in_entity_config("binary_sensor", payload) == []
    problems = problems_in_entity_config("binary_sensor", {**payload, **changes})
    assert any(expected in problem for problem in problems), problems


def _good_device_payload() -> dict[str, Any]:
    ((_, payload),) = device_config(SITE, INFO, entities_for_fields("vitals", ["grid_v"])).items()
    return copy.deepcopy(payload)


def _device_with(**changes: Any) -> dict[str, Any]:
    payload = _good_device_payload()
    payload.update(changes)
    return payload


def _component_with(**changes: Any) -> dict[str, Any]:
    payload = _good_device_payload()
    component = payload["components"]["vitals_grid_v"]
    for key, value in changes.items():
        if value is None:
            component.pop(key)
        else:
            component[key] = value
    return payload


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (_device_with(name="Garage"), "unknown root key 'name'"),
        (_device_with(**{"~": "twc3/garage"}), "unknown root key '~'"),
        (_device_with(expire_after=90), "unknown root key 'expire_after'"),
        ({k: v for k, v in _good_device_payload().items() if k != "origin"}, "origin is required"),
        (_device_with(availability_topic="twc3/bridge/state"), "availability together"),
        (_component_with(platform=None), "no supported platform"),
        (_component_with(platform="gauge"), "no supported platform"),
        (_component_with(unique_id=None), "no unique_id"),
        (_component_with(unit_of_measurement="Wh"), "not valid with device_class"),
        (
            _device_with(components={"a.b": {"platform": "sensor", "unique_id": "x"}}),
            "[a-zA-Z0-9_-]",
        ),
        (
            _device_with(
                components={
                    "a": {"platform": "sensor", "unique_id": "x", "state_topic": "t/a"},
                    "b": {"platform": "sensor", "unique_id": "x", "state_topic": "t/b"},
                }
            ),
            "repeats the unique_id",
        ),
        (
            _device_with(components={"a": {"platform": "sensor", "unique_id": "x"}}),
            "state_topic is required",
        ),
    ],
)
def test_checker_flags_bad_device_payloads(payload: dict[str, Any], expected: str) -> None:
    """The checker reports what makes HA reject a device-based payload."""
    problems = problems_in_device_config(payload)
    assert any(expected in problem for problem in problems), problems


def test_checker_accepts_shared_state_topic_and_removal_stubs() -> None:
    """A component may take state_topic from the root, and a platform-only stub is a removal."""
    payload = _device_with(
        state_topic="twc3/garage/vitals",
        components={
            "a": {
                "platform": "sensor",
                "unique_id": "x",
                "default_entity_id": "sensor.x",
                "value_template": "{{ value_json.a }}",
            },
            "gone": {"platform": "binary_sensor"},
        },
    )
    assert problems_in_device_config(payload) == []


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("homeassistant/sensor/twc3_test0001/vitals_grid_v/config", True),
        ("homeassistant/sensor/vitals_grid_v/config", True),
        ("homeassistant/device/twc3_test0001/config", True),
        ("homeassistant/sensor/a/b/c/config", False),
        ("homeassistant/sensor/twc3/vitals.grid_v/config", False),
        ("homeassistant/sensor/twc3/grid v/config", False),
        ("homeassistant/gauge/twc3/grid_v/config", False),
        ("homeassistant/sensor/twc3/grid_v/state", False),
        ("other/sensor/twc3/grid_v/config", False),
    ],
)
def test_checker_discovery_topics(topic: str, ok: bool) -> None:
    """discovery_topic_problem follows HA's TOPIC_MATCHER and component list."""
    assert (discovery_topic_problem(topic) is None) is ok


# --- named instances ---------------------------------------------------------------------------


def test_each_instance_is_its_own_bridge_device_with_its_own_state_topic() -> None:
    east = Site(prefix="homeassistant", base_topic="twc3", instance="east-wing")
    west = Site(prefix="homeassistant", base_topic="twc3", instance="west")
    assert len({SITE.bridge_identifier, east.bridge_identifier, west.bridge_identifier}) == 3
    for mode in ("entity", "device"):
        east_configs = bridge_configs(east, mode)
        assert set(east_configs).isdisjoint(bridge_configs(west, mode))
        assert set(east_configs).isdisjoint(bridge_configs(SITE, mode))
    (payload,) = bridge_configs(east, "entity").values()
    assert payload["state_topic"] == "twc3/bridge/east-wing/state"
    assert payload["device"]["name"] == "TWC3 MQTT bridge east-wing"
    assert payload["default_entity_id"] == "binary_sensor.twc3_bridge_twc3_east_wing_state"
    for topic, config in bridge_configs(east, "entity").items():
        assert problems_in_entity_config(topic.split("/")[1], config) == []
    for config in bridge_configs(east, "device").values():
        assert problems_in_device_config(config) == []


def test_an_instances_units_depend_on_its_own_state_topic_only() -> None:
    east = Site(prefix="homeassistant", base_topic="twc3", instance="east")
    configs = entity_configs(east, INFO, unit_entities({"vitals": ["grid_v"]}))
    (payload,) = configs.values()
    topics = [entry["topic"] for entry in payload["availability"]]
    assert "twc3/bridge/east/state" in topics
    assert "twc3/bridge/state" not in topics
    assert payload["device"]["via_device"] == east.bridge_identifier
    (device_payload,) = device_config(east, INFO, unit_entities({"vitals": ["grid_v"]})).values()
    assert {"topic": "twc3/bridge/east/state"} in device_payload["availability"]
