"""Keeps Home Assistant's retained discovery configs in step with what the bridge knows.

It announces through the outbox (so configs survive broker reconnects like any retained value),
removes configs of connectors that left the config or fields that disappeared, and remembers what
it announced in the state file so nothing stale is left behind after a restart.

Switching between per-entity and device-based discovery hands every entity over instead of
removing and re-creating it, in Home Assistant's documented order ("Migration from single
component to device-based discovery", home-assistant.io/integrations/mqtt): a
``{"migrate_discovery": true}`` on each old config topic, then the new configs, then empty
payloads on the old topics. Each step waits until the one before reached the broker and Home
Assistant had :data:`MIGRATION_GRACE_S` to act on it. The old topics stay in the state file
until they are cleared, and their form (the topic's shape) says they are old, so a restart
in the middle starts the hand-over again; sending it twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    discovery_form,
    encode,
    entity_config,
    entity_config_topic,
    migration_request,
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
# Home Assistant unloads an entity asynchronously; a device config arriving while one of its
# components is still being unloaded loses the components after it (discovery.py returns from
# its loop), so each step of a hand-over waits this long after the previous one was delivered.
MIGRATION_GRACE_S: Final = 5.0
MIGRATION_CHECK_S: Final = 1.0
MIGRATION_PAYLOAD: Final = encode(migration_request())


@dataclass
class _Migration:
    """One owner's hand-over from the other discovery form, step by step."""

    old: dict[str, None]  # the other form's config topics, still retained on the broker
    new: Mapping[str, str | Deferred] | None = None  # this form's configs, once known
    marked_at: float | None = None  # when every old topic's migrate request was delivered
    released: bool = False  # the new configs went into the outbox
    announced_at: float | None = None  # when every new config was delivered


class Announcer:
    """Announces, updates and removes discovery configs; one owner per connector."""

    def __init__(
        self,
        site: Site,
        mode: DiscoveryMode,
        outbox: Outbox,
        state: StateFile | None,
        configured_owners: set[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = MIGRATION_GRACE_S,
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
        self._clock = clock
        self._grace_s = grace_s
        self._migrations: dict[str, _Migration] = {}

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
            for topic, owner in self._announced.items():
                if discovery_form(self.site, topic) != self.mode:
                    self._migrations.setdefault(owner, _Migration({})).old[topic] = None
            if self._migrations:
                logger.info(
                    "discovery: handing %d config(s) of %d owner(s) over to %s mode",
                    sum(len(m.old) for m in self._migrations.values()),
                    len(self._migrations),
                    self.mode,
                )
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
        migration = self._migrations.get(owner)
        if migration is None or migration.released:
            for topic, payload in configs.items():
                self._outbox.put(topic, payload)
        else:
            if migration.new is None:
                # The hand-over starts once the new configs are known: until then the old
                # entities keep working.
                for topic in migration.old:
                    self._outbox.put(topic, MIGRATION_PAYLOAD, always=True)
            migration.new = dict(configs)
        old = migration.old if migration is not None else {}
        owned = self._owned.setdefault(owner, {})
        stale = [topic for topic in owned if topic not in configs and topic not in old]
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

    @property
    def migrating(self) -> bool:
        """Whether a hand-over from the other discovery form is still under way."""
        return bool(self._migrations)

    def advance_migrations(self, now: float | None = None) -> None:
        """Take every hand-over whose previous step was delivered and waited for one step on."""
        now = self._clock() if now is None else now
        for owner, migration in list(self._migrations.items()):
            if migration.new is not None:
                self._step(owner, migration, migration.new, now)

    def _step(
        self, owner: str, migration: _Migration, new: Mapping[str, str | Deferred], now: float
    ) -> None:
        delivered = self._outbox.delivered
        self._restart_waits_sent_again(migration, new)
        if migration.marked_at is None:
            if all(delivered(topic) for topic in migration.old):
                migration.marked_at = now
        elif not migration.released:
            if now - migration.marked_at >= self._grace_s:
                for topic, payload in new.items():
                    self._outbox.put(topic, payload)
                migration.released = True
        elif migration.announced_at is None:
            if all(delivered(topic) for topic in new):
                migration.announced_at = now
        elif now - migration.announced_at >= self._grace_s:
            self._finish_migration(owner, migration)

    def _restart_waits_sent_again(
        self, migration: _Migration, new: Mapping[str, str | Deferred]
    ) -> None:
        """A step sent again (a broker reconnect sends every retained topic) is waited for again.

        So Home Assistant gets its grace after the last copy of a step too.
        """
        delivered = self._outbox.delivered
        if not migration.released and not all(delivered(topic) for topic in migration.old):
            migration.marked_at = None
        if migration.released and not all(delivered(topic) for topic in new):
            migration.announced_at = None

    def _finish_migration(self, owner: str, migration: _Migration) -> None:
        owned = self._owned.get(owner, {})
        for topic in migration.old:
            self._outbox.delete(topic)
            self._announced.pop(topic, None)
            owned.pop(topic, None)
        if self.mode == "entity":
            self._components.pop(owner, None)  # they described the old device config
        del self._migrations[owner]
        logger.info(
            "discovery: %s handed over to %s mode; %d old config(s) removed",
            owner,
            self.mode,
            len(migration.old),
        )
        self._save()

    async def run_migrations(self, check_s: float = MIGRATION_CHECK_S) -> None:
        """Advance the hand-overs until none is left (returns at once when there is none)."""
        while self._migrations:
            await asyncio.sleep(check_s)
            self.advance_migrations()


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
