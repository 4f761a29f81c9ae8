"""Keeps Home Assistant's retained discovery configs in step with what the bridge knows.

It announces through the outbox (so configs survive broker reconnects like any retained value),
removes configs of connectors that left the config or fields that disappeared, and remembers what
it announced in the state file so nothing stale is left behind after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Final

from bridge.core.models import ENDPOINTS, Version, WifiStatus
from bridge.core.names import field_level
from bridge.core.outbox import Deferred, Outbox
from bridge.presentation.discovery import (
    DiscoveryMode,
    Site,
    UnitInfo,
    bridge_configs,
    device_config,
    device_config_topic,
    encode,
    entity_config,
    entity_config_topic,
    object_id,
    unit_entities,
)
from bridge.presentation.entities import Entity
from bridge.presentation.homie import unit_values
from bridge.runtime.poller import ConnectorPoller
from bridge.runtime.statefile import StateFile

logger = logging.getLogger(__name__)

BRIDGE_OWNER: Final = "bridge"
MAX_REMOVED_STUBS: Final = 256  # per device: removed components kept as stubs in its config


class Announcer:
    """Announces, updates and removes discovery configs; one owner per connector."""

    def __init__(
        self,
        site: Site,
        mode: DiscoveryMode,
        outbox: Outbox,
        state: StateFile | None,
        configured_owners: set[str],
    ) -> None:
        self.site = site
        self.mode = mode
        self._outbox = outbox
        self._state = state
        self._configured = configured_owners
        self._announced: dict[str, str] = state.announced_topics() if state else {}
        # The same, by owner: one unit's announce must not scan every unit's topics.
        self._owned: dict[str, dict[str, None]] = {}  # ordered sets: removals in announce order
        for topic, owner in self._announced.items():
            self._owned.setdefault(owner, {})[topic] = None
        self._components: dict[str, dict[str, str]] = state.announced_components() if state else {}
        self._signatures: dict[str, object] = {}
        # Device mode: components removed during this run stay as stubs in every later payload,
        # so a stub superseded before it reached the broker is not lost.
        self._removed: dict[str, dict[str, str]] = {}

    def start(self) -> None:
        """Remove what belongs to connectors no longer configured; announce the bridge device."""
        stale = [
            topic
            for topic, owner in self._announced.items()
            if self.mode == "off" or (owner != BRIDGE_OWNER and owner not in self._configured)
        ]
        for topic in stale:
            self._outbox.delete(topic)
            owner = self._announced.pop(topic)
            self._owned.get(owner, {}).pop(topic, None)
            self._components.pop(owner, None)
        if stale:
            logger.info("discovery: removing %d config(s) no longer wanted", len(stale))
        if self.mode != "off":
            configs = bridge_configs(self.site, self.mode)
            self._publish(BRIDGE_OWNER, {topic: encode(value) for topic, value in configs.items()})
        if stale or self.mode == "off":
            self._save()

    def update_unit(self, owner: str, info: UnitInfo, fields: dict[str, list[str]]) -> None:
        """Announce a connector's entities; cheap when nothing changed since the last call."""
        if self.mode == "off":
            return
        signature = (info, tuple((endpoint, tuple(names)) for endpoint, names in fields.items()))
        if self._signatures.get(owner) == signature:
            return
        self._signatures[owner] = signature
        entities = unit_entities(fields)
        configs: dict[str, str | Deferred]
        if self.mode == "entity":
            configs = {
                entity_config_topic(self.site, info, entity): Deferred(
                    _render_entity_config, (self.site, info, entity)
                )
                for entity in entities
            }
        else:
            current: dict[str, str] = {object_id(e.key): e.component for e in entities}
            previous = self._components.get(owner, {})
            removed = self._removed.setdefault(owner, {})
            removed.update((k, platform) for k, platform in previous.items() if k not in current)
            for key in current:
                removed.pop(key, None)
            # A unit that keeps retiring invented fields must not grow the payload forever; the
            # oldest stubs went out long ago.
            for key in list(removed)[: max(0, len(removed) - MAX_REMOVED_STUBS)]:
                del removed[key]
            topic = device_config_topic(self.site, info)
            configs = {
                topic: Deferred(
                    _render_device_config,
                    (self.site, info, tuple(entities), tuple(removed.items())),
                )
            }
            self._components[owner] = current
        self._publish(owner, configs)

    def update_group(self, owner: str, build: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Announce a power-sharing group's device once; ``build`` runs only when needed."""
        if self.mode == "off" or self._signatures.get(owner) == "announced":
            return
        self._signatures[owner] = "announced"
        self._publish(owner, {topic: encode(payload) for topic, payload in build().items()})

    def _publish(self, owner: str, configs: Mapping[str, str | Deferred]) -> None:
        for topic, payload in configs.items():
            self._outbox.put(topic, payload)
        owned = self._owned.setdefault(owner, {})
        stale = [topic for topic in owned if topic not in configs]
        for topic in stale:
            self._outbox.delete(topic)
            del self._announced[topic]
            del owned[topic]
        changed = bool(stale) or any(self._announced.get(topic) != owner for topic in configs)
        for topic in configs:
            previous = self._announced.get(topic)
            if previous is not None and previous != owner:
                self._owned.get(previous, {}).pop(topic, None)
            self._announced[topic] = owner
            owned[topic] = None
        if changed:
            logger.info(
                "discovery: announced %d config(s) for %s%s",
                len(configs),
                owner,
                f", removed {len(stale)}" if stale else "",
            )
            self._save()

    def _save(self) -> None:
        if self._state is None:
            return
        # The live mappings, not copies (O(units) each time): a flush writes what they hold then,
        # the bridge's periodic flush, not once per unit.
        self._state.keep_announced(self._announced, self._components)

    def announced_topics(self) -> list[str]:
        """Every config topic currently announced."""
        return list(self._announced)


def _render_entity_config(site: Site, info: UnitInfo, entity: Entity) -> str:
    return encode(entity_config(site, info, entity))


def _render_device_config(
    site: Site, info: UnitInfo, entities: tuple[Entity, ...], removed: tuple[tuple[str, str], ...]
) -> str:
    return encode(next(iter(device_config(site, info, list(entities), dict(removed)).values())))


class Reannouncer:
    """Republishes configs and states when Home Assistant (or openHAB) says it came online.

    Births arriving during the random delay are folded into one re-announce.
    """

    def __init__(
        self,
        outbox: Outbox,
        first_prefix: str,
        delay_s: tuple[float, float] = (1.0, 3.0),
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._outbox = outbox
        self._first_prefix = first_prefix
        self._delay_s = delay_s
        self._rand = rand
        self._requested = asyncio.Event()
        self.reannounced = 0

    def request(self) -> None:
        """Ask for a re-announce soon."""
        self._requested.set()

    async def run(self) -> None:
        """Serve requests until cancelled."""
        while True:
            await self._requested.wait()
            await asyncio.sleep(self._rand(*self._delay_s))
            self._requested.clear()
            self.reannounced += 1
            logger.info("discovery: Home Assistant came online; announcing again")
            self._outbox.republish_all(first_prefix=self._first_prefix)


def unit_info(
    poller: ConnectorPoller,
    name: str | None,
    configuration_url: str,
    via_device: str | None = None,
) -> UnitInfo | None:
    """What discovery needs about a polled unit, once its id and serial number are known."""
    status = poller.status
    if poller.topics is None or status.serial is None:
        return None
    version = status.last_bodies.get("version")
    wifi = status.last_bodies.get("wifi_status")
    version_model = version.model if version and isinstance(version.model, Version) else None
    wifi_model = wifi.model if wifi and isinstance(wifi.model, WifiStatus) else None
    return UnitInfo(
        unit_id=poller.topics.unit_id,
        serial=status.serial,
        name=name,
        part_number=version_model.part_number if version_model else None,
        firmware=version_model.firmware_version if version_model else None,
        mac=wifi_model.wifi_mac if wifi_model else None,
        configuration_url=configuration_url,
        via_device=via_device,
    )


def announced_fields(poller: ConnectorPoller) -> dict[str, list[str]]:
    """The topic level of every admitted key of each endpoint read, in the unit's order.

    Admitted keys (:class:`~bridge.core.fieldbudget.FieldBudget`) stay announced until retired, so a
    key missing from one body does not remove and re-add its entity.
    """
    fields: dict[str, list[str]] = {}
    for endpoint in ENDPOINTS:
        if endpoint not in poller.status.last_bodies:
            continue
        levels = dict.fromkeys(
            level
            for key in poller.field_budget.admitted(endpoint)
            if (level := field_level(key)) is not None
        )
        fields[endpoint] = list(levels)
    if poller.status.derived:
        fields["derived"] = list(poller.status.derived)
    return fields


def homie_values(poller: ConnectorPoller) -> dict[tuple[str, str], object]:
    """What the unit's Homie node shows: its admitted fields and its derived values."""
    budget = poller.field_budget
    bodies = {
        str(name): {key: body.fields.get(key) for key in budget.admitted(name)}
        for name, body in poller.status.last_bodies.items()
    }
    return unit_values(bodies, poller.status.derived)
