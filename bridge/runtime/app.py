"""Composition root: builds the pollers, the outbox and the MQTT link, and runs them together."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from bridge.adapters.mqtt import MqttLink, WillKeeper
from bridge.adapters.twc import TwcClient
from bridge.core.config import BridgeConfig, ConnectorConfig, GroupConfig
from bridge.core.derived import SessionEnergy, continued_energy
from bridge.core.fieldbudget import FieldBudget
from bridge.core.groups import MemberState, group_values
from bridge.core.logtext import escaped
from bridge.core.models import ENDPOINTS, Version, WifiStatus
from bridge.core.names import field_level
from bridge.core.outbox import Outbox
from bridge.core.unit_values import UnitDerivation
from bridge.core.vocabulary import Role
from bridge.presentation.discovery import Site, UnitInfo, group_configs
from bridge.presentation.homie import HomiePublisher, unit_values
from bridge.presentation.topics import plain_payload
from bridge.runtime.announce import Announcer, Reannouncer
from bridge.runtime.poller import ConnectorPoller, IdRegistry
from bridge.runtime.statefile import EnergyRecord, StateFile

logger = logging.getLogger(__name__)

POLLER_RESTART_DELAY_S: Final = 30.0


STATE_FILE_NAME: Final = "state.json"
HEARTBEAT_FILE_NAME: Final = "heartbeat"
HEARTBEAT_INTERVAL_S: Final = 10.0
ENERGY_SAVE_INTERVAL_S: Final = 60.0  # bounded writes: SD cards on a Raspberry Pi wear out
# Units start in this many groups spread over one vitals interval: one group's requests are
# handled in one burst (waking an idle process costs far more than a poll's work), and no burst
# holds more than a tenth of the units (a thousand together would delay the last by ~0.8 s).
START_SLOTS: Final = 10
STATE_FLUSH_INTERVAL_S: Final = 5.0  # discovery and address changes are written this late at most
# Startup is over once every unit was asked every endpoint, or after this long (units offline).
SETTLE_MAX_S: Final = 300.0
SETTLE_CHECK_S: Final = 1.0


def connector_owner(connector: ConnectorConfig) -> str:
    """The key that ties announced discovery configs to one config entry across restarts."""
    return connector.configured_id() or connector.host


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


def connector_label(connector: ConnectorConfig) -> str:
    """How a connector is named in log lines: its id or name, and its address."""
    name = connector.configured_id()
    return f"{name} ({connector.host})" if name else connector.host


@dataclass
class EnergyKeeping:
    """How one connector's energy total is kept across restarts."""

    owner: str  # connector_owner: the key its record is saved under
    restored_wh: float  # where this run's count started (see derived.continued_energy)
    serial_hint: str | None  # the serial the restored record was saved with
    continued_serial: str | None = None  # the serial whose saved total was taken over
    saved: tuple[float, float] | None = None  # total and monotonic time of the last save


def restored_energy(
    record: EnergyRecord | None,
) -> tuple[SessionEnergy, float, str | None]:
    """The accumulator a connector starts with, its total, and the serial it was saved with."""
    if record is None:
        return SessionEnergy(), 0.0, None
    energy = record.energy()
    return energy, energy.total_wh, record.serial


class Bridge:
    """Everything one bridge process runs; state here outlives broker reconnects."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        client_factory: Callable[[ConnectorConfig], TwcClient] | None = None,
        freeze_heap_when_settled: bool = False,
    ) -> None:
        """``freeze_heap_when_settled``: see :meth:`_settle_heap` (for a process of its own)."""
        self.config = config
        self._freeze_heap_when_settled = freeze_heap_when_settled
        self.heap_frozen = False
        self.outbox = Outbox()
        self.state_topic = f"{config.mqtt.base_topic}/bridge/state"
        self.registry = IdRegistry()
        for connector in config.connectors:
            if (cid := connector.configured_id()) is not None:
                self.registry.claim(cid, connector_label(connector))
        ha = config.homeassistant
        self.site = Site(prefix=ha.discovery_prefix, base_topic=config.mqtt.base_topic)
        self.state_file = StateFile(config.bridge.data_dir / STATE_FILE_NAME, ha.discovery_prefix)
        self.announcer = Announcer(
            self.site,
            ha.discovery,
            self.outbox,
            self.state_file,
            {connector_owner(c) for c in config.connectors}
            | {f"group:{g.group_id}" for g in config.groups},
        )
        self.reannouncer = Reannouncer(self.outbox, first_prefix=f"{ha.discovery_prefix}/")
        self._energy: dict[int, tuple[ConnectorPoller, EnergyKeeping]] = {}  # by id(poller)
        make_client = client_factory or self._default_client
        self.clients: list[TwcClient] = []
        self.pollers_by_id: dict[str, ConnectorPoller] = {}
        self._serial_owners: dict[str, str] = {}
        self.pollers: list[ConnectorPoller] = []
        for index, connector in enumerate(config.connectors):
            polling = connector.polling(config.polling)
            client = make_client(connector)
            group = config.group_of(connector.configured_id())
            configured_role: Role = (
                "standalone"
                if group is None
                else "leader"
                if group.leader == connector.configured_id()
                else "follower"
            )
            self.clients.append(client)
            # Restored before the first poll, by connector key: the first energy_wh published is
            # the saved total even when the unit never tells its serial number.
            owner = connector_owner(connector)
            energy, restored_wh, serial_hint = restored_energy(
                self.state_file.saved_energy_for_connector(owner, connector.host)
            )
            if restored_wh:
                logger.info(
                    "unit %s: energy total restored: %.0f Wh",
                    connector_label(connector),
                    restored_wh,
                )
            self.pollers.append(
                ConnectorPoller(
                    label=connector_label(connector),
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
                    repeat_summary_s=config.logging.repeat_summary_s,
                    field_budget=FieldBudget(retire_after_s=config.bridge.field_retire_s),
                )
            )
            keeping = EnergyKeeping(owner, restored_wh, serial_hint)
            self._energy[id(self.pollers[-1])] = (self.pollers[-1], keeping)
            if (cid := connector.configured_id()) is not None:
                self.pollers_by_id[cid] = self.pollers[-1]
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
                on_connect=self.homie.restore_state,
            )
        self.link = MqttLink(
            config.mqtt,
            self.outbox,
            state_topic=self.state_topic,
            subscriptions=(self.site.status_topic,) if discovery_on else (),
            on_message=self._on_message,
            republish_first=f"{ha.discovery_prefix}/",
            shutdown_messages=tuple(self.homie.shutdown_messages()) if self.homie else (),
            qos1_prefixes=(f"{config.homie.base_topic}/",) if self.homie else (),
        )

    def _update_hook(self, connector: ConnectorConfig) -> Callable[[ConnectorPoller], None]:
        owner = connector_owner(connector)

        group = self.config.group_of(connector.configured_id())
        configuration_url = connector.base_url + "/"  # parsing the address costs ~10 µs a poll
        # What discovery was last built from: the hook runs after every poll, and rebuilding
        # the field lists each time cost more than the rest of the poll.
        seen: list[object] = [None]

        def update(poller: ConnectorPoller) -> None:
            self._keep_energy(poller)
            if group is not None:
                self._update_group(group)
            # Wait for one round of every endpoint so the first announce is already complete.
            if len(poller.attempted) < len(ENDPOINTS):
                return
            via = self._leader_identifier(poller, group)
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
            if self.homie is not None and poller.topics is not None:
                self._update_homie(poller, connector)

        return update

    def _update_homie(self, poller: ConnectorPoller, connector: ConnectorConfig) -> None:
        """Announce the unit's Homie node once, then publish its changed values."""
        if self.homie is None or poller.topics is None:
            return
        budget = poller.field_budget
        bodies = {
            str(name): {key: body.fields.get(key) for key in budget.admitted(name)}
            for name, body in poller.status.last_bodies.items()
        }
        values = unit_values(bodies, poller.status.derived)
        self.homie.update_unit(poller.topics.unit_id, connector.name, values)

    def _leader_identifier(self, poller: ConnectorPoller, group: GroupConfig | None) -> str | None:
        """A follower's device hangs off its leader's device, once the leader's serial is known."""
        if group is None or poller.derivation.role != "follower":
            return None
        leader = self.pollers_by_id.get(group.leader)
        if leader is None or leader is poller or leader.status.serial is None:
            return None
        return UnitInfo(unit_id=group.leader, serial=leader.status.serial).identifier

    def _update_group(self, group: GroupConfig) -> None:
        members: dict[str, MemberState | None] = {}
        for member in group.members:
            poller = self.pollers_by_id.get(member)
            if poller is None or poller.status.online is None:
                members[member] = None
                continue
            derived = poller.status.derived
            members[member] = MemberState(
                online=bool(poller.status.online),
                power_w=float(derived.get("power_w", 0.0)),  # type: ignore[arg-type]
                current_a=float(derived.get("current_a", 0.0)),  # type: ignore[arg-type]
                charging=derived.get("charging") is True,
            )
        base = f"{self.config.mqtt.base_topic}/group/{group.group_id}"
        for key, value in group_values(group.leader, members).items():
            payload = plain_payload(value)
            if payload is not None:
                self.outbox.put(f"{base}/{key}", payload)
        self.announcer.update_group(
            f"group:{group.group_id}",
            lambda: group_configs(
                self.site, group.group_id, group.name, self.config.homeassistant.discovery
            ),
        )

    def _serial_guard(self, connector: ConnectorConfig) -> Callable[[ConnectorPoller, str], bool]:
        def check(poller: ConnectorPoller, serial: str) -> bool:
            owner = self._serial_owners.setdefault(serial, poller.label)
            if owner != poller.label:
                logger.error(
                    "units %s and %s are the same Wall Connector (serial %s); publishing it only "
                    "as %s: remove one of the two entries",
                    owner,
                    poller.label,
                    escaped(serial),
                    owner,
                )
                return False
            if poller.status.serial not in (None, serial):
                # A unit that changes serial gives up the old one: the map stays one per unit.
                self._serial_owners.pop(poller.status.serial, None)
            previous = self.state_file.address_of(serial)
            if previous is not None and previous != connector.host:
                logger.info(
                    "Wall Connector %s now answers at %s (was %s); same device and topics",
                    escaped(serial),
                    connector.host,
                    previous,
                )
            self.state_file.keep_address(serial, connector.host)
            self._continue_saved_energy(poller, serial)
            return True

        return check

    def _continue_saved_energy(self, poller: ConnectorPoller, serial: str) -> None:
        """Once the serial number is known, take over its saved total if that is higher."""
        _, keeping = self._energy.get(id(poller), (poller, None))
        if keeping is None or keeping.continued_serial == serial:
            return
        keeping.continued_serial = serial
        record = self.state_file.saved_energy_for_serial(serial)
        if record is None:
            return
        current = poller.derivation.energy
        continued = continued_energy(current, keeping.restored_wh, record.energy())
        keeping.restored_wh = max(keeping.restored_wh, record.total_wh)
        if continued is not current:
            poller.derivation.energy = continued
            logger.info(
                "unit %s: energy total restored: %.0f Wh saved for serial %s, now %.0f Wh",
                poller.label,
                record.total_wh,
                escaped(serial),
                continued.total_wh,
            )

    def _keep_energy(self, poller: ConnectorPoller) -> None:
        """Save the unit's energy total now and then, when it changed."""
        saved = self._energy[id(poller)][1].saved
        if saved is not None and (
            saved[0] == poller.derivation.energy.total_wh
            or time.monotonic() - saved[1] < ENERGY_SAVE_INTERVAL_S
        ):
            return
        self.save_energy()

    def save_energy(self) -> None:
        """Put every unit's energy accumulator into the state file (written by the next flush)."""
        now = time.monotonic()
        for poller, keeping in self._energy.values():
            energy = poller.derivation.energy
            serial = poller.status.serial or keeping.serial_hint
            self.state_file.keep_energy(keeping.owner, serial, energy)
            keeping.saved = (energy.total_wh, now)

    async def _housekeeping(self) -> None:
        """Write the state file when something changed; send again topics not sent for long."""
        while True:
            await asyncio.sleep(STATE_FLUSH_INTERVAL_S)
            await self.state_file.flush_in_thread()
            # Pollers skip unchanged values, so the outbox refreshes them (README: 5 minutes).
            # Not the discovery configs: those are sent again when Home Assistant restarts.
            self.outbox.refresh_stale(prefix=f"{self.config.mqtt.base_topic}/")

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.site.status_topic and payload.strip() == b"online":
            self.reannouncer.request()

    async def _heartbeat(self) -> None:
        """Touch the heartbeat file while units are being polled and published.

        ``twc3-bridge healthcheck`` (the Docker HEALTHCHECK) fails when it grows old: a stuck
        bridge, no broker, or no unit answering all show up there.
        """
        path = self.config.bridge.data_dir / HEARTBEAT_FILE_NAME
        warned = False
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            delivered = self.link.last_delivery
            polled = any(p.status.online for p in self.pollers)
            if (
                delivered is None
                or not polled
                or time.monotonic() - delivered > HEARTBEAT_INTERVAL_S * 3
            ):
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{time.time():.0f}\n", encoding="ascii")
            except OSError as error:
                if not warned:
                    warned = True
                    logger.warning("cannot write heartbeat %s (%s)", path, error.strerror or error)

    def settled(self) -> bool:
        """Whether startup is over: every unit was asked every endpoint at least once."""
        return all(len(poller.attempted) == len(ENDPOINTS) for poller in self.pollers)

    async def _settle_heap(self) -> None:
        """Once startup is over, move every object alive then out of the garbage collector's way.

        The bridge holds ~150 container objects per unit for its whole life (discovery configs
        kept for re-publishing, entity tables, modules, pydantic models); a full collection
        walked them all, ~100 ms every few seconds at 1000 units. ``gc.freeze()`` after one last
        collection leaves only what changes to the collector.
        """
        if not self._freeze_heap_when_settled:
            return
        deadline = time.monotonic() + SETTLE_MAX_S
        # Polled (ASYNC110): a look a second at small sets; an event would need a poll hook.
        while not self.settled() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(SETTLE_CHECK_S)
        gc.collect()  # nothing that is garbage already may be frozen: it would never be freed
        gc.freeze()
        self.heap_frozen = True
        logger.debug(
            "startup settled: %d objects left out of garbage collection", gc.get_freeze_count()
        )

    def _default_client(self, connector: ConnectorConfig) -> TwcClient:
        polling = connector.polling(self.config.polling)
        return TwcClient(
            connector.base_url,
            connect_timeout_s=polling.connect_timeout_s,
            read_timeout_s=polling.read_timeout_s,
            source_address=connector.source_address,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then publish ``offline`` and close everything."""
        logger.info(
            "bridge starting: %d connector(s), broker %s:%d, base topic %r",
            len(self.pollers),
            self.config.mqtt.host,
            self.config.mqtt.port,
            self.config.mqtt.base_topic,
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
                heartbeat_task = group.create_task(self._heartbeat(), name="heartbeat")
                housekeeping_task = group.create_task(self._housekeeping(), name="housekeeping")
                settle_task = group.create_task(self._settle_heap(), name="settle-heap")
                poller_tasks = [
                    group.create_task(_supervised(p.label, p.run), name=f"poll {p.label}")
                    for p in self.pollers
                ]
                await stop.wait()
                for task in poller_tasks:
                    task.cancel()
                reannounce_task.cancel()
                heartbeat_task.cancel()
                housekeeping_task.cancel()
                settle_task.cancel()
                await link_task
        finally:
            self.save_energy()
            self.state_file.flush()
            for client in self.clients:
                await client.aclose()
        logger.info("bridge stopped")


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
