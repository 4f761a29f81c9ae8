"""Units found in the `[discovery]` networks that no connector claims: added, or suggested once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from pydantic import ValidationError

from bridge.adapters.survey import Found
from bridge.core.config import ConnectorConfig, DiscoveryConfig, parse_host
from bridge.core.logtext import escaped
from bridge.core.names import id_problem, slugify
from bridge.core.networks import source_for_address
from bridge.presentation.connector_block import connector_id, render_block, unit_names
from bridge.runtime.follow import same_address
from bridge.runtime.poller import ConnectorPoller, IdRegistry
from bridge.runtime.statefile import StateFile

logger = logging.getLogger(__name__)

# Units added because they were found ([discovery] add_new), and serials suggested in the log:
# a device inventing serials must not grow the bridge without end.
MAX_FOUND_UNITS: Final = 256


def found_label(connector: ConnectorConfig) -> str:
    """How a unit added because it was found is named in log lines: it says it was found."""
    return f"{connector.configured_id()} (found at {connector.host})"


def found_connector(
    serial: str, host: str, source_address: str | None = None
) -> ConnectorConfig | None:
    """The connector entry a unit found at ``host`` is polled as: its serial's slug is its id.

    ``source_address``: the local address its network is probed from, so it is polled the way
    it was found. ``None`` when the serial gives no usable topic id or ``host`` is no host; such
    a unit is only suggested in the log, for its owner to add with an id of their choice.
    """
    unit_id = slugify(serial)
    if id_problem(unit_id) is not None:
        return None
    try:
        return ConnectorConfig(host=host, id=unit_id, serial=serial, source_address=source_address)
    except ValidationError:
        return None


class NewUnits:
    """Decides what becomes of a unit found that no connector claims, and remembers the added.

    With ``add_new`` it is added (the bridge builds and starts its poller); otherwise, or when
    it cannot be, its ready-to-paste ``[[connectors]]`` block is logged once per serial and run.
    """

    def __init__(
        self,
        discovery: DiscoveryConfig,
        connectors: Sequence[ConnectorConfig],
        configured_serials: set[str],
        state_file: StateFile,
        registry: IdRegistry,
    ) -> None:
        """``configured_serials``: the serials the connectors stand for (given or learned)."""
        self._discovery = discovery
        self._connectors = connectors
        self._configured_serials = configured_serials
        self._state_file = state_file
        self._registry = registry
        self._suggested: set[str] = set()  # serials whose block was logged in this run
        self.pollers: dict[str, ConnectorPoller] = {}  # serial -> the poller of an added unit

    def restored(self) -> list[tuple[str, ConnectorConfig]]:
        """The units added in earlier runs, at their last address (their ids claimed).

        A unit the configuration claims now is no longer a found one, and is forgotten.
        """
        if not self._discovery.add_new:
            return []  # kept in the file: they come back if add_new is turned on again
        restored: list[tuple[str, ConnectorConfig]] = []
        for serial, found_at in sorted(self._state_file.found_units().items()):
            if serial in self._configured_serials:
                self._state_file.forget_found_unit(serial)
                continue
            last = self._state_file.address_of(serial)
            connector = (
                found_connector(serial, last, self.source_for(last)) if last else None
            ) or found_connector(serial, found_at, self.source_for(found_at))
            if connector is None or connector.configured_id() is None:
                continue  # pragma: no cover - the file's hosts and serials were checked on load
            unit_id = str(connector.configured_id())
            owner = self._registry.claim(unit_id, found_label(connector))
            if owner is not None:
                logger.error(
                    "Wall Connector %s, added when it was found, is not restored: its id %s is "
                    "used by %s now",
                    escaped(serial),
                    unit_id,
                    owner,
                )
                continue
            restored.append((serial, connector))
        return restored

    def source_for(self, host: str) -> str | None:
        """The local address a unit found at ``host`` is reached from (see ``networks``)."""
        try:
            address, _ = parse_host(host)
        except ValueError:
            return None
        return source_for_address(
            address.strip("[]"),
            self._discovery.networks,
            (connector.source_address for connector in self._connectors),
        )

    def admit(self, found: Found, pollers: Sequence[ConnectorPoller]) -> ConnectorConfig | None:
        """The connector to add ``found`` as (its id claimed), or None: claimed or suggested."""
        serial = found.serial
        learned = {p.status.serial for p in pollers if p.status.serial is not None}
        if serial in self._configured_serials | learned | set(self.pollers):
            return None
        # A unit answering where a connector whose serial is not known yet polls is likely that
        # connector's (a search at start-up may run before the first version answer).
        if any(p.wanted_serial is None and same_address(p.address, found) for p in pollers):
            return None
        connector = (
            found_connector(serial, found.host, self.source_for(found.host))
            if self._discovery.add_new
            else None
        )
        if connector is None:
            self._suggest(found)
            return None
        if len(self.pollers) >= MAX_FOUND_UNITS:
            self._refuse_once(
                found,
                logging.WARNING,
                "%d found units is the most one bridge adds by itself; add it to the "
                "configuration file",
                MAX_FOUND_UNITS,
            )
            return None
        unit_id = str(connector.configured_id())
        owner = self._registry.claim(unit_id, found_label(connector))
        if owner is not None:
            self._refuse_once(found, logging.ERROR, "its id %s is used by %s", unit_id, owner)
            return None
        return connector

    def added(
        self, found: Found, connector: ConnectorConfig, poller: ConnectorPoller, owner: str
    ) -> None:
        """Remember the unit added as ``connector`` across restarts; ``owner``: its key."""
        self.pollers[found.serial] = poller
        unit_id = str(connector.configured_id())
        self._state_file.keep_found_unit(found.serial, found.host)
        self._state_file.keep_published(unit_id, owner)
        logger.info(
            "Wall Connector %s found at %s and added as %s ([discovery] add_new)",
            escaped(found.serial),
            found.host,
            unit_id,
        )

    def _refuse_once(self, found: Found, level: int, why: str, *args: object) -> None:
        if found.serial in self._suggested or len(self._suggested) >= MAX_FOUND_UNITS:
            return
        self._suggested.add(found.serial)
        logger.log(
            level,
            "Wall Connector %s found at %s is not added: %s",
            escaped(found.serial),
            found.host,
            why % args,
        )

    def _suggest(self, found: Found) -> None:
        """Log the unit's ``[[connectors]]`` block, once per serial number and run."""
        if found.serial in self._suggested or len(self._suggested) >= MAX_FOUND_UNITS:
            return
        self._suggested.add(found.serial)
        if self._discovery.add_new:
            reason = "its serial number gives no usable topic id, so it is not added"
        else:
            reason = "to publish it, add this block to the configuration file"
        logger.info(
            "Wall Connector %s found at %s is not configured; %s:",
            escaped(found.serial),
            found.host,
            reason,
        )
        # One record per line: the log's formatter keeps each record on one line, and a block
        # on lines of its own is what can be pasted. The block is TOML-escaped device text.
        name = unit_names([found])[0]
        for line in render_block(found, name=name, topic_id=connector_id(found)).splitlines():
            logger.info("%s", line)
