"""Home Assistant's MQTT discovery rules as plain checks, for tests (HA's mqtt component).

Every function returns human-readable problems; an empty list means Home Assistant accepts the
payload *and* it follows this project's own rules. Each problem starts with a label:

- ``rejected:`` Home Assistant refuses the payload (or the entity) with this problem.
- ``hygiene:`` Home Assistant accepts it (dropping a key, warning at run time, or replacing a
  value), but we do not want to publish it.

Only sensor and binary_sensor entities are checked in depth: they are all the bridge announces.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

# homeassistant/components/mqtt/discovery.py
TOPIC_MATCHER: Final = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)
# const.py SUPPORTED_COMPONENTS (2026.11)
SUPPORTED_COMPONENTS: Final = frozenset(
    {
        "alarm_control_panel", "binary_sensor", "button", "camera", "climate", "cover", "date",
        "datetime", "device_automation", "device_tracker", "event", "fan", "humidifier", "image",
        "infrared", "lawn_mower", "light", "lock", "notify", "number", "scene", "siren", "select",
        "sensor", "switch", "tag", "text", "time", "update", "vacuum", "valve", "water_heater",
    }
)  # fmt: skip

# schemas.py MQTT_ENTITY_COMMON_SCHEMA + MQTT_RO_SCHEMA, full names only.
COMMON_ENTITY_KEYS: Final = frozenset(
    {
        "state_topic", "value_template", "unique_id", "default_entity_id", "name", "device",
        "origin", "availability", "availability_mode", "availability_topic",
        "availability_template", "payload_available", "payload_not_available",
        "enabled_by_default", "entity_category", "visible_by_default", "icon", "entity_picture",
        "json_attributes_topic", "json_attributes_template", "qos", "encoding",
    }
)  # fmt: skip
SENSOR_KEYS: Final = COMMON_ENTITY_KEYS | {
    "device_class",
    "unit_of_measurement",
    "state_class",
    "suggested_display_precision",
    "expire_after",
    "force_update",
    "options",
    "last_reset_value_template",
}
BINARY_SENSOR_KEYS: Final = COMMON_ENTITY_KEYS | {
    "device_class",
    "payload_on",
    "payload_off",
    "expire_after",
    "off_delay",
    "force_update",
}
ENTITY_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "sensor": SENSOR_KEYS,
    "binary_sensor": BINARY_SENSOR_KEYS,
}

# schemas.py _MQTT_DEVICE_INFO_SCHEMA_BASE and MQTT_ORIGIN_INFO_SCHEMA
DEVICE_KEYS: Final = frozenset(
    {
        "identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
        "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url",
    }
)  # fmt: skip
ORIGIN_KEYS: Final = frozenset({"name", "sw_version", "support_url"})

# schemas.py and entity.py MqttAvailabilityMixin
AVAILABILITY_ENTRY_KEYS: Final = frozenset(
    {"topic", "payload_available", "payload_not_available", "value_template"}
)
AVAILABILITY_MODES: Final = frozenset({"all", "any", "latest"})
AVAILABILITY_TOPIC_KEYS: Final = frozenset(
    {"availability_topic", "availability_template", "payload_available", "payload_not_available"}
)

# schemas.py DEVICE_DISCOVERY_SCHEMA: the only root keys of a device-based payload (apart from
# the 2026.x-only ones we avoid).
DEVICE_ROOT_KEYS: Final = frozenset(
    {
        "device", "origin", "components", "state_topic", "command_topic", "qos", "encoding",
        "availability", "availability_mode", "availability_topic", "availability_template",
        "payload_available", "payload_not_available",
    }
)  # fmt: skip
# schemas.py SHARED_OPTIONS: copied from the root into components that do not set them.
SHARED_OPTIONS: Final = (
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "command_topic",
    "payload_available",
    "payload_not_available",
    "state_topic",
    "qos",
    "encoding",
)

# sensor/const.py DEVICE_CLASS_UNITS and DEVICE_CLASS_STATE_CLASSES, for the classes used.
STATE_CLASSES: Final = frozenset({"measurement", "total", "total_increasing"})
_MEASUREMENT: Final = frozenset({"measurement"})
SENSOR_DEVICE_CLASS_UNITS: Final[Mapping[str, frozenset[str]]] = {
    "voltage": frozenset({"μV", "mV", "V", "kV", "MV"}),  # μ is U+03BC
    "current": frozenset({"μA", "mA", "A"}),
    "power": frozenset({"mW", "W", "kW", "MW", "GW", "TW"}),
    "energy": frozenset(
        {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh"}
        | {"cal", "kcal", "Mcal", "Gcal", "thm"}
    ),
    "frequency": frozenset({"mHz", "Hz", "kHz", "MHz", "GHz"}),
    "temperature": frozenset({"°C", "°F", "K"}),  # ° is U+00B0
    "duration": frozenset({"μs", "ms", "s", "min", "h", "d"}),
    "signal_strength": frozenset({"dB", "dBm"}),
}
NON_NUMERIC_DEVICE_CLASSES: Final = frozenset({"date", "enum", "timestamp"})
SENSOR_DEVICE_CLASS_STATE_CLASSES: Final[Mapping[str, frozenset[str]]] = {
    "voltage": _MEASUREMENT,
    "current": _MEASUREMENT,
    "power": _MEASUREMENT,
    "energy": frozenset({"total", "total_increasing"}),
    "frequency": _MEASUREMENT,
    "temperature": _MEASUREMENT,
    "duration": STATE_CLASSES,
    "signal_strength": _MEASUREMENT,
    "enum": frozenset(),
}
# binary_sensor/__init__.py BinarySensorDeviceClass
BINARY_SENSOR_DEVICE_CLASSES: Final = frozenset(
    {
        "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
        "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
        "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
        "tamper", "update", "vibration", "window",
    }
)  # fmt: skip

_COMPONENT_ID: Final = re.compile(r"[a-zA-Z0-9_-]+")
_ENTITY_OBJECT_ID: Final = re.compile(r"[a-z0-9_]+")
_MAC: Final = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def discovery_topic_problem(topic: str, prefix: str = "homeassistant") -> str | None:
    """What stops Home Assistant from seeing ``topic`` as a discovery topic, or ``None``."""
    if not topic.startswith(f"{prefix}/"):
        return f"not under the discovery prefix {prefix!r}"
    trimmed = topic.removeprefix(f"{prefix}/")
    match = TOPIC_MATCHER.fullmatch(trimmed)
    if match is None:
        return f"illegal discovery topic {topic!r} (does not match TOPIC_MATCHER)"
    component = match.group("component")
    if component != "device" and component not in SUPPORTED_COMPONENTS:
        return f"component {component!r} is not one Home Assistant subscribes to"
    return None


def topic_problem(topic: object) -> str | None:
    """What is wrong with a state or availability topic (``util.valid_subscribe_topic``)."""
    if not isinstance(topic, str):
        return f"must be a string, not {type(topic).__name__}"
    if not topic:
        return "must not be empty"
    if len(topic.encode("utf-8")) > 65535:
        return "longer than 65535 bytes"
    if "+" in topic or "#" in topic:
        return "contains a wildcard ('+' or '#')"
    for char in topic:
        if unicodedata.category(char) in {"Cc", "Cs"} or _is_noncharacter(char):
            return f"contains the control or non-character {char!r}"
    return None


def _is_noncharacter(char: str) -> bool:
    code = ord(char)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _url_problem(value: object, what: str) -> str | None:
    if not isinstance(value, str):
        return f"rejected: {what} must be a string"
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return f"rejected: {what} {value!r} is not an http(s) URL"
    return None


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# --- device and origin --------------------------------------------------------------------------


def problems_in_device_block(device: object) -> list[str]:
    """Problems in a ``device`` block (strict schema: unknown keys reject the entity)."""
    if not isinstance(device, dict):
        return ["rejected: device must be an object"]
    problems = [
        f"rejected: device has the unknown key {key!r}" for key in device if key not in DEVICE_KEYS
    ]
    problems.extend(
        f"rejected: device {key} must be a string"
        for key in sorted(DEVICE_KEYS - {"identifiers", "connections", "configuration_url"})
        if key in device and not isinstance(device[key], str)
    )
    identifiers = list(_identifier_problems(device.get("identifiers", [])))
    connections = list(_connection_problems(device.get("connections", [])))
    problems.extend(identifiers + connections)
    if not device.get("identifiers") and not device.get("connections"):
        problems.append("rejected: device has neither identifiers nor connections")
    if not isinstance(device.get("name"), str) or not device["name"]:
        problems.append("hygiene: device has no name (HA logs a warning)")
    if "configuration_url" in device and (
        problem := _url_problem(device["configuration_url"], "device configuration_url")
    ):
        problems.append(problem)
    return problems


def _identifier_problems(identifiers: object) -> Iterator[str]:
    items = [identifiers] if isinstance(identifiers, str) else identifiers
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        yield "rejected: device identifiers must be a string or a list of non-empty strings"


def _connection_problems(connections: object) -> Iterator[str]:
    if not isinstance(connections, list):
        yield "rejected: device connections must be a list"
        return
    for pair in connections:
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(part, str) and part for part in pair)
        ):
            yield f"rejected: device connection {pair!r} is not a [type, value] pair"
        elif pair[0] == "mac" and not _MAC.fullmatch(pair[1]):
            yield f"hygiene: MAC connection {pair[1]!r} is not lowercase aa:bb:cc:dd:ee:ff"


def problems_in_origin(origin: object) -> list[str]:
    """Problems in an ``origin`` block: an invalid one makes HA ignore the whole message."""
    if not isinstance(origin, dict):
        return ["rejected: origin must be an object"]
    problems = [
        f"rejected: origin has the unknown key {key!r}" for key in origin if key not in ORIGIN_KEYS
    ]
    if not isinstance(origin.get("name"), str) or not origin["name"]:
        problems.append("rejected: origin has no name")
    if "sw_version" in origin and not isinstance(origin["sw_version"], str):
        problems.append("rejected: origin sw_version must be a string")
    if "support_url" in origin and (
        problem := _url_problem(origin["support_url"], "origin support_url")
    ):
        problems.append(problem)
    return problems


# --- availability -------------------------------------------------------------------------------


def problems_in_availability(payload: Mapping[str, Any]) -> list[str]:
    """Problems in the availability keys of an entity or device payload (MqttAvailabilityMixin)."""
    problems: list[str] = []
    if "availability" in payload:
        if any(key in payload for key in AVAILABILITY_TOPIC_KEYS):
            problems.append(
                "rejected: availability together with availability_topic or payload_(not_)available"
            )
        problems.extend(_availability_list_problems(payload["availability"]))
    if "availability_topic" in payload and (
        problem := topic_problem(payload["availability_topic"])
    ):
        problems.append(f"rejected: availability_topic {problem}")
    if "availability_mode" in payload and payload["availability_mode"] not in AVAILABILITY_MODES:
        problems.append(
            f"rejected: availability_mode {payload['availability_mode']!r} "
            f"not in {sorted(AVAILABILITY_MODES)}"
        )
    return problems


def _availability_list_problems(entries: object) -> Iterator[str]:
    if not isinstance(entries, list):
        yield "rejected: availability must be a list"
        return
    for entry in entries:
        if not isinstance(entry, dict):
            yield f"rejected: availability entry {entry!r} is not an object"
            continue
        for key in entry:
            if key not in AVAILABILITY_ENTRY_KEYS:
                yield f"rejected: availability entry has the unknown key {key!r}"
        if "topic" not in entry:
            yield "rejected: availability entry without topic"
        elif problem := topic_problem(entry["topic"]):
            yield f"rejected: availability topic {problem}"


# --- entities -----------------------------------------------------------------------------------


def problems_in_entity_config(component: str, payload: dict[str, Any]) -> list[str]:
    """Problems in one single-component discovery payload for ``component``."""
    return _entity_problems(component, payload, check_blocks=True)


def _entity_problems(
    component: str, payload: Mapping[str, Any], *, check_blocks: bool
) -> list[str]:
    if component not in ENTITY_KEYS:
        return [f"checker: only sensor and binary_sensor are known, not {component!r}"]
    problems: list[str] = []
    if "object_id" in payload:
        problems.append("hygiene: object_id was removed in HA 2026.4; use default_entity_id")
    problems.extend(
        f"hygiene: unknown key {key!r} (HA drops it)"
        for key in payload
        if key not in ENTITY_KEYS[component] and key != "object_id"
    )
    problems.extend(_topic_and_id_problems(component, payload))
    problems.extend(_value_type_problems(payload))
    if check_blocks:
        if "device" in payload:
            problems.extend(problems_in_device_block(payload["device"]))
        if "origin" in payload:
            problems.extend(problems_in_origin(payload["origin"]))
    problems.extend(problems_in_availability(payload))
    if component == "sensor":
        problems.extend(_sensor_problems(payload))
    else:
        problems.extend(_binary_sensor_problems(payload))
    return problems


def _topic_and_id_problems(component: str, payload: Mapping[str, Any]) -> Iterator[str]:
    if "state_topic" not in payload:
        yield "rejected: state_topic is required"
    elif problem := topic_problem(payload["state_topic"]):
        yield f"rejected: state_topic {problem}"
    if "json_attributes_topic" in payload and (
        problem := topic_problem(payload["json_attributes_topic"])
    ):
        yield f"rejected: json_attributes_topic {problem}"
    if not isinstance(payload.get("unique_id"), str) or not payload["unique_id"]:
        yield "hygiene: unique_id is missing (no device, no UI settings)"
    if "default_entity_id" not in payload:
        yield "hygiene: default_entity_id is missing"
        return
    domain, _, rest = str(payload["default_entity_id"]).partition(".")
    if domain != component or not _ENTITY_OBJECT_ID.fullmatch(rest):
        yield (
            f"hygiene: default_entity_id {payload['default_entity_id']!r} "
            f"is not {component}.<[a-z0-9_]+>"
        )


def _value_type_problems(payload: Mapping[str, Any]) -> Iterator[str]:
    if "name" in payload and payload["name"] is not None and not isinstance(payload["name"], str):
        yield "rejected: name must be a string or null"
    if "entity_category" in payload and payload["entity_category"] != "diagnostic":
        yield f"rejected: entity_category {payload['entity_category']!r} (only 'diagnostic')"
    if "icon" in payload and (not isinstance(payload["icon"], str) or ":" not in payload["icon"]):
        yield f"rejected: icon {payload['icon']!r} has no ':'"
    for key in ("enabled_by_default", "visible_by_default", "force_update"):
        if key in payload and not isinstance(payload[key], bool):
            yield f"rejected: {key} must be a boolean"
    if "qos" in payload and payload["qos"] not in {0, 1, 2}:
        yield f"rejected: qos {payload['qos']!r} not in 0, 1, 2"
    for key in ("expire_after", "off_delay"):
        if key in payload and not _is_int(payload[key], minimum=0):
            yield f"rejected: {key} must be an integer ≥ 0"


def _sensor_problems(payload: Mapping[str, Any]) -> Iterator[str]:
    state_class = payload.get("state_class")
    if state_class is not None and state_class not in STATE_CLASSES:
        yield f"rejected: state_class {state_class!r} not in {sorted(STATE_CLASSES)}"
    if "last_reset_value_template" in payload and state_class != "total":
        yield "rejected: last_reset_value_template needs state_class total"
    if "suggested_display_precision" in payload and not _is_int(
        payload["suggested_display_precision"], minimum=0
    ):
        yield "rejected: suggested_display_precision must be an integer ≥ 0"
    yield from _options_problems(payload)
    device_class = payload.get("device_class")
    if device_class is None or device_class in NON_NUMERIC_DEVICE_CLASSES:
        yield from _non_numeric_problems(payload, device_class)
        return
    if device_class not in SENSOR_DEVICE_CLASS_UNITS:
        yield f"checker: sensor device_class {device_class!r} is not in the table"
        return
    unit = payload.get("unit_of_measurement")
    if unit is None:
        yield f"hygiene: device_class {device_class!r} without unit_of_measurement"
    elif unit not in SENSOR_DEVICE_CLASS_UNITS[device_class]:
        yield f"rejected: unit {unit!r} is not valid with device_class {device_class!r}"
    if state_class is not None and state_class not in SENSOR_DEVICE_CLASS_STATE_CLASSES.get(
        device_class, STATE_CLASSES
    ):
        yield (
            f"hygiene: state_class {state_class!r} is impossible for device_class "
            f"{device_class!r} (HA warns at run time)"
        )


def _non_numeric_problems(payload: Mapping[str, Any], device_class: str | None) -> Iterator[str]:
    # sensor/const.py NON_NUMERIC_DEVICE_CLASSES take no unit and no state class (enum: below).
    if device_class in {"date", "timestamp"} and (
        "unit_of_measurement" in payload or "state_class" in payload
    ):
        yield f"rejected: device_class {device_class!r} takes no unit or state_class"


def _options_problems(payload: Mapping[str, Any]) -> Iterator[str]:
    options = payload.get("options")
    is_enum = payload.get("device_class") == "enum"
    if options is not None:
        if not is_enum:
            yield "rejected: options need device_class enum"
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            yield "rejected: options must be a list of strings"
        elif not options:
            yield "rejected: an empty options list is not allowed"
    if is_enum:
        if options is None:
            yield "hygiene: enum sensor without options"
        if "unit_of_measurement" in payload or "state_class" in payload:
            yield "rejected: enum sensor with unit_of_measurement or state_class"


def _binary_sensor_problems(payload: Mapping[str, Any]) -> Iterator[str]:
    device_class = payload.get("device_class")
    if device_class is not None and device_class not in BINARY_SENSOR_DEVICE_CLASSES:
        yield f"rejected: binary_sensor device_class {device_class!r} is unknown"
    for key in ("payload_on", "payload_off"):
        if key in payload and not isinstance(payload[key], str):
            yield f"hygiene: {key} should be a string, not {payload[key]!r}"
    if payload.get("payload_on", "ON") == payload.get("payload_off", "OFF"):
        yield "hygiene: payload_on equals payload_off"


# --- device-based discovery ---------------------------------------------------------------------


def problems_in_device_config(payload: dict[str, Any]) -> list[str]:
    """Problems in one device-based discovery payload (``<prefix>/device/<id>/config``)."""
    problems = [
        f"rejected: unknown root key {key!r}" for key in payload if key not in DEVICE_ROOT_KEYS
    ]
    for key, check in (("device", problems_in_device_block), ("origin", problems_in_origin)):
        if key in payload:
            problems.extend(check(payload[key]))
        else:
            problems.append(f"rejected: {key} is required")
    problems.extend(problems_in_availability(payload))
    components = payload.get("components", {})
    if not isinstance(components, dict):
        return [*problems, "rejected: components must be an object"]
    seen: dict[str, dict[str, str]] = {"unique_id": {}, "default_entity_id": {}}
    for component_id, config in components.items():
        problems.extend(
            f"component {component_id!r}: {problem}"
            for problem in _component_problems(component_id, config, payload, seen)
        )
    return problems


def _component_problems(
    component_id: str, config: object, root: Mapping[str, Any], seen: dict[str, dict[str, str]]
) -> Iterator[str]:
    # Component ids are the keys of a JSON object, so they are unique by construction.
    if not _COMPONENT_ID.fullmatch(component_id):
        yield "rejected: component id is not [a-zA-Z0-9_-]+"
    if not isinstance(config, dict):
        yield "rejected: not an object"
        return
    platform = config.get("platform")
    if platform not in SUPPORTED_COMPONENTS:
        yield f"rejected: no supported platform ({platform!r})"
        return
    if set(config) == {"platform"}:
        return  # a removal stub: Home Assistant removes the component it names
    if "unique_id" not in config:
        yield "rejected: no unique_id"
    yield from _repeated_id_problems(component_id, config, seen)
    merged = {key: value for key, value in config.items() if key != "platform"}
    for key in SHARED_OPTIONS:
        if key in root and key not in merged:
            merged[key] = root[key]
    yield from _entity_problems(str(platform), merged, check_blocks=False)


def _repeated_id_problems(
    component_id: str, config: Mapping[str, Any], seen: dict[str, dict[str, str]]
) -> Iterator[str]:
    for key, owners in seen.items():
        if key not in config:
            continue
        if (other := owners.get(str(config[key]))) is not None:
            label = "rejected" if key == "unique_id" else "hygiene"
            yield f"{label}: repeats the {key} of component {other!r}"
        owners[str(config[key])] = component_id


# --- discovery migration ------------------------------------------------------------------------

# discovery.py: "migr_discvry" is replaced by "migrate_discovery", then MIGRATE_DISCOVERY_SCHEMA =
# vol.Schema({vol.Optional("migrate_discovery"): True}) must accept the whole payload (no other
# key, the value exactly true), or it is not a migration request at all.
MIGRATE_DISCOVERY_KEYS: Final = frozenset({"migrate_discovery", "migr_discvry"})


def problems_in_migration_request(payload: object) -> list[str]:
    """Problems in a ``{"migrate_discovery": true}`` payload (either discovery form's topic)."""
    if not isinstance(payload, dict):
        return ["rejected: a migration request must be a JSON object"]
    problems = [
        f"rejected: unknown key {key!r} beside migrate_discovery (HA reads it as a config)"
        for key in payload
        if key not in MIGRATE_DISCOVERY_KEYS
    ]
    present = [key for key in MIGRATE_DISCOVERY_KEYS if key in payload]
    if not present:
        problems.append("rejected: migrate_discovery is missing")
    elif len(present) > 1:
        problems.append("hygiene: both migrate_discovery and migr_discvry")
    problems.extend(
        f"rejected: {key} must be true, not {payload[key]!r}"
        for key in present
        if payload[key] is not True
    )
    return problems


def problems_in_discovery_message(
    topic: str, payload: str, prefix: str = "homeassistant"
) -> list[str]:
    """Problems in any retained message on a discovery topic: removal, migration or config."""
    if problem := discovery_topic_problem(topic, prefix):
        return [problem]
    if payload == "":
        return []  # a removal
    try:
        decoded = json.loads(payload)
    except ValueError:
        return ["rejected: not JSON"]
    if isinstance(decoded, dict) and MIGRATE_DISCOVERY_KEYS & decoded.keys():
        return problems_in_migration_request(decoded)
    if not isinstance(decoded, dict):
        return ["rejected: not a JSON object"]
    component = topic.removeprefix(f"{prefix}/").split("/", 1)[0]
    if component == "device":
        return problems_in_device_config(decoded)
    return problems_in_entity_config(component, decoded)
