"""Values the unit does not report but people want: power, status, sessions, guarded energy.

Everything here is pure: functions of one vitals sample, or small state objects fed one sample at
a time with the time passed in (``unit_values`` holds one unit's set of them). Facts and sources:
docs/device-api.md ('Vitals fields', 'evse_state' and the quirks from 'Phantom energy jumps' to
'Counters that reset').
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

from bridge.core.models import CENTURY_S, Vitals
from bridge.core.vocabulary import PhaseMode, Role, Status, Wiring

# A follower joins its leader's own access point (docs/device-api.md, 'Power sharing'): SSID and
# address show it.
LEADER_AP_SSID_PREFIX: Final = "TeslaWallConnector_"
LEADER_AP_NETWORK: Final = ipaddress.ip_network("192.168.92.0/24")

# What the firmware reports when a sensor read fails (docs/device-api.md, 'Temperature sentinel').
TEMPERATURE_SENTINEL_C: Final = 255.0
SPLIT_PHASE_TOLERANCE_V: Final = 25.0  # evcc's |voltageC - grid_v/2| < 25 V heuristic
LIVE_PHASE_MIN_V: Final = 50.0  # idle noise on an open contactor stays below ~9 V
DEFAULT_RATED_CURRENT_A: Final = 48.0  # the Gen 3's highest rating (NA 60 A breaker)
ENERGY_TOLERANCE_WH: Final = 20.0  # rounding and sampling slack in plausibility checks
PLAUSIBILITY_MARGIN: Final = 1.25

# Names where the published mappings and the telemetry agree (docs/device-api.md, 'Published
# evse_state names'). 7 appears for a few seconds on nearly every plug-in: a transition, not an
# error. 8 and 10 are named in opposite ways by different sources and were never captured, so
# they stay unknown_<n>.
EVSE_STATE_NAMES: Final[dict[int, str]] = {
    0: "booting",
    1: "not_connected",
    2: "connected",
    4: "ready",
    6: "negotiating",
    7: "transition",
    9: "waiting_car",
    11: "charging",
}
# The only alert code with a documented meaning (docs/device-api.md, 'Vitals fields').
ALERT_NAMES: Final[dict[int, str]] = {40: "handle_temperature_derate"}


def evse_state_name(code: int | None) -> str | None:
    """The name of an ``evse_state`` code, ``unknown_<n>`` for codes nobody agrees on."""
    if code is None:
        return None
    return EVSE_STATE_NAMES.get(code, f"unknown_{code}")


def status(vitals: Vitals) -> Status | None:
    """Coarse state from the two unambiguous booleans (what evcc calls A/B/C)."""
    if vitals.contactor_closed:
        return "charging"
    if vitals.vehicle_connected is None:
        return None
    return "connected" if vitals.vehicle_connected else "disconnected"


def detect_wiring(vitals: Vitals) -> Wiring | None:
    """Guess the supply from the voltages, or ``None`` when they say nothing (contactor open).

    North-American split phase shows one phase at about half the grid voltage (both known
    layouts: 2023 with voltageC ≈ grid/2, 2025 with voltageA ≈ voltageC ≈ grid/2); three-phase
    shows all three near grid_v; single phase shows one live phase.
    """
    grid = vitals.grid_v
    phases = [vitals.voltageA_v, vitals.voltageB_v, vitals.voltageC_v]
    if not vitals.contactor_closed or grid is None or grid < LIVE_PHASE_MIN_V:
        return None
    known = [v for v in phases if v is not None]
    live = [v for v in known if v >= LIVE_PHASE_MIN_V]
    if not live:
        return None
    if any(abs(v - grid / 2) < SPLIT_PHASE_TOLERANCE_V for v in live):
        return "split_phase"
    if len(live) == 3:  # noqa: PLR2004 - three phases
        return "three_phase"
    return "single_phase"


def current_a(vitals: Vitals) -> float:
    """Current to the car; 0 while the contactor is open.

    Idle readings are noise (docs/device-api.md, 'Idle noise').
    """
    if not vitals.contactor_closed or vitals.vehicle_current_a is None:
        return 0.0
    return max(0.0, vitals.vehicle_current_a)


def power_w(vitals: Vitals, wiring: Wiring) -> float:
    """Apparent power delivered, in W; 0 unless the contactor is closed.

    Three-phase sums V×I per phase; split and single phase use grid_v × vehicle_current_a (the
    per-phase sum over-reads ~30 % on split phase, docs/device-api.md, 'Computing power').
    """
    if not vitals.contactor_closed:
        return 0.0
    if wiring == "three_phase":
        pairs = (
            (vitals.voltageA_v, vitals.currentA_a),
            (vitals.voltageB_v, vitals.currentB_a),
            (vitals.voltageC_v, vitals.currentC_a),
        )
        total = sum((v or 0.0) * max(0.0, i or 0.0) for v, i in pairs)
    else:
        total = (vitals.grid_v or 0.0) * current_a(vitals)
    return round(total, 1) if math.isfinite(total) else 0.0


def max_power_w(wiring: Wiring | None, grid_v: float | None, rated_current_a: float) -> float:
    """The most the unit can deliver: rated current × voltage × phases (3 unless known)."""
    voltage = grid_v if grid_v and grid_v >= LIVE_PHASE_MIN_V else 250.0
    phases = 1 if wiring in {"split_phase", "single_phase"} else 3
    return rated_current_a * voltage * phases


def plausible_increase_wh(elapsed_s: float, max_power: float) -> float:
    """The largest energy increase that can be real after ``elapsed_s`` seconds."""
    return max(0.0, elapsed_s) / 3600.0 * max_power * PLAUSIBILITY_MARGIN + ENERGY_TOLERANCE_WH


def clean_temperature(value: float | None) -> float | None:
    """A temperature, or ``None`` for the 255 °C "read invalid" sentinel."""
    if value is None or value >= TEMPERATURE_SENTINEL_C:
        return None
    return value


def decode_ssid(raw: str | None) -> str | None:
    """The SSID from its base64 form; plain text is kept (some firmware may send it so)."""
    if raw is None:
        return None
    try:
        decoded = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return raw
    return decoded if decoded.isprintable() else raw


def last_boot(uptime_s: int | None, now: float) -> str | None:
    """When the unit booted, as ISO 8601 UTC to the minute (uptime jitter would churn seconds).

    ``None`` for an uptime that is negative, over a century, or makes no representable date.
    """
    if uptime_s is None or not 0 <= uptime_s <= CENTURY_S:
        return None
    try:
        boot = datetime.fromtimestamp(now - uptime_s, tz=UTC)
    except (OverflowError, OSError, ValueError):  # a ``now`` far outside the calendar
        return None
    return boot.replace(second=0, microsecond=0).isoformat().replace("+00:00", "Z")


def decode_alerts(alerts: list[int | str] | None) -> list[str]:
    """Alert names where documented, the raw code otherwise (``alert_<n>`` or the text)."""
    if not alerts:
        return []
    decoded = []
    for alert in alerts:
        if isinstance(alert, int):
            decoded.append(ALERT_NAMES.get(alert, f"alert_{alert}"))
        else:
            decoded.append(str(alert))
    return decoded


def joined_leader_ap(ssid: str | None, infra_ip: str | None) -> bool:
    """Whether Wi-Fi status shows the unit joined to another Wall Connector's access point."""
    if ssid is not None and ssid.startswith(LEADER_AP_SSID_PREFIX):
        return True
    try:
        return infra_ip is not None and ipaddress.ip_address(infra_ip.strip()) in LEADER_AP_NETWORK
    except ValueError:
        return False


def role(configured: Role, ssid: str | None, infra_ip: str | None) -> Role:
    """Follower when the Wi-Fi status shows the leader's access point, else as configured."""
    return "follower" if joined_leader_ap(ssid, infra_ip) else configured


@dataclass
class PhaseTracker:
    """The wiring in use: configured, or the last detection made while charging."""

    mode: PhaseMode = "auto"
    detected: Wiring | None = None

    def update(self, vitals: Vitals) -> Wiring:
        """Learn from one sample and return the wiring to compute power with."""
        if self.mode != "auto":
            return self.mode
        found = detect_wiring(vitals)
        if found is not None:
            self.detected = found
        return self.detected or "three_phase"


@dataclass
class SessionEnergy:
    """The bridge's own lifetime total, built from increases of ``session_energy_wh``.

    A session reset (plug-in, reboot, ``uptime_s`` going backwards) starts a new base and never
    shows as a drop; a drop without such evidence and an increase larger than the unit can have
    delivered since the last accepted sample are glitches and are ignored. The total never
    decreases. ``last_session_wh``/``last_time`` are the last *accepted* sample; ``prev_*`` the
    last sample seen, which is what reset evidence is judged against.
    """

    total_wh: float = 0.0
    last_session_wh: float | None = None
    last_time: float | None = None
    prev_uptime_s: int | None = None
    prev_session_s: int | None = None
    prev_connected: bool | None = None
    prev_time: float | None = None
    reset_pending: bool = False
    rejected: int = 0

    def update(self, vitals: Vitals, now: float, max_power: float) -> float:
        """Feed one sample; returns the energy added to the total (0 when nothing was)."""
        session = vitals.session_energy_wh
        if session is None or not math.isfinite(session) or session < 0:
            return 0.0
        if self.last_session_wh is None or self.last_time is None:
            self._accept(session, now)
            self._remember(vitals, now)
            return 0.0
        evidence = self._reset_evidence(vitals, now)
        self._remember(vitals, now)
        base = self.last_session_wh
        if evidence and session == base and session > 0:
            # Still the last session's retained value: its reset to 0 comes with a later sample.
            self.reset_pending = True
            return 0.0
        window = now - self.last_time
        if evidence or (self.reset_pending and session < base):
            self.reset_pending = False
            increase = session
            session_s = vitals.session_s
            # The session clock bounds energy since the reset (only a sensible one: the model's
            # bounds keep it to a century, this keeps direct callers from overflowing a float).
            if session_s and 0 < session_s <= CENTURY_S:
                window = min(window, session_s + 5.0)
        else:
            increase = session - base
            if increase < 0:  # a drop with no reset behind it: a glitch, not a new session
                self.rejected += 1
                return 0.0
        if increase > plausible_increase_wh(window, max_power):
            self.rejected += 1
            return 0.0
        self.total_wh += increase
        self._accept(session, now)
        return increase

    def _reset_evidence(self, vitals: Vitals, now: float) -> bool:
        rebooted = (
            vitals.uptime_s is not None
            and self.prev_uptime_s is not None
            and vitals.uptime_s < self.prev_uptime_s
        )
        connected = vitals.vehicle_connected is True
        plugged_in = connected and self.prev_connected is False
        # session_s counts from plug-in; 0 while connected means a finished session, not a new one.
        session_s = vitals.session_s or 0
        replugged = (
            connected
            and session_s > 0
            and (
                (self.prev_session_s is not None and session_s < self.prev_session_s)
                or (self.prev_time is not None and session_s + 5 < now - self.prev_time)
            )
        )
        return rebooted or plugged_in or replugged

    def _accept(self, session: float, now: float) -> None:
        self.last_session_wh = session
        self.last_time = now

    def _remember(self, vitals: Vitals, now: float) -> None:
        self.prev_time = now
        if vitals.uptime_s is not None:
            self.prev_uptime_s = vitals.uptime_s
        if vitals.session_s is not None:
            self.prev_session_s = vitals.session_s
        if vitals.vehicle_connected is not None:
            self.prev_connected = vitals.vehicle_connected

    def to_json(self) -> dict[str, Any]:
        """What survives a bridge restart."""
        return {
            "total_wh": self.total_wh,
            "last_session_wh": self.last_session_wh,
            "last_time": self.last_time,
            "last_uptime_s": self.prev_uptime_s,
            "last_session_s": self.prev_session_s,
            "last_connected": self.prev_connected,
            "prev_time": self.prev_time,
            "reset_pending": self.reset_pending,
        }

    @classmethod
    def from_json(cls, data: object) -> SessionEnergy:
        """Restore from :meth:`to_json`; anything unusable gives a fresh accumulator."""
        if not isinstance(data, dict):
            return cls()
        total = data.get("total_wh")
        restored = cls(total_wh=float(total) if _finite_number(total) and total >= 0 else 0.0)
        session = data.get("last_session_wh")
        at = data.get("last_time")
        if _finite_number(session) and _finite_number(at):
            restored.last_session_wh = float(session)
            restored.last_time = float(at)
            uptime, session_s = data.get("last_uptime_s"), data.get("last_session_s")
            restored.prev_uptime_s = uptime if isinstance(uptime, int) else None
            restored.prev_session_s = session_s if isinstance(session_s, int) else None
            connected = data.get("last_connected")
            restored.prev_connected = connected if isinstance(connected, bool) else None
            prev = data.get("prev_time")
            restored.prev_time = float(prev) if _finite_number(prev) else float(at)
            restored.reset_pending = data.get("reset_pending") is True
        return restored


def continued_energy(
    current: SessionEnergy, restored_wh: float, saved: SessionEnergy | None
) -> SessionEnergy:
    """The accumulator to go on with once a unit's serial number names a saved total.

    ``current`` started this run at ``restored_wh`` (what its connector key restored, 0 if
    nothing) and has counted ``current.total_wh - restored_wh`` since. When the serial number's
    saved total is higher (the id was renamed, or the file predates connector keys), that
    counted energy is added to it: the published total only grows. Otherwise ``current`` as is.
    """
    if saved is None or saved.total_wh <= restored_wh:
        return current
    counted = max(0.0, current.total_wh - restored_wh)
    return dataclasses.replace(current, total_wh=saved.total_wh + counted)


def _finite_number(value: object) -> TypeGuard[float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large to be a float
        return False


LIFETIME_REBASE_AFTER: Final = 3  # readings in a row below the reference: a genuine reset


@dataclass
class LifetimeGuard:
    """The unit's lifetime ``energy_wh``, with its known phantom jumps kept out.

    See docs/device-api.md, 'Phantom energy jumps'.

    An increase larger than the unit can deliver since the last accepted one, or an increase while
    the contactor has stayed open since then, is rejected. If the next reading stays at or above
    it, the jump persisted and is never added (the reference moves past it); if it falls back, it
    was a one-sample spike and is forgotten. A decrease is rejected and the reference stays, so a
    dip and its recovery add nothing; only several readings in a row below it (a reset of the
    counter, docs/device-api.md, 'Counters that reset') move the reference down. The guarded value
    never decreases.
    """

    guarded_wh: float | None = None
    last_raw_wh: float | None = None  # the reference increases are measured from
    last_accept_time: float | None = None
    contactor_closed_since_accept: bool = False
    below_reference: int = 0
    rejected_jump_wh: float | None = None  # a rejected reading, adopted if the next one stays up
    rejected: int = 0

    def saw_vitals(self, vitals: Vitals) -> None:
        """Note a vitals sample: was the contactor closed since the last accepted increase?"""
        if vitals.contactor_closed:
            self.contactor_closed_since_accept = True

    def update(self, raw_wh: float | None, now: float, max_power: float) -> bool:
        """Feed one lifetime reading; ``False`` when it was rejected."""
        if raw_wh is None or not math.isfinite(raw_wh):
            return True
        if self.guarded_wh is None or self.last_raw_wh is None or self.last_accept_time is None:
            self.guarded_wh = raw_wh
            self.last_raw_wh = raw_wh
            self.last_accept_time = now
            self.contactor_closed_since_accept = False
            return True
        if self.rejected_jump_wh is not None:
            if raw_wh >= self.rejected_jump_wh:
                self.last_raw_wh = self.rejected_jump_wh  # the jump stuck: exclude it for good
            self.rejected_jump_wh = None
        increase = raw_wh - self.last_raw_wh
        if increase < 0:
            self.rejected += 1
            self.below_reference += 1
            if self.below_reference >= LIFETIME_REBASE_AFTER:
                self.last_raw_wh = raw_wh
                self.below_reference = 0
            return False
        self.below_reference = 0
        if increase == 0:
            return True
        elapsed = now - self.last_accept_time
        plausible = increase <= plausible_increase_wh(elapsed, max_power) and (
            self.contactor_closed_since_accept or increase <= ENERGY_TOLERANCE_WH
        )
        if not plausible:
            self.rejected += 1
            self.rejected_jump_wh = raw_wh
            return False
        self.last_raw_wh = raw_wh
        self.guarded_wh += increase
        self.last_accept_time = now
        self.contactor_closed_since_accept = False
        return True


@dataclass
class Event:
    """Something that happened at a unit, for the non-retained event topic."""

    type: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventTracker:
    """Turns consecutive samples into events (plug-in, charging, session end, reboot, alerts)."""

    last: Vitals | None = None
    peak_power_w: float = 0.0
    firmware: str | None = None

    def vitals(self, vitals: Vitals, power: float) -> list[Event]:
        """Events between the previous vitals sample and this one."""
        previous, self.last = self.last, vitals
        self.peak_power_w = max(self.peak_power_w, power)
        if previous is None:
            return []
        events: list[Event] = []
        if (
            vitals.uptime_s is not None
            and previous.uptime_s is not None
            and vitals.uptime_s < previous.uptime_s
        ):
            events.append(Event("rebooted", {"uptime_s": vitals.uptime_s}))
        if vitals.vehicle_connected is True and previous.vehicle_connected is False:
            self.peak_power_w = power
            events.append(Event("plugged_in"))
        if vitals.contactor_closed is True and previous.contactor_closed is False:
            events.append(Event("charging_started"))
        if vitals.contactor_closed is False and previous.contactor_closed is True:
            events.append(Event("charging_stopped"))
        if vitals.vehicle_connected is False and previous.vehicle_connected is True:
            events.append(Event("unplugged"))
            events.append(
                Event(
                    "session_ended",
                    {
                        "energy_wh": vitals.session_energy_wh or previous.session_energy_wh,
                        "duration_s": previous.session_s,
                        "peak_power_w": self.peak_power_w,
                    },
                )
            )
            self.peak_power_w = 0.0
        events.extend(_alert_events(previous.current_alerts, vitals.current_alerts))
        return events

    def version(self, firmware: str | None) -> list[Event]:
        """A ``firmware_changed`` event when the firmware differs from the last one seen."""
        previous, self.firmware = self.firmware, firmware or self.firmware
        if previous is not None and firmware is not None and firmware != previous:
            return [Event("firmware_changed", {"from": previous, "to": firmware})]
        return []


def _alert_events(before: list[int | str] | None, after: list[int | str] | None) -> list[Event]:
    old, new = list(before or []), list(after or [])
    events = [
        Event("alert_raised", {"alert": alert, "name": decode_alerts([alert])[0]})
        for alert in new
        if alert not in old
    ]
    events.extend(
        Event("alert_cleared", {"alert": alert, "name": decode_alerts([alert])[0]})
        for alert in old
        if alert not in new
    )
    return events
