"""One unit's derived values over time: which to publish after each body, and the state between.

``derived`` owns the pieces (pure functions of one sample and small state objects); this module
owns one unit's set of them. Pure (times are passed in): the poller gives it every parsed body;
it answers with the derived values to publish (``derived/<name>``) and the events to send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.core.derived import (
    DEFAULT_RATED_CURRENT_A,
    Event,
    EventTracker,
    LifetimeGuard,
    PhaseTracker,
    SessionEnergy,
    clean_temperature,
    current_a,
    decode_alerts,
    decode_ssid,
    evse_state_name,
    last_boot,
    max_power_w,
    power_w,
    role,
    status,
)
from bridge.core.models import Lifetime, ParsedBody, Version, Vitals, WifiStatus
from bridge.core.vocabulary import PhaseMode, Role

TEMPERATURE_FIELDS = ("pcba_temp_c", "handle_temp_c", "mcu_temp_c")


@dataclass
class Derived:
    """What one sample produced: values for ``derived/<name>`` and events."""

    values: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


class UnitDerivation:
    """Derived values and events for one unit, with the state they need between samples."""

    def __init__(
        self,
        phase_mode: PhaseMode = "auto",
        rated_current_a: float = DEFAULT_RATED_CURRENT_A,
        energy: SessionEnergy | None = None,
        configured_role: Role = "standalone",
    ) -> None:
        self.configured_role: Role = configured_role
        self.role: Role = configured_role
        self.phase = PhaseTracker(phase_mode)
        self.rated_current_a = rated_current_a
        self.energy = energy or SessionEnergy()
        self.lifetime = LifetimeGuard()
        self.tracker = EventTracker()
        self._last_grid_v: float | None = None

    def max_power(self) -> float:
        """The most this unit can deliver with the wiring known so far."""
        return max_power_w(self.phase.detected, self._last_grid_v, self.rated_current_a)

    def feed(self, parsed: ParsedBody, now: float) -> Derived:
        """Derive from one parsed body read at wall-clock time ``now``."""
        model = parsed.model
        if isinstance(model, Vitals):
            return self.vitals(model, now)
        if isinstance(model, Lifetime):
            return self.lifetime_counters(model, now)
        if isinstance(model, Version):
            return Derived(events=self.tracker.version(model.firmware_version))
        if isinstance(model, WifiStatus):
            ssid = decode_ssid(model.wifi_ssid)
            self.role = role(self.configured_role, ssid, model.wifi_infra_ip)
            return Derived({"wifi_ssid": ssid, "role": self.role})
        return Derived()  # pragma: no cover - every endpoint has a model

    def vitals(self, vitals: Vitals, now: float) -> Derived:
        """Power, status, session, energy total, temperatures and events from a vitals sample."""
        if vitals.grid_v is not None:
            self._last_grid_v = vitals.grid_v
        wiring = self.phase.update(vitals)
        power = power_w(vitals, wiring)
        self.lifetime.saw_vitals(vitals)
        self.energy.update(vitals, now, self.max_power())
        session_wh = vitals.session_energy_wh
        values: dict[str, Any] = {
            "power_w": power,
            "current_a": current_a(vitals),
            # In auto mode nothing is claimed before a charge has shown the voltages.
            "phase_mode": wiring if self.phase.mode != "auto" or self.phase.detected else None,
            "status": status(vitals),
            "evse_state_name": evse_state_name(vitals.evse_state),
            "charging": vitals.contactor_closed,
            "plugged_in": vitals.vehicle_connected,
            "energy_wh": round(self.energy.total_wh, 3),
            "session_energy_kwh": round(session_wh / 1000, 3) if session_wh is not None else None,
            "session_duration_s": vitals.session_s,
            "alerts": decode_alerts(vitals.current_alerts),
            "last_boot": last_boot(vitals.uptime_s, now),
            "role": self.role,
        }
        for name in TEMPERATURE_FIELDS:
            values[name] = clean_temperature(getattr(vitals, name))
        return Derived(values, self.tracker.vitals(vitals, power))

    def lifetime_counters(self, lifetime: Lifetime, now: float) -> Derived:
        """The guarded lifetime energy and the rejection count."""
        accepted = self.lifetime.update(lifetime.energy_wh, now, self.max_power())
        values: dict[str, Any] = {"rejected_energy_samples": self.lifetime.rejected}
        if self.lifetime.guarded_wh is not None:
            values["lifetime_energy_wh"] = self.lifetime.guarded_wh
        del accepted  # the count says it; the poller logs the first rejection
        return Derived(values)
