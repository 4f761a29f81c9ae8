"""Home Assistant MQTT discovery payloads, built as plain data from the entity table.

Everything here is pure: given what is known about a unit, return ``{config topic: payload}``.
Payloads use full key names and only keys that Home Assistant's discovery schema accepts
(home-assistant/core, homeassistant/components/mqtt/schemas.py), so openHAB's Home Assistant
binding, which runs that schema, accepts them too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from bridge import __version__
from bridge.core.names import slugify
from bridge.presentation.entities import (
    BRIDGE_ENTITIES,
    GROUP_ENTITIES,
    Entity,
    entities_for_fields,
)
from bridge.presentation.topics import TopicLayout

DiscoveryMode = Literal["entity", "device", "off"]

PROJECT_URL: Final = "https://github.com/twc3-mqtt-bridge/twc3-mqtt-bridge"
ORIGIN: Final[dict[str, str]] = {
    "name": "twc3-mqtt-bridge",
    "sw_version": __version__,
    "support_url": PROJECT_URL,
}
MANUFACTURER: Final = "Tesla"
MODEL: Final = "Wall Connector Gen 3"
_MAC: Final = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_OBJECT_ID_UNSAFE: Final = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True, slots=True)
class Site:
    """Bridge-wide settings every payload needs."""

    prefix: str
    base_topic: str
    instance: str | None = None  # ``[bridge] instance``: one of several processes on the base
    # ``[discovery] networks`` is set: the bridge's search counters are announced too.
    searching: bool = False

    @property
    def bridge_identifier(self) -> str:
        """The bridge device's identifier; distinct per base topic and instance, never merged."""
        identifier = f"twc3_bridge_{slugify(self.base_topic) or 'default'}"
        # A slug: the identifier is also part of entity ids, which allow only [a-z0-9_].
        return f"{identifier}_{slugify(self.instance)}" if self.instance else identifier

    @property
    def layout(self) -> TopicLayout:
        """The bridge's own topics, which the discovery configs point at."""
        return TopicLayout(self.base_topic, self.instance)

    @property
    def bridge_state_topic(self) -> str:
        """The bridge's online/offline topic (also its MQTT Will)."""
        return self.layout.bridge_state

    @property
    def status_topic(self) -> str:
        """Where Home Assistant (and openHAB) announce they came online."""
        return f"{self.prefix}/status"


@dataclass(frozen=True, slots=True)
class UnitInfo:
    """What discovery needs to know about one connector."""

    unit_id: str
    serial: str
    name: str | None = None
    part_number: str | None = None
    firmware: str | None = None
    mac: str | None = None
    configuration_url: str | None = None
    via_device: str | None = None

    @property
    def identifier(self) -> str:
        """Device identifier from the serial number: stable when the address or name changes."""
        return f"twc3_{slugify(self.serial)}"


def object_id(text: str) -> str:
    """A discovery node or object id: ``[a-zA-Z0-9_-]`` only."""
    return _OBJECT_ID_UNSAFE.sub("_", text)[:128]


# Home Assistant's sensor reads the payload "None" (after value_template) as unknown
# (homeassistant/components/mqtt/sensor.py, PAYLOAD_NONE), and so does openHAB's Home Assistant
# binding, which sets "None" as the null value of its sensor channels (component/Sensor.java). The
# plain topic keeps saying "null", which Node-RED and scripts read as JSON null.
NULL_TEMPLATE: Final = "{{ 'None' if value == 'null' else value }}"


def entity_availability(site: Site, unit_id: str, entity: Entity) -> list[dict[str, str]]:
    """The availability list of one entity: the bridge, and the unit unless always available.

    Nothing else: openHAB puts every entity's availability topics on one tracker per device, so
    an entity-specific topic there would take the whole device offline.
    """
    if entity.always_available:
        return [{"topic": site.bridge_state_topic}]
    return availability(site, unit_id)


def availability(site: Site, unit_id: str) -> list[dict[str, str]]:
    """Both the bridge and the unit must be online for an entity to be available."""
    return [
        {"topic": site.bridge_state_topic},
        {"topic": site.layout.availability(unit_id)},
    ]


def bridge_device(site: Site) -> dict[str, Any]:
    """The bridge's own device block."""
    name = "TWC3 MQTT bridge" if site.base_topic == "twc3" else f"TWC3 bridge {site.base_topic}"
    return {
        "identifiers": [site.bridge_identifier],
        "name": f"{name} {site.instance}" if site.instance else name,
        "manufacturer": "twc3-mqtt-bridge",
        "model": "TWC3 to MQTT bridge",
        "sw_version": __version__,
    }


def unit_device(info: UnitInfo, site: Site) -> dict[str, Any]:
    """The device block of one Wall Connector."""
    device: dict[str, Any] = {
        "identifiers": [info.identifier],
        "name": info.name or f"Wall Connector {info.unit_id}",
        "manufacturer": MANUFACTURER,
        "model": MODEL,
        "serial_number": info.serial,
        "via_device": info.via_device or site.bridge_identifier,
    }
    mac = (info.mac or "").strip().lower()
    if _MAC.fullmatch(mac):
        device["connections"] = [["mac", mac]]
    if info.part_number:
        device["model_id"] = info.part_number
    if info.firmware:
        device["sw_version"] = info.firmware
    if info.configuration_url and info.configuration_url.startswith(("http://", "https://")):
        device["configuration_url"] = info.configuration_url
    return device


def entity_options(entity: Entity) -> dict[str, Any]:
    """The entity-specific keys of a discovery payload (no topics, device or availability)."""
    options: dict[str, Any] = {"name": entity.name}
    if entity.component == "binary_sensor":
        options["payload_on"] = entity.payload_on
        options["payload_off"] = entity.payload_off
    optional: dict[str, Any] = {
        "device_class": entity.device_class,
        "unit_of_measurement": entity.unit,
        "state_class": entity.state_class,
        "suggested_display_precision": entity.precision,
        "options": list(entity.options) or None,
        "value_template": entity.value_template or (NULL_TEMPLATE if entity.nullable else None),
        "entity_category": entity.category,
        "enabled_by_default": None if entity.enabled else False,
        "icon": entity.icon,
    }
    options.update((key, value) for key, value in optional.items() if value is not None)
    return options


def _component(entity: Entity, ids: dict[str, str], state_topic: str) -> dict[str, Any]:
    """What every entity's payload says, in either discovery mode, without device or qos."""
    return {**entity_options(entity), **ids, "state_topic": state_topic}


def _entity_ids(entity: Entity, info: UnitInfo) -> dict[str, str]:
    field_slug = slugify(entity.field.replace(".", "_")) or "field"
    unit_slug = slugify(info.unit_id) or slugify(info.serial)
    return {
        "unique_id": f"{info.serial}_{entity.endpoint}_{entity.field}",
        # The endpoint is part of it: vitals and lifetime both have an uptime_s.
        "default_entity_id": f"{entity.component}.twc3_{unit_slug}_{entity.endpoint}_{field_slug}",
    }


def unit_entities(fields: dict[str, list[str]]) -> list[Entity]:
    """Every entity to announce for the fields each endpoint's latest body has."""
    entities: list[Entity] = []
    for endpoint, names in fields.items():
        entities.extend(entities_for_fields(endpoint, names))
    return entities


def entity_config_topic(site: Site, info: UnitInfo, entity: Entity) -> str:
    """Where one entity's per-entity discovery config goes."""
    node = object_id(info.identifier)
    return f"{site.prefix}/{entity.component}/{node}/{object_id(entity.key)}/config"


def entity_config(
    site: Site, info: UnitInfo, entity: Entity, device: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One entity's per-entity discovery payload (``device`` is built when not given)."""
    state_topic = site.layout.field(info.unit_id, entity.endpoint, entity.reads)
    return {
        **_component(entity, _entity_ids(entity, info), state_topic),
        "availability": entity_availability(site, info.unit_id, entity),
        "availability_mode": "all",
        "qos": 1,
        "device": unit_device(info, site) if device is None else device,
        "origin": ORIGIN,
    }


def entity_configs(site: Site, info: UnitInfo, entities: list[Entity]) -> dict[str, dict[str, Any]]:
    """Per-entity discovery: ``{<prefix>/<component>/<node>/<object>/config: payload}``."""
    device = unit_device(info, site)
    return {
        entity_config_topic(site, info, entity): entity_config(site, info, entity, device)
        for entity in entities
    }


def device_config(
    site: Site, info: UnitInfo, entities: list[Entity], removed: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Device-based discovery: one ``<prefix>/device/<node>/config`` holding every component.

    ``removed`` maps component ids announced before but gone now to their platform: Home
    Assistant removes a component when it appears once reduced to its platform.
    """
    components: dict[str, dict[str, Any]] = {}
    for entity in entities:
        state_topic = site.layout.field(info.unit_id, entity.endpoint, entity.reads)
        component: dict[str, Any] = {
            "platform": entity.component,
            **_component(entity, _entity_ids(entity, info), state_topic),
        }
        if entity.always_available:  # the others take the device's shared availability
            component["availability"] = entity_availability(site, info.unit_id, entity)
        components[object_id(entity.key)] = component
    for component_id, platform in (removed or {}).items():
        components.setdefault(component_id, {"platform": platform})
    payload = {
        "device": unit_device(info, site),
        "origin": ORIGIN,
        "availability": availability(site, info.unit_id),
        "availability_mode": "all",
        "qos": 1,
        "components": components,
    }
    return {device_config_topic(site, info): payload}


def device_config_topic(site: Site, info: UnitInfo) -> str:
    """Where a unit's device-based discovery config goes."""
    return f"{site.prefix}/device/{object_id(info.identifier)}/config"


def bridge_configs(site: Site, mode: DiscoveryMode) -> dict[str, dict[str, Any]]:
    """The bridge device and its entities (no availability: its state *is* availability).

    Its connectivity entity always; the search counters while ``[discovery]`` searches.
    """
    components = {
        entity: _component(
            entity,
            _device_entity_ids(entity, site.bridge_identifier),
            site.bridge_state_topic
            if entity.endpoint == "bridge"
            else site.layout.bridge_search(entity.field),
        )
        for entity in BRIDGE_ENTITIES
        if entity.endpoint == "bridge" or site.searching
    }
    return _device_configs(site, bridge_device(site), components, mode, availability=None)


def migration_request() -> dict[str, Any]:
    """What asks Home Assistant to hand a discovered item over to the other discovery form.

    Sent retained to the old config topic (each per-entity topic, or the device topic), before
    the new form is published: Home Assistant unloads the item but keeps its entity registry
    entry, so the new config with the same ``unique_id`` takes it over (home-assistant/core,
    homeassistant/components/mqtt/discovery.py ``MIGRATE_DISCOVERY_SCHEMA``: this one key, only
    ``true``).
    """
    return {"migrate_discovery": True}


def discovery_form(site: Site, topic: str) -> Literal["entity", "device"]:
    """Which discovery form a config topic of ours belongs to: device-based or per-entity."""
    return "device" if topic.startswith(f"{site.prefix}/device/") else "entity"


def encode(payload: dict[str, Any]) -> str:
    """Serialise a payload compactly and deterministically (so unchanged means equal text)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=False)


def group_device(site: Site, group_id: str, name: str) -> dict[str, Any]:
    """The device block of one power-sharing group."""
    return {
        "identifiers": [f"twc3_group_{group_id}"],
        "name": f"Power-sharing group {name}",
        "manufacturer": "twc3-mqtt-bridge",
        "model": "Wall Connector power-sharing group",
        "via_device": site.bridge_identifier,
    }


def group_configs(
    site: Site, group_id: str, name: str, mode: DiscoveryMode
) -> dict[str, dict[str, Any]]:
    """The device and entities of one power-sharing group (``twc3/group/<id>/…``)."""
    device = group_device(site, group_id, name)
    components = {
        entity: _component(
            entity,
            _device_entity_ids(entity, device["identifiers"][0]),
            site.layout.group(group_id, entity.reads),
        )
        for entity in GROUP_ENTITIES
    }
    # Group totals are the bridge's own arithmetic: there whenever the bridge is.
    bridge_only = [{"topic": site.bridge_state_topic}]
    return _device_configs(site, device, components, mode, availability=bridge_only)


def _device_entity_ids(entity: Entity, identifier: str) -> dict[str, str]:
    """Ids of a group's or the bridge's entity: its device's identifier and its field."""
    return {
        "unique_id": f"{identifier}_{entity.field}",
        "default_entity_id": f"{entity.component}.{identifier}_{entity.field}",
    }


def _device_configs(
    site: Site,
    device: dict[str, Any],
    components: dict[Entity, dict[str, Any]],
    mode: DiscoveryMode,
    availability: list[dict[str, str]] | None,
) -> dict[str, dict[str, Any]]:
    """A device and its entities' payloads, in one device payload or one payload per entity."""
    node = object_id(device["identifiers"][0])
    shared: dict[str, Any] = {"availability": availability} if availability else {}
    shared["qos"] = 1
    if mode == "device":
        return {
            f"{site.prefix}/device/{node}/config": {
                "device": device,
                "origin": ORIGIN,
                **shared,
                "components": {
                    object_id(entity.key): {"platform": entity.component, **component}
                    for entity, component in components.items()
                },
            }
        }
    return {
        f"{site.prefix}/{entity.component}/{node}/{object_id(entity.key)}/config": {
            **component,
            **shared,
            "device": device,
            "origin": ORIGIN,
        }
        for entity, component in components.items()
    }
