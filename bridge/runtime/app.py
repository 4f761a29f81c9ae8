"""Composition root: builds the pollers, the outbox and the MQTT link, and runs them together."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bridge.adapters.mqtt import MqttLink, MqttUnavailableError, WillKeeper
from bridge.adapters.twc import TwcClient
from bridge.core.config import BridgeConfig, ConnectorConfig, http_base_url
from bridge.core.fieldbudget import FieldBudget
from bridge.core.logtext import escaped
from bridge.core.models import ENDPOINTS
from bridge.core.outbox import Outbox
from bridge.core.twins import TwinWatch, new_run_token
from bridge.core.unit_values import UnitDerivation
from bridge.core.vocabulary import Role
from bridge.presentation.discovery import Site
from bridge.presentation.homie import HomiePublisher
from bridge.presentation.topics import TopicLayout
from bridge.runtime.announce import (
    Announcer,
    Reannouncer,
    announced_fields,
    homie_values,
    unit_info,
)
from bridge.runtime.energy import EnergyKeeper
from bridge.runtime.ghosts import (
    Ghost,
    clear_ghosts,
    discovery_topics_of,
    ghost_ids,
    homie_node_of,
)
from bridge.runtime.group_totals import GroupTotals
from bridge.runtime.housekeeping import HEARTBEAT_FILE_NAME, heartbeat, keep_state, settle_heap
from bridge.runtime.identity import UnitIdentities
from bridge.runtime.poller import ConnectorPoller, IdRegistry
from bridge.runtime.statefile import StateFile

logger = logging.getLogger(__name__)

POLLER_RESTART_DELAY_S: Final = 30.0
# The client of a unit not found yet starts here: ".invalid" never resolves (RFC 2606).
NOT_FOUND_URL: Final = "http://not-found.invalid"


STATE_FILE_NAME: Final = "state.json"
# Units start in this many groups spread over one vitals interval: one group's requests are
# handled in one burst (waking an idle process costs far more than a poll's work), and no burst
# holds more than a tenth of the units (a thousand together would delay the last by ~0.8 s).
START_SLOTS: Final = 10


def connector_owner(connector: ConnectorConfig) -> str:
    """The key that ties announced discovery configs to one config entry across restarts.

    Its id, else its configured host, else ``serial:<serial>`` for one found by serial alone.
    """
    return connector.configured_id() or connector.host or f"serial:{connector.serial}"


def connector_label(connector: ConnectorConfig) -> str:
    """How a connector is named in log lines: its id or name, and its address (or serial)."""
    name = connector.configured_id()
    where = connector.host or f"serial {connector.serial}"
    return f"{name} ({where})" if name else where


def start_address(
    connector: ConnectorConfig, state_file: StateFile, serial_hint: str | None, label: str
) -> str | None:
    """Where a followed unit is first polled: where its serial was last found, else its host.

    ``serial_hint``: the serial its saved energy record was kept with, for a connector that
    names none. The configured host stays as written; the log line says how to update it.
    """
    serial = connector.serial or serial_hint
    saved = state_file.address_of(serial) if serial is not None else None
    if saved is None or saved == connector.host:
        return connector.host
    configured = f"configured host {connector.host}" if connector.host else "no host configured"
    logger.info(
        'unit %s: starting at %s, where it was last found (%s; set host = "%s" to make it '
        "permanent)",
        label,
        saved,
        configured,
        saved,
    )
    return saved


class Bridge:
    """Everything one bridge process runs; state here outlives broker reconnects."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        client_factory: Callable[[ConnectorConfig], TwcClient] | None = None,
        freeze_heap_when_settled: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``freeze_heap_when_settled``: see :meth:`_settle_heap`; ``clock``: the pollers' clock."""
        self.config = config
        self._freeze_heap_when_settled = freeze_heap_when_settled
        self.heap_frozen = False
        self.outbox = Outbox()
        self.layout = TopicLayout(config.mqtt.base_topic, config.bridge.instance)
        self.state_topic = self.layout.bridge_state
        # This run's token at the owner topic: another live process with the same state topic
        # is noticed when its token shows up (bridge/core/twins.py).
        self.twins = TwinWatch(new_run_token())
        self.outbox.put(self.layout.bridge_owner, self.twins.own_token)
        self.registry = IdRegistry()
        for connector in config.connectors:
            if (cid := connector.configured_id()) is not None:
                self.registry.claim(cid, connector_label(connector))
        ha = config.homeassistant
        self.site = Site(
            prefix=ha.discovery_prefix,
            base_topic=config.mqtt.base_topic,
            instance=config.bridge.instance,
        )
        self.state_file = StateFile(config.bridge.data_dir / STATE_FILE_NAME, ha.discovery_prefix)
        owners = {connector_owner(c) for c in config.connectors}
        configured_ids = {cid for c in config.connectors if (cid := c.configured_id())}
        # Ids published before by connectors no longer configured (renamed or removed).
        self.ghosts = ghost_ids(self.state_file.published_units(), configured_ids, owners)
        announced = self.state_file.announced_topics()
        self.ghost_targets = [
            Ghost(
                unit_id,
                discovery_topics_of(announced, owner),
                homie_node_of(unit_id, configured_ids) if config.homie.enabled else None,
                clear_discovery=False,  # the announcer's start removes them
            )
            for unit_id, owner in sorted(self.ghosts.items())
        ]
        kept_owners = set() if config.bridge.clean_removed else set(self.ghosts.values())
        for cid in configured_ids:
            self.state_file.keep_published(cid, cid)
        self.announcer = Announcer(
            self.site,
            ha.discovery,
            self.outbox,
            self.state_file,
            owners | kept_owners | {f"group:{g.group_id}" for g in config.groups},
        )
        self.reannouncer = Reannouncer(self.outbox, first_prefix=f"{ha.discovery_prefix}/")
        self.energy = EnergyKeeper(self.state_file)
        self.identities = UnitIdentities(self.state_file)
        make_client = client_factory or self._default_client
        self.clients: list[TwcClient] = []
        self.pollers_by_id: dict[str, ConnectorPoller] = {}
        self.pollers: list[ConnectorPoller] = []
        self._clock = clock
        for index, connector in enumerate(config.connectors):
            client = make_client(connector)
            self.clients.append(client)
            poller = self._build_poller(index, connector, client)
            self.pollers.append(poller)
            if (cid := connector.configured_id()) is not None:
                self.pollers_by_id[cid] = poller
        self.groups = GroupTotals(
            pollers_by_id=self.pollers_by_id,
            outbox=self.outbox,
            layout=self.layout,
            announcer=self.announcer,
            site=self.site,
            mode=ha.discovery,
        )
        discovery_on = ha.discovery != "off"
        self.homie: HomiePublisher | None = None
        self.homie_will: WillKeeper | None = None
        if config.homie.enabled:
            self.homie = HomiePublisher(
                self.outbox, config.homie.base_topic, config.homie.device_id, config.homie.name
            )
            self.homie_will = WillKeeper(
                config.mqtt,
                topic=self.homie.state_topic,
                payload="lost",
                restore=self.homie.restore_state,
            )
        self.link = MqttLink(
            config.mqtt,
            self.outbox,
            state_topic=self.state_topic,
            # The state topic before the owner topic: its retained value judges the token's.
            subscriptions=(
                self.state_topic,
                self.layout.bridge_owner,
                *((self.site.status_topic,) if discovery_on else ()),
            ),
            on_message=self._on_message,
            republish_first=f"{ha.discovery_prefix}/",
            shutdown_messages=tuple(self.homie.shutdown_messages()) if self.homie else (),
            qos1_prefixes=(f"{config.homie.base_topic}/",) if self.homie else (),
            # Homie's $state follows this connection (see WillKeeper).
            on_connect=self.homie_will.link_connected if self.homie_will else None,
            on_connection_lost=self.homie_will.link_lost if self.homie_will else None,
        )

    def _build_poller(
        self, index: int, connector: ConnectorConfig, client: TwcClient
    ) -> ConnectorPoller:
        """The poller of one connector, its energy total restored and kept from now on."""
        config = self.config
        polling = connector.polling(config.polling)
        label = connector_label(connector)
        group = config.group_of(connector.configured_id())
        configured_role: Role = (
            "standalone"
            if group is None
            else "leader"
            if group.leader == connector.configured_id()
            else "follower"
        )
        energy, keeping = self.energy.restore(connector_owner(connector), connector.host, label)
        following = bool(config.discovery.networks)
        address = connector.host
        if following:
            address = start_address(connector, self.state_file, keeping.serial_hint, label)
            if address is not None and address != connector.host:
                client.retarget(http_base_url(address))
        poller = ConnectorPoller(
            label=label,
            configured_id=connector.configured_id(),
            base_topic=config.mqtt.base_topic,
            polling=polling,
            fetcher=client,
            outbox=self.outbox,
            registry=self.registry,
            on_update=self._update_hook(connector),
            serial_guard=self._serial_guard(connector),
            derivation=UnitDerivation(
                connector.phase_mode,
                connector.rated_current_a,
                configured_role=configured_role,
                energy=energy,
            ),
            start_delay_s=polling.vitals_s * (index % START_SLOTS) / START_SLOTS,
            clock=self._clock,
            repeat_summary_s=config.logging.repeat_summary_s,
            field_budget=FieldBudget(retire_after_s=config.bridge.field_retire_s),
            address=address,
            source_address=connector.source_address,
            serial=connector.serial,
            retarget=_retargeter(client),
            following=following,
        )
        self.energy.track(poller, keeping)
        if connector.serial is not None:
            # Known before the first answer: the saved total is continued at once.
            self.energy.continue_saved(poller, connector.serial)
        return poller

    def _update_hook(self, connector: ConnectorConfig) -> Callable[[ConnectorPoller], None]:
        owner = connector_owner(connector)

        group = self.config.group_of(connector.configured_id())
        # Parsing the address costs ~10 µs a poll: done again only when the unit moved.
        configuration_urls: dict[str | None, str] = {}
        # What discovery was last built from: the hook runs after every poll, and rebuilding
        # the field lists each time cost more than the rest of the poll.
        seen: list[object] = [None]

        def update(poller: ConnectorPoller) -> None:
            self.energy.keep(poller)
            if group is not None:
                self.groups.update(group)
            # Wait for one round of every endpoint so the first announce is already complete.
            if len(poller.attempted) < len(ENDPOINTS):
                return
            via = self.groups.leader_identifier(poller, group)
            address = poller.address
            configuration_url = configuration_urls.get(address)
            if configuration_url is None:
                configuration_urls.clear()
                configuration_url = configuration_urls[address] = (
                    http_base_url(address) + "/" if address else ""
                )
            info = unit_info(poller, connector.name, configuration_url, via)
            status = poller.status
            inputs = (
                info,
                poller.field_budget.generation,
                len(status.last_bodies),
                tuple(status.derived),
            )
            if info is not None and inputs != seen[0]:
                seen[0] = inputs
                self.announcer.update_unit(owner, info, announced_fields(poller))
            if poller.topics is not None:
                self.state_file.keep_published(poller.topics.unit_id, owner)
            if self.homie is not None and poller.topics is not None:
                self.homie.update_unit(poller.topics.unit_id, connector.name, homie_values(poller))

        return update

    def _serial_guard(self, connector: ConnectorConfig) -> Callable[[ConnectorPoller, str], bool]:
        def check(poller: ConnectorPoller, serial: str) -> bool:
            # Where it answers now: the address book follows a unit that moved.
            address = poller.address or connector.host or ""
            if not self.identities.claim(poller, serial, address):
                return False
            self.energy.continue_saved(poller, serial)
            return True

        return check

    def save_energy(self) -> None:
        """Put every unit's energy total into the state file (written by the next flush)."""
        self.energy.save_all()

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.site.status_topic and payload.strip() == b"online":
            self.reannouncer.request()
        elif topic == self.state_topic:
            self.twins.state_seen(payload.decode("utf-8", errors="replace").strip())
        elif topic == self.layout.bridge_owner:
            token = payload.decode("utf-8", errors="replace").strip()
            if self.twins.owner_seen(token):
                logger.error(
                    "another bridge process is running with this one's state topic %s (its run "
                    "token %s, ours %s): whichever stops marks the other's units unavailable; "
                    "give each process its own [bridge] instance",
                    self.state_topic,
                    escaped(token),
                    self.twins.own_token,
                )

    async def clean_removed(self) -> None:
        """Once connected, clear what ids no longer configured left (or say they were kept)."""
        if not self.ghost_targets:
            return
        names = " ".join(target.unit_id for target in self.ghost_targets)
        if not self.config.bridge.clean_removed:
            logger.info(
                "unit id(s) %s are no longer configured; their retained topics are kept "
                "(clean_removed = false): remove them with 'twc3-bridge forget %s'",
                escaped(names),
                escaped(names),
            )
            return
        await self.link.connected.wait()
        try:
            cleared = await clear_ghosts(
                self.config.mqtt,
                self.layout,
                self.ghost_targets,
                homie_root=self.homie.root if self.homie is not None else None,
                rewrite_nodes=False,
                identifier=f"{self.config.mqtt.client_id}-ghosts",
            )
        except MqttUnavailableError as error:
            logger.warning(
                "could not clear unit id(s) no longer configured (%s); trying again at the "
                "next start",
                escaped(str(error)),
            )
            return
        if self.homie is not None:
            self.homie.publish_nodes()  # the retained $nodes may still list a removed node
        for done in cleared:
            self.state_file.forget_published(done.unit_id)

    def settled(self) -> bool:
        """Whether startup is over: every unit was asked every endpoint at least once."""
        return all(len(poller.attempted) == len(ENDPOINTS) for poller in self.pollers)

    async def _settle_heap(self) -> None:
        """Freeze the long-lived heap once startup is over (only for a process of its own)."""
        if self._freeze_heap_when_settled:
            await settle_heap(self.settled, self._heap_frozen)

    def _heap_frozen(self) -> None:
        self.heap_frozen = True

    def _default_client(self, connector: ConnectorConfig) -> TwcClient:
        polling = connector.polling(self.config.polling)
        return TwcClient(
            # A unit configured by serial alone is asked nothing until it is found and moved.
            connector.base_url or NOT_FOUND_URL,
            connect_timeout_s=polling.connect_timeout_s,
            read_timeout_s=polling.read_timeout_s,
            source_address=connector.source_address,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then publish ``offline`` and close everything."""
        logger.info(
            "bridge starting: %d connector(s), broker %s:%d, base topic %r, state topic %s",
            len(self.pollers),
            self.config.mqtt.host,
            self.config.mqtt.port,
            self.config.mqtt.base_topic,
            self.state_topic,
        )
        self.announcer.start()
        if self.homie is not None:
            self.homie.start()
        try:
            async with asyncio.TaskGroup() as group:
                link_task = group.create_task(self.link.run(stop), name="mqtt-link")
                if self.homie_will is not None:
                    group.create_task(self.homie_will.run(stop), name="homie-will")
                reannounce_task = group.create_task(self.reannouncer.run(), name="reannounce")
                migration_task = group.create_task(
                    self.announcer.run_migrations(), name="discovery-migration"
                )
                heartbeat_task = group.create_task(
                    heartbeat(
                        self.config.bridge.data_dir / HEARTBEAT_FILE_NAME,
                        lambda: self.link.last_delivery,
                        self.pollers,
                    ),
                    name="heartbeat",
                )
                housekeeping_task = group.create_task(
                    keep_state(self.state_file, self.outbox, f"{self.layout.base}/"),
                    name="housekeeping",
                )
                settle_task = group.create_task(self._settle_heap(), name="settle-heap")
                ghosts_task = group.create_task(self.clean_removed(), name="clean-removed")
                poller_tasks = [
                    group.create_task(_supervised(p.label, p.run), name=f"poll {p.label}")
                    for p in self.pollers
                ]
                await stop.wait()
                for task in poller_tasks:
                    task.cancel()
                reannounce_task.cancel()
                migration_task.cancel()
                heartbeat_task.cancel()
                housekeeping_task.cancel()
                settle_task.cancel()
                ghosts_task.cancel()
                await link_task
        finally:
            self.save_energy()
            self.state_file.flush()
            for client in self.clients:
                await client.aclose()
        logger.info("bridge stopped")


def _retargeter(client: TwcClient) -> Callable[[str], None]:
    def retarget(host: str) -> None:
        client.retarget(http_base_url(host))

    return retarget


async def _supervised(label: str, run: Callable[[], Awaitable[None]]) -> None:
    # A bug triggered by one unit's data must not stop the other units.
    while True:
        try:
            await run()
        except Exception:
            logger.exception(
                "unit %s: poller crashed; restarting it in %.0f s", label, POLLER_RESTART_DELAY_S
            )
            await asyncio.sleep(POLLER_RESTART_DELAY_S)
        else:
            return  # a poller ends on its own only when its entry duplicates another unit


# SIGHUP too: a closed terminal or a service manager's "hang up" must not kill the process
# without ``offline`` and a saved state (Python's default for it is to die on the spot).
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """Each of :data:`STOP_SIGNALS` sets ``stop`` for a clean shutdown."""
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, _stop_on_signal, signum, stop)


def _stop_on_signal(signum: signal.Signals, stop: asyncio.Event) -> None:
    if not stop.is_set():
        logger.info("%s received: stopping", signum.name)
    stop.set()


async def run_bridge(config: BridgeConfig) -> None:
    """Run the bridge until SIGTERM, SIGINT or SIGHUP."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await Bridge(config, freeze_heap_when_settled=True).run(stop)
