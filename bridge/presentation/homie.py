"""Homie 4 publishing, so openHAB's Homie binding finds the connectors without Home Assistant.

Layout (Homie convention 4.0): one Homie device for the bridge (one MQTT connection may
publish only one device), one node per connector, one property per known value of that unit.
Everything goes through the :class:`~bridge.core.outbox.Outbox` (retained, QoS 1).

``$extensions`` is mandatory in Homie 4, "even if it is just an empty string", but an empty
retained payload deletes a topic in MQTT, so "no extensions" cannot be retained. The device
therefore declares the Meta extension (``eu.epnw.meta``, in the convention's
``extensions/documents``), all of whose attributes are optional: a controller that knows it
finds no tags or metadata and uses its defaults, one that does not (openHAB) ignores the list.

The builder functions here are pure; :class:`HomiePublisher` keeps which nodes and properties
were announced and puts their topics into the outbox. No network I/O happens in this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from bridge.core.names import field_level
from bridge.core.outbox import Outbox
from bridge.presentation.entities import EVSE_STATE_UNKNOWN, Entity, entity_for
from bridge.presentation.topics import compact_json, format_number

HOMIE_VERSION: Final = "4.0.0"
# Never empty (see the module docstring): Meta's attributes are all optional, none is published.
EXTENSIONS: Final = "eu.epnw.meta:1.1.0:[3.0.1;4.x]"
NODE_TYPE: Final = "Tesla Wall Connector Gen 3"
# The units this bridge hands to Homie (openHAB parses them with UnitUtils); others are left out.
HOMIE_UNITS: Final = frozenset({"V", "A", "W", "Wh", "kWh", "Hz", "°C", "s", "%", "dBm"})
# Fields of these endpoints are properties without a prefix; the others get one so ids stay
# unique (``uptime-s`` is vitals, ``lifetime-uptime-s`` the lifetime counter).
_PROPERTY_PREFIX: Final[Mapping[str, str]] = {
    "vitals": "",
    "version": "",
    "wifi_status": "",
    "lifetime": "lifetime-",
    "derived": "derived-",
}
_ID_PATTERN: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_NOT_ID: Final = re.compile(r"[^a-z0-9]+")
MAX_ID_LENGTH: Final = 64

State = Literal["init", "ready", "disconnected", "sleeping", "lost", "alert"]
Datatype = Literal["integer", "float", "boolean", "string", "enum"]


def homie_id(text: str) -> str:
    """``text`` as a Homie id: ``[a-z0-9-]``, no leading or trailing hyphen (may be empty)."""
    return _NOT_ID.sub("-", text.lower())[:MAX_ID_LENGTH].strip("-")


def is_homie_id(text: str) -> bool:
    """Whether ``text`` is a valid Homie 4 topic id."""
    return _ID_PATTERN.fullmatch(text) is not None


def property_id(endpoint: str, field: str) -> str:
    """The property id of one field: ``grid-v``, ``lifetime-charge-starts``, ``derived-power-w``."""
    prefix = _PROPERTY_PREFIX.get(endpoint, f"{homie_id(endpoint)}-")
    return homie_id(prefix + field) or homie_id(endpoint) or "value"


def unique_id(candidate: str, taken: Iterable[str]) -> str:
    """``candidate``, or ``candidate-2``, ``-3``… if already taken."""
    used = set(taken)
    if candidate not in used:
        return candidate
    number = 2
    while f"{candidate}-{number}" in used:
        number += 1
    return f"{candidate}-{number}"


def datatype_for(entity: Entity, sample: object = None) -> Datatype:
    """The Homie datatype of an entity; the table decides, the first value only when it is silent.

    Binary sensors are ``boolean``, entities with options ``enum``, those with a unit, a state
    class or a precision are numbers (``integer`` at precision 0, else ``float``). Plain text
    entities stay ``string`` unless their value is a number or a boolean (``evse_state``).
    """
    if entity.component == "binary_sensor":
        return "boolean"
    if entity.options:
        return "enum"
    if entity.device_class == "timestamp":
        return "string"
    if entity.unit is not None or entity.state_class is not None or entity.precision is not None:
        return "integer" if entity.precision == 0 else "float"
    if isinstance(sample, bool):
        return "boolean"
    if isinstance(sample, int):
        return "integer"
    if isinstance(sample, float):
        return "float"
    return "string"


def homie_unit(entity: Entity) -> str | None:
    """The entity's unit if Homie consumers understand it, else ``None``."""
    return entity.unit if entity.unit in HOMIE_UNITS else None


@dataclass(frozen=True, slots=True)
class HomieProperty:
    """One Homie property: a value of a connector."""

    id: str
    endpoint: str
    field: str
    name: str
    datatype: Datatype
    unit: str | None = None
    format: str | None = None

    def attributes(self) -> dict[str, str]:
        """``{"$name": …, "$datatype": …}`` plus ``$unit`` and ``$format`` when set."""
        attributes = {"$name": self.name, "$datatype": self.datatype}
        if self.unit is not None:
            attributes["$unit"] = self.unit
        if self.format is not None:
            attributes["$format"] = self.format
        return attributes

    def payload(self, value: object) -> str | None:
        """The value as this property's Homie payload, or ``None`` if it cannot be one."""
        return homie_payload(self.datatype, value, self.format)


def build_property(
    entity: Entity, sample: object = None, prop_id: str | None = None
) -> HomieProperty:
    """The Homie property for one entity of the table."""
    datatype = datatype_for(entity, sample)
    return HomieProperty(
        id=prop_id or property_id(entity.endpoint, entity.field),
        endpoint=entity.endpoint,
        field=entity.field,
        name=entity.name,
        datatype=datatype,
        unit=homie_unit(entity) if datatype in {"integer", "float"} else None,
        format=",".join(entity.options) if datatype == "enum" else None,
    )


def homie_payload(datatype: Datatype, value: object, format_: str | None = None) -> str | None:
    """Format a value for a property of ``datatype``; ``None`` when it has no valid payload.

    Booleans ``true``/``false``; integers in decimal (rounded); floats plain; enum values must be
    an option (else ``unknown`` if that is one); strings as they are, lists and objects as JSON.
    Empty strings are never returned: a retained empty payload would delete the topic.
    """
    if value is None:
        return None
    if datatype == "boolean":
        return ("true" if value else "false") if isinstance(value, bool) else None
    if datatype in {"integer", "float"}:
        return _number_payload(value, integer=datatype == "integer")
    text = value if isinstance(value, str) else compact_json(value)
    if datatype == "enum":
        options = (format_ or "").split(",")
        if text in options:
            return text
        return EVSE_STATE_UNKNOWN if EVSE_STATE_UNKNOWN in options else None
    return text or None


def _number_payload(value: object, *, integer: bool) -> str | None:
    # Any JSON number: integers of any size (math.isfinite would overflow on them), NaN, ±inf.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        return str(round(value)) if integer else format_number(value)
    except ValueError:  # more digits than int_max_str_digits allows in text
        return None


def node_properties(
    values: Mapping[tuple[str, str], object], known: Iterable[HomieProperty] = ()
) -> list[HomieProperty]:
    """The properties of a node: ``known`` ones first (ids stay stable), then new values.

    ``values`` maps ``(endpoint, field level)`` to the current value; ``None`` values are left
    out until they have one.
    """
    properties = list(known)
    have = {(p.endpoint, p.field) for p in properties}
    ids = {p.id for p in properties}
    for (endpoint, field), value in values.items():
        if (endpoint, field) in have or value is None:
            continue
        entity = entity_for(endpoint, field)
        prop = build_property(entity, value, unique_id(property_id(endpoint, field), ids))
        properties.append(prop)
        ids.add(prop.id)
        have.add((endpoint, field))
    return properties


def device_messages(root: str, name: str, node_ids: Iterable[str]) -> dict[str, str]:
    """The device attributes other than ``$state``; ``$nodes`` only once there is a node."""
    messages = {
        f"{root}/$homie": HOMIE_VERSION,
        f"{root}/$name": name,
        f"{root}/$extensions": EXTENSIONS,
    }
    nodes = ",".join(node_ids)
    if nodes:
        messages[f"{root}/$nodes"] = nodes
    return messages


def node_messages(
    root: str, node_id: str, name: str, properties: Iterable[HomieProperty]
) -> dict[str, str]:
    """A node's ``$name``, ``$type`` and ``$properties`` and each property's attributes."""
    props = list(properties)
    node = f"{root}/{node_id}"
    messages = {f"{node}/$name": name, f"{node}/$type": NODE_TYPE}
    if props:
        messages[f"{node}/$properties"] = ",".join(p.id for p in props)
    for prop in props:
        for attribute, payload in prop.attributes().items():
            messages[f"{node}/{prop.id}/{attribute}"] = payload
    return messages


def value_messages(
    root: str,
    node_id: str,
    properties: Iterable[HomieProperty],
    values: Mapping[tuple[str, str], object],
) -> dict[str, str]:
    """The property value topics that currently have a valid payload."""
    messages: dict[str, str] = {}
    for prop in properties:
        payload = prop.payload(values.get((prop.endpoint, prop.field)))
        if payload is not None:
            messages[f"{root}/{node_id}/{prop.id}"] = payload
    return messages


def device_root(base_topic: str, device_id: str) -> str:
    """The root topic of the Homie device."""
    return f"{base_topic}/{device_id}"


def nodes_topic(root: str) -> str:
    """The device's ``$nodes`` attribute."""
    return f"{root}/$nodes"


def node_tree(root: str, node_id: str) -> str:
    """A subscription filter for every topic of one node (``<root>/<node>/#``)."""
    return f"{root}/{node_id}/#"


def is_node_topic(topic: str, root: str, node_id: str) -> bool:
    """Whether ``topic`` belongs to node ``node_id`` of the device at ``root``."""
    return topic.startswith(f"{root}/{node_id}/")


def nodes_without(nodes: str, node_ids: Iterable[str]) -> str:
    """A ``$nodes`` payload without ``node_ids`` (``""``: no node left, delete the attribute)."""
    gone = set(node_ids)
    return ",".join(node for node in nodes.split(",") if node and node not in gone)


@dataclass(slots=True)
class _Node:
    id: str
    name: str
    properties: list[HomieProperty]


class HomiePublisher:
    """The bridge's Homie device: announces nodes as units become known, then their values."""

    def __init__(self, outbox: Outbox, base_topic: str, device_id: str, name: str) -> None:
        self.outbox = outbox
        self.root = device_root(base_topic, device_id)
        self.state_topic = f"{self.root}/$state"
        self.name = name
        self._nodes: dict[str, _Node] = {}  # by unit id, in announce order

    def start(self) -> None:
        """Announce the device itself, in ``init`` until its first node is ready."""
        self._put_all(device_messages(self.root, self.name, ()))
        self._set_state("init")

    @property
    def node_ids(self) -> list[str]:
        """The announced node ids, in order."""
        return [node.id for node in self._nodes.values()]

    def update_unit(
        self, unit_id: str, name: str | None, values: Mapping[tuple[str, str], object]
    ) -> None:
        """Publish a unit's values; (re-)announce its node first when it is new, grew or shrank.

        ``values`` holds every value the node should have (``None``: known, but unknown now);
        the property of a key no longer in it is removed (attribute and value topics cleared).
        Cheap when nothing new appeared: one dict pass and outbox puts that drop unchanged values.
        """
        node = self._nodes.get(unit_id)
        if node is None:
            node_id = unique_id(homie_id(unit_id) or "unit", self.node_ids)
            node = _Node(node_id, name or unit_id, [])
            self._nodes[unit_id] = node
        gone = [p for p in node.properties if (p.endpoint, p.field) not in values]
        if gone:
            self._remove_properties(node, gone)
        grown = len(node.properties)
        node.properties = node_properties(values, node.properties)
        if len(node.properties) != grown or not grown or gone:
            self._put_all(node_messages(self.root, node.id, node.name, node.properties))
            self._put_all(device_messages(self.root, self.name, self.node_ids))
            self._put_all(value_messages(self.root, node.id, node.properties, values))
            self._set_state("ready")
            return
        self._put_all(value_messages(self.root, node.id, node.properties, values))

    def _remove_properties(self, node: _Node, gone: list[HomieProperty]) -> None:
        removed = {p.id for p in gone}
        node.properties = [p for p in node.properties if p.id not in removed]
        base = f"{self.root}/{node.id}"
        for prop in gone:
            self.outbox.delete(f"{base}/{prop.id}")
            for attribute in prop.attributes():
                self.outbox.delete(f"{base}/{prop.id}/{attribute}")
        if not node.properties:  # no empty payload: it would delete the topic
            self.outbox.delete(f"{base}/$properties")

    def publish_nodes(self) -> None:
        """Publish ``$nodes`` as this run knows it, over one a removed node's left retained."""
        nodes = ",".join(self.node_ids)
        if nodes:
            self.outbox.put(nodes_topic(self.root), nodes, always=True)
        else:  # no empty payload: it would delete the topic; the first node brings it back
            self.outbox.delete(nodes_topic(self.root))

    def restore_state(self) -> None:
        """Publish the current ``$state`` again over a ``lost`` (a Will, or the Will keeper's)."""
        state = self.outbox.get(self.state_topic)
        if state is not None:
            self.outbox.put(self.state_topic, state, always=True)

    def shutdown_messages(self) -> list[tuple[str, str]]:
        """What to publish on a clean exit: ``$state`` = ``disconnected``."""
        return [(self.state_topic, "disconnected")]

    def _put_all(self, messages: Mapping[str, str]) -> None:
        for topic, payload in messages.items():
            self.outbox.put(topic, payload)

    def _set_state(self, state: State) -> None:
        # ``$state`` must reach the broker after the attributes it vouches for. The outbox keeps
        # a dirty topic at its first position, so take it out and put it back at the end.
        self.outbox.delete(self.state_topic)
        self.outbox.put(self.state_topic, state, always=True)


def unit_values(
    bodies: Mapping[str, Mapping[str, Any]], derived: Mapping[str, object]
) -> dict[tuple[str, str], object]:
    """``{(endpoint, field level): value}`` of a unit's latest bodies and derived values."""
    values: dict[tuple[str, str], object] = {}
    for endpoint, fields in bodies.items():
        for key, value in fields.items():
            level = field_level(key)
            if level is not None:
                values.setdefault((endpoint, level), value)
    for name, value in derived.items():
        values[("derived", name)] = value
    return values
