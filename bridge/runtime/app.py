"""Composition root: builds the pollers, the outbox and the MQTT link, and runs them together."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bridge.adapters.mqtt import MqttLink, MqttUnavailableError, WillKeeper
from bridge.adapters.survey import Found
from bridge.adapters.survey import survey as survey_networks
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
from bridge.runtime.follow import Follower, Survey
from bridge.runtime.found import NewUnits, found_label
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
# How long the clean-up at start waits for every unit to be asked once (see clean_removed).
GHOST_WAIT_S: Final = 60.0
GHOST_CHECK_S: Final = 0.5


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
        survey: Survey = survey_networks,
        freeze_heap_when_settled: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Build every part; nothing runs until :meth:`run`.

        ``freeze_heap_when_settled``: see :meth:`_settle_heap`; ``clock``: the pollers' clock;
        ``survey``: how ``[discovery]`` networks are searched (tests pass one that asks nothing).
        """
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
            searching=bool(config.discovery.networks),
        )
        self.state_file = StateFile(config.bridge.data_dir / STATE_FILE_NAME, ha.discovery_prefix)
        # Units found in the networks that no connector claims, restored first from the file.
        self.new_units = NewUnits(
            config.discovery,
            config.connectors,
            self._serials_of(config.connectors),
            self.state_file,
            self.registry,
        )
        self._found_connectors = self.new_units.restored()
        connectors = [*config.connectors, *(c for _, c in self._found_connectors)]
        owners = {connector_owner(c) for c in connectors}
        configured_ids = {cid for c in connectors if (cid := c.configured_id())}
        self.ghosts, self.ghost_targets = self._find_ghosts(configured_ids, owners)
        kept_owners = set() if config.bridge.clean_removed else set(self.ghosts.values())
        for cid in configured_ids:
            self.state_file.keep_published(cid, cid)
        # The announcer keeps this set: a unit found later is added to it.
        self._announced_owners = (
            owners | kept_owners | {f"group:{g.group_id}" for g in config.groups}
        )
        self.announcer = Announcer(
            self.site, ha.discovery, self.outbox, self.state_file, self._announced_owners
        )
        self.reannouncer = Reannouncer(self.outbox, first_prefix=f"{ha.discovery_prefix}/")
        self.energy = EnergyKeeper(self.state_file)
        self.identities = UnitIdentities(self.state_file)
        self._make_client = client_factory or self._default_client
        self._clock = clock
        self.clients: list[TwcClient] = []
        self.pollers_by_id: dict[str, ConnectorPoller] = {}
        self.pollers: list[ConnectorPoller] = []
        self._build_pollers()
        # The running TaskGroup, so a unit found later starts polling in it (see add_found_unit).
        self._tasks: asyncio.TaskGroup | None = None
        self._poller_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.follower: Follower | None = None
        if config.discovery.networks:
            self.follower = Follower(
                config.discovery,
                units=lambda: self.pollers,
                outbox=self.outbox,
                layout=self.layout,
                state_file=self.state_file,
                on_unclaimed=self.add_found_unit,
                clock=clock,
                survey=survey,
                ready=self.settled,
            )
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

    def _find_ghosts(
        self, configured_ids: set[str], owners: set[str]
    ) -> tuple[dict[str, str], list[Ghost]]:
        """Ids published before by connectors no longer configured (renamed or removed)."""
        ghosts = ghost_ids(self.state_file.published_units(), configured_ids, owners)
        announced = self.state_file.announced_topics()
        targets = [
            Ghost(
                unit_id,
                discovery_topics_of(announced, owner),
                homie_node_of(unit_id, configured_ids) if self.config.homie.enabled else None,
                clear_discovery=False,  # the announcer's start removes them
            )
            for unit_id, owner in sorted(ghosts.items())
        ]
        return ghosts, targets

    def _build_pollers(self) -> None:
        """The configured connectors' pollers, then those of the found units restored."""
        config = self.config
        for index, connector in enumerate(config.connectors):
            polling = connector.polling(config.polling)
            self._add_poller(
                connector,
                connector_label(connector),
                start_delay_s=polling.vitals_s * (index % START_SLOTS) / START_SLOTS,
            )
        for index, (serial, connector) in enumerate(
            self._found_connectors, start=len(config.connectors)
        ):
            polling = connector.polling(config.polling)
            self.new_units.pollers[serial] = self._add_poller(
                connector,
                found_label(connector),
                start_delay_s=polling.vitals_s * (index % START_SLOTS) / START_SLOTS,
            )

    def _add_poller(
        self, connector: ConnectorConfig, label: str, *, start_delay_s: float
    ) -> ConnectorPoller:
        """Build ``connector``'s client and poller (energy restored) and list them."""
        config = self.config
        group = config.group_of(connector.configured_id())
        configured_role: Role = (
            "standalone"
            if group is None
            else "leader"
            if group.leader == connector.configured_id()
            else "follower"
        )
        client = self._make_client(connector)
        self.clients.append(client)
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
            polling=connector.polling(config.polling),
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
            start_delay_s=start_delay_s,
            clock=self._clock,
            repeat_summary_s=config.logging.repeat_summary_s,
            field_budget=FieldBudget(retire_after_s=config.bridge.field_retire_s),
            address=address,
            source_address=connector.source_address,
            serial=connector.serial,
            retarget=_retargeter(client),
            following=following,
            fallback=connector.host,
        )
        self.pollers.append(poller)
        self.energy.track(poller, keeping)
        if connector.serial is not None:
            # Known before the first answer: the saved total is continued at once.
            self.energy.continue_saved(poller, connector.serial)
        if (cid := connector.configured_id()) is not None:
            self.pollers_by_id[cid] = poller
        return poller

    # --- units found in the networks ---------------------------------------------------------

    def _serials_of(self, connectors: list[ConnectorConfig]) -> set[str]:
        """The serial numbers these connectors stand for: given, or learned in an earlier run.

        Learned ones are saved with the energy total, so a unit not answering yet is no stranger.
        """
        serials: set[str] = set()
        for connector in connectors:
            if connector.serial:
                serials.add(connector.serial)
            record = self.state_file.saved_energy_for_connector(
                connector_owner(connector), connector.host or ""
            )
            if record is not None and record.serial is not None:
                serials.add(record.serial)
        return serials

    def add_found_unit(self, found: Found) -> None:
        """Publish a unit found in the networks that no connector claims, if ``add_new`` says so.

        Added: polled, published and announced like a configured connector (id: its serial's
        slug), started at once when the bridge runs, and remembered in the state file so the
        next start polls it too. Otherwise its ``[[connectors]]`` block is logged once
        (:class:`bridge.runtime.found.NewUnits` decides).
        """
        connector = self.new_units.admit(found, self.pollers)
        if connector is None:
            return
        poller = self._add_poller(connector, found_label(connector), start_delay_s=0.0)
        owner = connector_owner(connector)
        self._announced_owners.add(owner)
        self.new_units.added(found, connector, poller, owner)
        if self._tasks is not None and not self._stopping:
            self._poller_tasks.append(self._start(poller))

    def _start(self, poller: ConnectorPoller) -> asyncio.Task[None]:
        if self._tasks is None:  # pragma: no cover - called only while running
            raise RuntimeError("the bridge is not running")
        return self._tasks.create_task(
            _supervised(f"unit {poller.label}: poller", poller.run), name=f"poll {poller.label}"
        )

    def _update_hook(self, connector: ConnectorConfig) -> Callable[[ConnectorPoller], None]:
        owner = connector_owner(connector)

        group = self.config.group_of(connector.configured_id())
        # Parsing the address costs ~10 µs a poll: done again only when the unit moved.
        configuration_urls: dict[str | None, str] = {}
        # What discovery was last built from: the hook runs after every poll, and rebuilding
        # the field lists each time cost more than the rest of the poll.
        seen: list[object] = [None]
        marked: list[str | None] = [None]

        def update(poller: ConnectorPoller) -> None:
            self.energy.keep(poller)
            topics = poller.topics
            if topics is not None and marked[0] != topics.unit_id:
                # Once per id: the state file remembers it was published (for the clean-up of
                # ids no longer configured), and a topic says which process publishes it, so
                # another process's clean-up leaves it alone.
                marked[0] = topics.unit_id
                self.state_file.keep_published(topics.unit_id, owner)
                self.outbox.put(self.layout.publisher(topics.unit_id), self.state_topic)
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
            if self.homie is not None and topics is not None:
                self.homie.update_unit(topics.unit_id, connector.name, homie_values(poller))

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
        targets = await self._ghosts_still_unclaimed()
        try:
            cleared = await clear_ghosts(
                self.config.mqtt,
                self.layout,
                targets,
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

    async def _ghosts_still_unclaimed(self) -> list[Ghost]:
        """The ghosts no unit of this run took back, once every unit had its chance to answer.

        A connector without ``id`` or ``name`` publishes under its serial; if its ``host`` was
        written differently, its id looks removed until the unit tells its serial again.
        """
        for _ in range(round(GHOST_WAIT_S / GHOST_CHECK_S)):
            if self.settled():
                break
            await asyncio.sleep(GHOST_CHECK_S)
        targets = []
        for target in self.ghost_targets:
            owner = self.registry.owner_of(target.unit_id)
            if owner is None:
                targets.append(target)
            else:
                logger.info(
                    "unit id %s is published again, by %s: not cleared", target.unit_id, owner
                )
        return targets

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
                self._tasks = group
                link_task = group.create_task(self.link.run(stop), name="mqtt-link")
                if self.homie_will is not None:
                    group.create_task(self.homie_will.run(stop), name="homie-will")
                reannounce_task = group.create_task(self.reannouncer.run(), name="reannounce")
                migration_task = group.create_task(
                    _supervised("the discovery migration", self.announcer.run_migrations),
                    name="discovery-migration",
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
                ghosts_task = group.create_task(
                    _supervised("the clean-up of removed units", self.clean_removed),
                    name="clean-removed",
                )
                self._poller_tasks = [self._start(p) for p in self.pollers]
                follow_task = (
                    group.create_task(
                        _supervised("discovery: the search for units", self.follower.run),
                        name="follow",
                    )
                    if self.follower is not None
                    else None
                )
                await stop.wait()
                self._stopping = True  # no unit found from now on starts polling
                for task in self._poller_tasks:
                    task.cancel()
                reannounce_task.cancel()
                migration_task.cancel()
                heartbeat_task.cancel()
                housekeeping_task.cancel()
                settle_task.cancel()
                ghosts_task.cancel()
                if follow_task is not None:
                    follow_task.cancel()
                await link_task
        finally:
            self._tasks = None
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
    """Run ``run``, and again after a crash; ``label`` names it in the log line.

    A bug triggered by one unit's data (or one search's answers) must not stop the rest.
    """
    while True:
        try:
            await run()
        except Exception:
            logger.exception("%s crashed; restarting it in %.0f s", label, POLLER_RESTART_DELAY_S)
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
