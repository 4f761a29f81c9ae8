"""Each connector's energy total across restarts: restored before polling, saved now and then."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from bridge.core.derived import SessionEnergy, continued_energy
from bridge.core.logtext import escaped
from bridge.runtime.poller import ConnectorPoller
from bridge.runtime.statefile import EnergyRecord, StateFile

logger = logging.getLogger(__name__)

ENERGY_SAVE_INTERVAL_S: Final = 60.0  # bounded writes: SD cards on a Raspberry Pi wear out


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


class EnergyKeeper:
    """Every connector's energy total: restored by connector key, continued by serial, saved."""

    def __init__(self, state_file: StateFile) -> None:
        self._state_file = state_file
        self._kept: dict[int, tuple[ConnectorPoller, EnergyKeeping]] = {}  # by id(poller)

    def restore(
        self, owner: str, host: str | None, label: str
    ) -> tuple[SessionEnergy, EnergyKeeping]:
        """The accumulator to build a connector's poller with, before its first poll.

        Restored by connector key: the first ``energy_wh`` published is the saved total even
        when the unit never tells its serial number. ``host`` None: a connector configured by
        serial alone, whose saved total :meth:`continue_saved` finds by that serial.
        """
        energy, restored_wh, serial_hint = restored_energy(
            # No host is ever "": without one, only the connector key can match.
            self._state_file.saved_energy_for_connector(owner, host or "")
        )
        if restored_wh:
            logger.info("unit %s: energy total restored: %.0f Wh", label, restored_wh)
        return energy, EnergyKeeping(owner, restored_wh, serial_hint)

    def track(self, poller: ConnectorPoller, keeping: EnergyKeeping) -> None:
        """Keep ``poller``'s total from now on."""
        self._kept[id(poller)] = (poller, keeping)

    def continue_saved(self, poller: ConnectorPoller, serial: str) -> None:
        """Once the serial number is known, take over its saved total if that is higher."""
        _, keeping = self._kept.get(id(poller), (poller, None))
        if keeping is None or keeping.continued_serial == serial:
            return
        keeping.continued_serial = serial
        record = self._state_file.saved_energy_for_serial(serial)
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

    def keep(self, poller: ConnectorPoller) -> None:
        """Save the unit's energy total now and then, when it changed."""
        saved = self._kept[id(poller)][1].saved
        if saved is not None and (
            saved[0] == poller.derivation.energy.total_wh
            or time.monotonic() - saved[1] < ENERGY_SAVE_INTERVAL_S
        ):
            return
        self.save_all()

    def save_all(self) -> None:
        """Put every unit's energy accumulator into the state file (written by the next flush)."""
        now = time.monotonic()
        for poller, keeping in self._kept.values():
            energy = poller.derivation.energy
            serial = poller.status.serial or keeping.serial_hint
            self._state_file.keep_energy(keeping.owner, serial, energy)
            keeping.saved = (energy.total_wh, now)
