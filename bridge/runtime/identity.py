"""Which Wall Connector each entry is: one poller per serial number, and the address book."""

from __future__ import annotations

import logging

from bridge.core.logtext import escaped
from bridge.runtime.poller import ConnectorPoller
from bridge.runtime.statefile import StateFile

logger = logging.getLogger(__name__)


class UnitIdentities:
    """Serial numbers seen by the pollers, so two entries never publish one unit twice."""

    def __init__(self, state_file: StateFile) -> None:
        self._state_file = state_file
        self._owners: dict[str, str] = {}  # serial -> poller label, one per unit

    def claim(self, poller: ConnectorPoller, serial: str, host: str) -> bool:
        """Record that ``poller`` (configured at ``host``) reads ``serial``; False if another does.

        A unit answering at another address than last time is said once in the log, and the
        address book in the state file follows it.
        """
        owner = self._owners.setdefault(serial, poller.label)
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
            self._owners.pop(poller.status.serial, None)
        previous = self._state_file.address_of(serial)
        if previous is not None and previous != host:
            logger.info(
                "Wall Connector %s now answers at %s (was %s); same device and topics",
                escaped(serial),
                host,
                previous,
            )
        self._state_file.keep_address(serial, host)
        return True
