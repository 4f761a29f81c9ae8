"""Simulated Tesla Wall Connector Gen 3 units: a state machine and a tiny HTTP server."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import http
import itertools
import json
import logging
import math
import random
import re
import signal
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, Self, TypeAlias

from bridge.sim.options import (
    MAX_PORT,
    QUIRK_KINDS,
    START_STATES,
    WIRINGS,
    QuirkValue,
    StartState,
    Wiring,
    WiringChoice,
    validate_quirk,
)

if TYPE_CHECKING:
    from types import TracebackType

logger = logging.getLogger(__name__)

PhaseName: TypeAlias = Literal["idle", "plugging", "charging", "finished", "unplugging"]
JsonValue: TypeAlias = bool | int | float | str | list[int] | list[str]
JsonBody: TypeAlias = dict[str, JsonValue]

# fw 25.x layout: 27 vitals keys (evse_not_ready_reasons, relay_coil_v), version with 5 keys.
DEFAULT_FIRMWARE: Final = "25.34.1+g51a7ed00c0ffee"
PART_NUMBERS: Final[Mapping[Wiring, str]] = {
    "eu_three_phase": "1529455-02-D",
    "na_split_phase": "1734412-02-D",
}
WEB_SERVICE: Final = "h3-hermes-prd.sn.tesla.services"
DEFAULT_RATED_CURRENT_A: Final[Mapping[Wiring, float]] = {
    "eu_three_phase": 16.0,
    "na_split_phase": 40.0,
}

EVSE_NOT_CONNECTED: Final = 1
EVSE_TRANSITION: Final = 7
EVSE_WAITING_FOR_CAR: Final = 9
EVSE_CHARGING: Final = 11
# Plug-in sequences seen in the 2025 traces, between state 1 and state 11.
OBSERVED_PLUG_TRANSIENTS: Final[tuple[tuple[int, ...], ...]] = ((7,), (7, 9), (2, 7), (3, 9))
_TRANSIENT_STATES: Final = frozenset({2, 3, 4, 7, 8, 9})

VITALS_PATH: Final = "/api/1/vitals"
LIFETIME_PATH: Final = "/api/1/lifetime"
VERSION_PATH: Final = "/api/1/version"
WIFI_STATUS_PATH: Final = "/api/1/wifi_status"
_API_PREFIX: Final = "/api/1/"

# Timings seen in the traces (docs/device-api.md, 'evse_state' and 'Not-ready reasons').
UNPLUG_LATCH_S: Final = 2.0
RECENT_UNPLUG_S: Final = 3.0
BOOT_NOT_READY_S: Final = 35.0
CONTACTOR_LAG_S: Final = 2.0
_HEAT_TIME_CONSTANT_S: Final = 600.0
_LOADED_OPEN_THRESHOLD_A: Final = 1.0
_CONFIG_STATUS: Final = 5

_SESSION_DECIMALS: Final = 3
_DEFAULT_DECIMALS: Final = 1
_VITALS_DECIMALS: Final[Mapping[str, int]] = {"grid_hz": 3, "session_energy_wh": _SESSION_DECIMALS}
_NO_SPECIAL_DECIMALS: Final[Mapping[str, int]] = {}

_EU_IDLE_VOLTAGES: Final = ((0.2, 0.0, 0.2), (2.1, 2.1, 2.1), (0.0, 0.0, 7.0), (1.2, 3.4, 0.0))
_EU_IDLE_CURRENTS: Final = ((0.2, 0.1, 0.0), (0.4, 0.0, 0.4), (0.0, 0.0, 0.3))
_NA_IDLE_VOLTAGES: Final = ((0.2, 0.0, 0.2), (0.1, 5.4, 0.1))
_NA_IDLE_CURRENT_B: Final = (0.0, 0.3)
_NA_PILOT_READINGS: Final = (4.4, 4.4, 4.4, 4.6, 0.0, -0.0, 0.1)
_HANDSHAKE_PILOTS: Final = ((0.1, 0.1), (-0.0, 4.6), (8.7, -11.9), (4.4, 4.4), (0.5, 4.8))
_UNPLUG_PILOTS: Final = ((4.6, -0.0), (4.4, 4.4))
_NA_NEUTRAL_FULL_PROBABILITY: Final = 0.7


def _positive_or_zero(value: float) -> float:
    return max(0.0, value)


def _seeded_rng(seed: int | None) -> random.Random:
    return random.Random(seed)  # noqa: S311 - simulated noise and timelines, nothing secret


@dataclass(frozen=True, slots=True)
class Scenario:
    """Durations (simulated seconds) of one automatic idle → charge → unplug cycle.

    Attributes:
        idle_s: time unplugged before the next plug-in.
        plug_transient: evse_state values shown between plug-in and charging; ``None`` picks one
            of the sequences seen in real traces at every plug-in.
        transient_step_s: (min, max) duration of each transient state.
        charge_s: time with the contactor closed.
        finished_s: time plugged in, not charging, before unplugging.
        ramp_delay_s: time after the contactor closes before the car draws current.
        ramp_s: time for the current to ramp from 0 to the rated current.
        unplug_latch_probability: chance that an unplug shows the state-7 latch-button phase.
        speed: simulated seconds per real second.
        start_state: ``"charging"`` starts the unit mid-session at full current.
        auto_cycle: ``False`` keeps idle, charging and finished until a control method moves on.
        first_idle_s: length of the first idle phase (``None``: ``idle_s``); lets several units
            start out of step.
    """

    idle_s: float = 30.0
    plug_transient: tuple[int, ...] | None = None
    transient_step_s: tuple[float, float] = (2.0, 6.0)
    charge_s: float = 120.0
    finished_s: float = 20.0
    ramp_delay_s: float = 4.0
    ramp_s: float = 20.0
    unplug_latch_probability: float = 0.3
    speed: float = 1.0
    start_state: StartState = "idle"
    auto_cycle: bool = True
    first_idle_s: float | None = None

    def __post_init__(self) -> None:
        positive = {
            "idle_s": self.idle_s,
            "charge_s": self.charge_s,
            "finished_s": self.finished_s,
            "ramp_s": self.ramp_s,
            "speed": self.speed,
            "transient_step_s[0]": self.transient_step_s[0],
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Scenario.{name} must be a positive number, got {value!r}")
        if self.first_idle_s is not None and not self.first_idle_s > 0:
            raise ValueError(f"Scenario.first_idle_s must be positive, got {self.first_idle_s!r}")
        if not 0 <= self.ramp_delay_s < math.inf:
            raise ValueError(f"Scenario.ramp_delay_s must be >= 0, got {self.ramp_delay_s!r}")
        low, high = self.transient_step_s
        if high < low:
            raise ValueError(f"Scenario.transient_step_s must be (min, max), got {(low, high)!r}")
        if not 0.0 <= self.unplug_latch_probability <= 1.0:
            raise ValueError("Scenario.unplug_latch_probability must be within 0..1")
        if self.plug_transient is not None and not set(self.plug_transient) <= _TRANSIENT_STATES:
            raise ValueError(
                f"Scenario.plug_transient may only hold {sorted(_TRANSIENT_STATES)}, "
                f"got {self.plug_transient!r}"
            )
        if self.start_state not in START_STATES:
            raise ValueError(f"Scenario.start_state must be one of {START_STATES}")


@dataclass(slots=True)
class Quirks:
    """Misbehaviour of a unit, as documented in docs/device-api.md.

    Sections 'Invalid JSON', 'Slow and missing answers' and 'Temperature sentinel'.

    Probabilities (0..1) are drawn per request from the unit's seeded RNG.

    Attributes:
        nan: a bare ``nan`` token in one float field (vitals) or ``avg_startup_temp`` (lifetime).
        truncated: the final ``}`` is missing.
        http_500: the request is answered with HTTP 500.
        sensor_255: ``handle_temp_c`` reads the invalid-sensor sentinel 255.0.
        slow_first_byte_s: the server waits this long before the first byte of every response.
        refuse: while true the listening socket is closed (ECONNREFUSED).
        hang: the server reads the request and never answers.
        drip_bytes_per_s: when > 0, responses are sent one byte at a time at this rate.
        huge_body_bytes: when > 0, bodies are padded with leading whitespace to this many bytes.
        endless_chunked: the response is a chunked body that never ends.
    """

    nan: float = 0.0
    truncated: float = 0.0
    http_500: float = 0.0
    sensor_255: float = 0.0
    slow_first_byte_s: float = 0.0
    refuse: bool = False
    hang: float = 0.0
    drip_bytes_per_s: float = 0.0
    huge_body_bytes: int = 0
    endless_chunked: float = 0.0
    # Not copied by dataclasses.replace: a copy starts with no listeners of its own.
    _refuse_listeners: list[Callable[[], None]] = dataclasses.field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in QUIRK_KINDS:
            validate_quirk(name, getattr(self, name))

    def __setattr__(self, name: str, value: object) -> None:
        # Servers learn of a changed refuse flag when it is set, so none has to poll it. A hook
        # on the attribute rather than a property keeps refuse a plain dataclass field (init,
        # replace, repr, eq). object.__setattr__: super() breaks in a slots dataclass on 3.11.
        if name != "refuse":
            object.__setattr__(self, name, value)
            return
        before = getattr(self, name, value)  # unset while __init__ runs
        object.__setattr__(self, name, value)
        if value != before:
            for listener in tuple(getattr(self, "_refuse_listeners", ())):
                listener()

    def set(self, name: str, value: QuirkValue) -> None:
        """Set one quirk by name after checking its value."""
        if name not in QUIRK_KINDS:
            raise ValueError(f"unknown quirk {name!r} (known: {', '.join(QUIRK_KINDS)})")
        setattr(self, name, validate_quirk(name, value))

    def add_refuse_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (no arguments, in the setting thread) whenever ``refuse`` changes."""
        self._refuse_listeners.append(listener)

    def remove_refuse_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``; no-op when it is not registered."""
        with contextlib.suppress(ValueError):
            self._refuse_listeners.remove(listener)


class _Electrical(NamedTuple):
    grid_v: float
    grid_hz: float
    vehicle_current_a: float
    current_a: float
    current_b: float
    current_c: float
    current_n: float
    voltage_a: float
    voltage_b: float
    voltage_c: float


@dataclass(slots=True)
class _LifetimeCounters:
    contactor_cycles: int
    contactor_cycles_loaded: int
    alert_count: int
    charge_starts: int
    connector_cycles: int
    energy_wh: float
    uptime_base_s: int
    charging_time_s: float


class SimulatedUnit:
    """One simulated wall connector: a clock-driven state machine rendering the local API.

    Time only moves when the unit is read or controlled; each read first catches the state
    machine up with the clock, so a fake clock makes every test deterministic. Three RNGs are
    derived from ``seed``: one plans the timeline (so it does not depend on how often the unit is
    polled), one adds measurement noise, one draws quirks.
    """

    def __init__(
        self,
        serial: str,
        *,
        wiring: Wiring = "eu_three_phase",
        rated_current_a: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        scenario: Scenario | None = None,
        firmware: str = DEFAULT_FIRMWARE,
        quirks: Quirks | None = None,
    ) -> None:
        if wiring not in WIRINGS:
            raise ValueError(f"wiring must be one of {WIRINGS}, got {wiring!r}")
        rated = DEFAULT_RATED_CURRENT_A[wiring] if rated_current_a is None else rated_current_a
        if not (math.isfinite(rated) and rated > 0):
            raise ValueError(f"rated_current_a must be positive, got {rated!r}")
        self.serial: Final = serial
        self.wiring: Final[Wiring] = wiring
        self.rated_current_a: Final = float(rated)
        self.firmware: Final = firmware
        self._quirks = quirks if quirks is not None else Quirks()
        self._refuse_listeners: list[Callable[[], None]] = []
        self._scenario = scenario if scenario is not None else Scenario()
        self._clock = clock
        self._clock_origin = clock()

        master = _seeded_rng(seed)
        self._plan_rng = _seeded_rng(master.getrandbits(64))
        self._noise_rng = _seeded_rng(master.getrandbits(64))
        self._quirk_rng = _seeded_rng(master.getrandbits(64))
        self._init_hardware(master)
        self._init_history(master)
        self._init_timeline()

    # ---- construction -------------------------------------------------------------------------

    def _init_hardware(self, rng: random.Random) -> None:
        crc = zlib.crc32(self.serial.encode())
        self.mac_address = "02:00:" + ":".join(f"{(crc >> s) & 0xFF:02X}" for s in (24, 16, 8, 0))
        self.ip_address = f"192.0.2.{crc % 250 + 2}"
        self.wifi_ssid = "SimulatedHomeWiFi"
        self._rssi = rng.randint(-66, -45)
        self._snr = rng.randint(25, 38)
        if self.wiring == "eu_three_phase":
            grid = rng.uniform(229.0, 231.0)
            self._nominal_v = (
                grid,
                grid + rng.uniform(-1.0, 1.0),
                grid + rng.uniform(-1.0, 1.0),
                grid + rng.uniform(-1.0, 1.0),
            )
            self._sag_v = 1.0
            self._nominal_hz = 50.0 + rng.uniform(-0.03, 0.02)
            self._idle_voltages = rng.choice(_EU_IDLE_VOLTAGES)
            self._idle_currents = rng.choice(_EU_IDLE_CURRENTS)
            self._idle_prox = 0.0
        else:
            grid = rng.uniform(242.0, 248.0)
            line_b = grid - rng.uniform(1.0, 2.0)
            half = line_b / 2 - rng.uniform(0.0, 1.0)
            self._nominal_v = (grid, half, line_b, half)
            self._sag_v = 1.2
            self._nominal_hz = 60.0 + rng.uniform(-0.13, 0.02)
            self._idle_voltages = rng.choice(_NA_IDLE_VOLTAGES)
            self._idle_currents = (0.0, rng.choice(_NA_IDLE_CURRENT_B), 0.0)
            self._idle_prox = rng.choice((0.0, 0.5))
        self._pcba_base_c = rng.uniform(17.0, 24.0)
        self._handle_base_c = self._pcba_base_c - rng.uniform(1.5, 3.5)
        self._mcu_base_c = self._pcba_base_c + rng.uniform(4.0, 8.0)

    def _init_history(self, rng: random.Random) -> None:
        charge_starts = rng.randint(40, 900)
        energy_wh = charge_starts * rng.uniform(4000.0, 9000.0)
        uptime_s = rng.randint(86_400, 3_000_000)
        # Sim time 0 is "now"; the unit booted uptime_s before it.
        self._booted_at = -float(uptime_s)
        self._lifetime = _LifetimeCounters(
            contactor_cycles=charge_starts,
            contactor_cycles_loaded=rng.randint(0, charge_starts // 15),
            alert_count=rng.randint(0, 2500),
            charge_starts=charge_starts,
            connector_cycles=rng.randint(charge_starts // 3, charge_starts // 2 + 1),
            energy_wh=energy_wh,
            uptime_base_s=uptime_s + rng.randint(1_000_000, 40_000_000),
            charging_time_s=energy_wh / (0.6 * self._power_at(self.rated_current_a)) * 3600,
        )
        self._session_energy_wh = rng.uniform(2000.0, 30000.0)

    def _init_timeline(self) -> None:
        self._sim_time = 0.0
        self._phase: PhaseName = "idle"
        self._phase_started = 0.0
        self._phase_duration: float | None = None
        self._transient: tuple[int, ...] = ()
        self._transient_index = 0
        self._session_started: float | None = None
        self._closed_at = 0.0
        self._opened_at: float | None = None
        self._lag_current_a = 0.0
        self._unplugged_at: float | None = None
        self._heat = 0.0
        scenario = self._scenario
        if scenario.start_state == "charging":
            already_charging_s = scenario.ramp_delay_s + scenario.ramp_s + 60.0
            self._sim_time = -already_charging_s
            self._session_started = -already_charging_s - 5.0
            self._session_energy_wh = 0.0
            self._close_contactor(-already_charging_s)
            if self._phase_duration is not None:
                self._phase_duration += already_charging_s
            self._integrate_to(0.0)
        else:
            first_idle = scenario.first_idle_s or scenario.idle_s
            self._set_phase("idle", 0.0, first_idle if scenario.auto_cycle else None)

    # ---- public state -------------------------------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        """The durations this unit cycles through."""
        return self._scenario

    @property
    def state_name(self) -> PhaseName:
        """``idle``, ``plugging``, ``charging``, ``finished`` or ``unplugging``."""
        self._advance()
        return self._phase

    @property
    def evse_state(self) -> int:
        """The ``evse_state`` the unit reports right now."""
        self._advance()
        return self._evse_state()

    @property
    def session_energy_wh(self) -> float:
        """Energy delivered since the last plug-in (kept after unplug)."""
        self._advance()
        return self._session_energy_wh

    @property
    def quirks(self) -> Quirks:
        """The unit's misbehaviour; change it in place or replace it at any time."""
        return self._quirks

    @quirks.setter
    def quirks(self, quirks: Quirks) -> None:
        previous, self._quirks = self._quirks, quirks
        if quirks is previous:
            return
        if self._refuse_listeners:
            previous.remove_refuse_listener(self._refuse_quirk_changed)
            quirks.add_refuse_listener(self._refuse_quirk_changed)
        if quirks.refuse != previous.refuse:
            self._refuse_quirk_changed()

    def add_refuse_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever ``quirks.refuse`` changes, in place or by a new Quirks."""
        if not self._refuse_listeners:
            # Only while someone listens: a Quirks shared by many units must not keep them alive.
            self._quirks.add_refuse_listener(self._refuse_quirk_changed)
        self._refuse_listeners.append(listener)

    def remove_refuse_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``; no-op when it is not registered."""
        with contextlib.suppress(ValueError):
            self._refuse_listeners.remove(listener)
            if not self._refuse_listeners:
                self._quirks.remove_refuse_listener(self._refuse_quirk_changed)

    def _refuse_quirk_changed(self) -> None:
        for listener in tuple(self._refuse_listeners):
            listener()

    def draw_quirk(self, probability: float) -> bool:
        """Whether a quirk with this per-request probability fires now (seeded)."""
        if probability <= 0:
            return False
        return probability >= 1 or self._quirk_rng.random() < probability

    # ---- controls -----------------------------------------------------------------------------

    def plug_in(self) -> None:
        """Plug a car in now (no-op when one is plugged in); charging follows the transient."""
        now = self._advance()
        if self._phase == "idle":
            self._begin_plug(now)

    def unplug(self) -> None:
        """Unplug the car now, opening the contactor if needed."""
        now = self._advance()
        if self._phase == "charging":
            self._open_contactor(now, forced=True)
        if self._phase != "idle":
            self._finish_unplug(now)

    def start_charging(self) -> None:
        """Close the contactor now, plugging a car in first if none is."""
        now = self._advance()
        if self._phase == "idle":
            self._begin_plug(now)
        if self._phase != "charging":
            self._close_contactor(now)

    def stop_charging(self) -> None:
        """Open the contactor now; the car stays plugged in."""
        now = self._advance()
        if self._phase == "charging":
            self._open_contactor(now, forced=True)

    def reboot(self) -> None:
        """Power-cycle: uptime restarts at 0, the session is cleared, the unit comes up idle."""
        now = self._advance()
        if self._phase == "charging":
            self._open_contactor(now, forced=True)
        self._opened_at = None
        self._session_started = None
        self._unplugged_at = None
        self._session_energy_wh = 0.0
        self._booted_at = now
        self._set_phase("idle", now, self._scenario.idle_s if self._scenario.auto_cycle else None)

    # ---- timeline -----------------------------------------------------------------------------

    def _now(self) -> float:
        return (self._clock() - self._clock_origin) * self._scenario.speed

    def _advance(self) -> float:
        now = max(self._now(), self._sim_time)
        while (end := self._phase_end()) <= now:
            self._integrate_to(end)
            self._next_phase(end)
        self._integrate_to(now)
        return now

    def _phase_end(self) -> float:
        if self._phase_duration is None:
            return math.inf
        return self._phase_started + self._phase_duration

    def _set_phase(self, phase: PhaseName, at: float, duration: float | None) -> None:
        self._phase = phase
        self._phase_started = at
        self._phase_duration = duration

    def _auto(self, duration: float) -> float | None:
        return duration if self._scenario.auto_cycle else None

    def _next_phase(self, at: float) -> None:
        if self._phase == "idle":
            self._begin_plug(at)
        elif self._phase == "plugging":
            if self._transient_index + 1 < len(self._transient):
                self._transient_index += 1
                self._set_phase("plugging", at, self._transient_step_s())
            else:
                self._close_contactor(at)
        elif self._phase == "charging":
            self._open_contactor(at, forced=False)
        elif self._phase == "finished":
            if self._plan_rng.random() < self._scenario.unplug_latch_probability:
                self._set_phase("unplugging", at, UNPLUG_LATCH_S)
            else:
                self._finish_unplug(at)
        else:
            self._finish_unplug(at)

    def _transient_step_s(self) -> float:
        return self._plan_rng.uniform(*self._scenario.transient_step_s)

    def _begin_plug(self, at: float) -> None:
        self._session_started = at
        self._session_energy_wh = 0.0
        self._opened_at = None
        self._lifetime.connector_cycles += 1
        configured = self._scenario.plug_transient
        self._transient = (
            configured
            if configured is not None
            else self._plan_rng.choice(OBSERVED_PLUG_TRANSIENTS)
        )
        self._transient_index = 0
        if self._transient:
            self._set_phase("plugging", at, self._transient_step_s())
        else:
            self._close_contactor(at)

    def _close_contactor(self, at: float) -> None:
        self._closed_at = at
        self._opened_at = None
        self._lifetime.charge_starts += 1
        self._lifetime.contactor_cycles += 1
        self._set_phase("charging", at, self._auto(self._scenario.charge_s))

    def _open_contactor(self, at: float, *, forced: bool) -> None:
        current = self._current_at(at - self._closed_at)
        if forced and current > _LOADED_OPEN_THRESHOLD_A:
            self._lifetime.contactor_cycles_loaded += 1
        self._opened_at = at
        self._lag_current_a = current
        self._set_phase("finished", at, self._auto(self._scenario.finished_s))

    def _finish_unplug(self, at: float) -> None:
        self._session_started = None
        self._unplugged_at = at
        self._set_phase("idle", at, self._auto(self._scenario.idle_s))

    # ---- physics ------------------------------------------------------------------------------

    def _current_at(self, since_close: float) -> float:
        scenario = self._scenario
        if since_close <= scenario.ramp_delay_s:
            return 0.0
        ramped = (since_close - scenario.ramp_delay_s) / scenario.ramp_s
        return self.rated_current_a * min(1.0, ramped)

    def _loaded_voltages(self, current: float) -> tuple[float, float, float, float]:
        """Noise-free (grid_v, voltageA, voltageB, voltageC) with the contactor closed."""
        drop = self._sag_v * current / self.rated_current_a
        grid, line_a, line_b, line_c = self._nominal_v
        if self.wiring == "na_split_phase":
            return grid - drop, line_a - drop / 2, line_b - drop, line_c - drop / 2
        return grid - drop, line_a - drop, line_b - drop, line_c - drop

    def _power_at(self, current: float) -> float:
        """True power in W: split phase is grid_v x current, three phase is the per-phase sum."""
        grid, line_a, line_b, line_c = self._loaded_voltages(current)
        if self.wiring == "na_split_phase":
            return grid * current
        return (line_a + line_b + line_c) * current

    def _energy_wh_between(self, start: float, end: float) -> float:
        """Energy over [start, end] seconds after the contactor closed.

        Power is quadratic in time on each piece of the piecewise-linear current ramp, so
        Simpson's rule on each piece is exact.
        """
        scenario = self._scenario
        kinks = (scenario.ramp_delay_s, scenario.ramp_delay_s + scenario.ramp_s)
        bounds = [start, *(k for k in kinks if start < k < end), end]
        joules = 0.0
        for low, high in itertools.pairwise(bounds):
            middle = (low + high) / 2
            joules += (
                (high - low)
                / 6
                * (
                    self._power_at(self._current_at(low))
                    + 4 * self._power_at(self._current_at(middle))
                    + self._power_at(self._current_at(high))
                )
            )
        return joules / 3600

    def _integrate_to(self, t: float) -> None:
        start = self._sim_time
        if t <= start:
            return
        heat_target = 0.0
        if self._phase == "charging":
            delivered = self._energy_wh_between(start - self._closed_at, t - self._closed_at)
            self._session_energy_wh += delivered
            self._lifetime.energy_wh += delivered
            self._lifetime.charging_time_s += t - start
            heat_target = (self._current_at(t - self._closed_at) / self.rated_current_a) ** 2
        decay = math.exp(-(t - start) / _HEAT_TIME_CONSTANT_S)
        self._heat = heat_target + (self._heat - heat_target) * decay
        self._sim_time = t

    # ---- readings -----------------------------------------------------------------------------

    def _evse_state(self) -> int:
        if self._phase == "plugging":
            return self._transient[self._transient_index]
        return {
            "idle": EVSE_NOT_CONNECTED,
            "charging": EVSE_CHARGING,
            "finished": EVSE_WAITING_FOR_CAR,
            "unplugging": EVSE_TRANSITION,
        }[self._phase]

    def _noise(self, spread: float) -> float:
        return self._noise_rng.uniform(-spread, spread)

    def _electrical(self, now: float) -> _Electrical:
        if self._phase == "charging":
            return self._loaded_electrical(self._current_at(now - self._closed_at))
        lagging = self._opened_at is not None and now - self._opened_at < CONTACTOR_LAG_S
        if lagging and self.wiring == "na_split_phase":
            # docs/device-api.md, 'Split-phase layouts': right after the contactor opens, per-phase
            # values lag one sample.
            stale = self._loaded_electrical(self._lag_current_a * 0.9)
            idle = self._idle_electrical()
            return stale._replace(vehicle_current_a=idle.vehicle_current_a)
        return self._idle_electrical()

    def _grid(self, current: float) -> tuple[float, float]:
        grid_v = self._loaded_voltages(current)[0] + self._noise(0.2)
        return grid_v, self._nominal_hz + self._noise(0.012)

    def _loaded_electrical(self, current: float) -> _Electrical:
        grid_v, grid_hz = self._grid(current)
        _, line_a, line_b, line_c = self._loaded_voltages(current)
        voltages = (line_a + self._noise(0.2), line_b + self._noise(0.2), line_c + self._noise(0.2))
        if self.wiring == "na_split_phase":
            current_b = _positive_or_zero(current + self._noise(0.1))
            full_neutral = self._noise_rng.random() < _NA_NEUTRAL_FULL_PROBABILITY
            neutral = current_b if full_neutral else 0.0
            return _Electrical(grid_v, grid_hz, current_b, 0.0, current_b, 0.0, neutral, *voltages)
        phase_a, phase_b, phase_c = (_positive_or_zero(current + self._noise(0.1)) for _ in "abc")
        vehicle = current + self._noise_rng.uniform(0.0, 0.15)
        neutral = self._noise_rng.uniform(0.0, 0.4)
        return _Electrical(grid_v, grid_hz, vehicle, phase_a, phase_b, phase_c, neutral, *voltages)

    def _idle_electrical(self) -> _Electrical:
        grid_v, grid_hz = self._grid(0.0)
        flicker = (-0.1, 0.0, 0.0, 0.0, 0.1)
        voltage_a, voltage_b, voltage_c = (
            _positive_or_zero(v + self._noise_rng.choice(flicker)) for v in self._idle_voltages
        )
        current_a, current_b, current_c = (
            _positive_or_zero(i + self._noise_rng.choice(flicker)) for i in self._idle_currents
        )
        if self.wiring == "na_split_phase":
            vehicle = current_b
            full_neutral = self._noise_rng.random() < _NA_NEUTRAL_FULL_PROBABILITY
            neutral = current_b if full_neutral else 0.0
        else:
            vehicle = max(current_a, current_b, current_c)
            neutral = self._noise_rng.choice((0.0, 0.1))
        return _Electrical(
            grid_v,
            grid_hz,
            vehicle,
            current_a,
            current_b,
            current_c,
            neutral,
            voltage_a,
            voltage_b,
            voltage_c,
        )

    def _booting(self, now: float) -> bool:
        return now - self._booted_at < BOOT_NOT_READY_S

    def _pilot(self, now: float) -> tuple[float, float]:
        rng = self._noise_rng
        if self._phase == "idle":
            if self._booting(now):
                return 0.0, 0.0
            return 11.8 + rng.choice((-0.1, 0.0, 0.0, 0.1)), 11.8 + rng.choice((-0.1, 0.0, 0.1))
        if self._phase == "plugging":
            return rng.choice(_HANDSHAKE_PILOTS)
        if self._phase == "unplugging":
            return rng.choice(_UNPLUG_PILOTS)
        if self.wiring == "na_split_phase":
            return rng.choice(_NA_PILOT_READINGS), rng.choice(_NA_PILOT_READINGS)
        if self._phase == "charging":
            return rng.choice((0.0, -0.0)), rng.choice((0.0, -0.0))
        return 8.7 + self._noise(0.2), -11.6 + self._noise(0.2)

    def _prox_v(self) -> float:
        if self._phase == "idle":
            return self._idle_prox
        if self._phase == "unplugging":
            return 2.7 + self._noise_rng.choice((0.0, 0.1))
        return 1.5 if self.wiring == "na_split_phase" else 1.9

    def _relay_coil_v(self) -> float:
        closed = self._phase == "charging"
        if self.wiring == "na_split_phase":
            return self._noise_rng.choice((5.7, 5.8)) if closed else 0.0
        return 6.1 if closed else self._noise_rng.choice((11.8, 11.9))

    def _not_ready_reasons(self, now: float) -> list[int]:
        if self._phase == "idle":
            if self._booting(now):
                return [2, 4, 8]
            if self._unplugged_at is not None and now - self._unplugged_at < RECENT_UNPLUG_S:
                return [8]
            return [4, 8]
        if self._phase == "plugging":
            return [4]
        if self._phase == "unplugging":
            return [3]
        return [1]

    def vitals(self) -> JsonBody:
        """The ``/api/1/vitals`` body (fw 25.x, 27 keys, rounded as the unit formats them)."""
        now = self._advance()
        electrical = self._electrical(now)
        pilot_high, pilot_low = self._pilot(now)
        heat = self._heat

        def one(value: float) -> float:
            return round(value, _DEFAULT_DECIMALS)

        def temperature(base: float, rise: float) -> float:
            return one(base + rise * heat + self._noise(0.05))

        session_s = 0 if self._session_started is None else int(now - self._session_started)
        return {
            "contactor_closed": self._phase == "charging",
            "vehicle_connected": self._phase != "idle",
            "session_s": session_s,
            "grid_v": one(electrical.grid_v),
            "grid_hz": round(electrical.grid_hz, 3),
            "vehicle_current_a": one(electrical.vehicle_current_a),
            "currentA_a": one(electrical.current_a),
            "currentB_a": one(electrical.current_b),
            "currentC_a": one(electrical.current_c),
            "currentN_a": one(electrical.current_n),
            "voltageA_v": one(electrical.voltage_a),
            "voltageB_v": one(electrical.voltage_b),
            "voltageC_v": one(electrical.voltage_c),
            "relay_coil_v": self._relay_coil_v(),
            "pcba_temp_c": temperature(self._pcba_base_c, 12.0),
            "handle_temp_c": temperature(self._handle_base_c, 6.0),
            "mcu_temp_c": temperature(self._mcu_base_c, 4.0),
            "uptime_s": int(now - self._booted_at),
            "input_thermopile_uv": -int(80 + 1500 * heat + self._noise_rng.uniform(0, 10)),
            "prox_v": self._prox_v(),
            "pilot_high_v": pilot_high,
            "pilot_low_v": pilot_low,
            "session_energy_wh": round(self._session_energy_wh, _SESSION_DECIMALS),
            "config_status": _CONFIG_STATUS,
            "evse_state": self._evse_state(),
            "current_alerts": [],
            "evse_not_ready_reasons": self._not_ready_reasons(now),
        }

    def lifetime(self) -> JsonBody:
        """The ``/api/1/lifetime`` body (10 keys)."""
        now = self._advance()
        counters = self._lifetime
        return {
            "contactor_cycles": counters.contactor_cycles,
            "contactor_cycles_loaded": counters.contactor_cycles_loaded,
            "alert_count": counters.alert_count,
            "thermal_foldbacks": 0,
            "avg_startup_temp": 0.0,
            "charge_starts": counters.charge_starts,
            "energy_wh": int(counters.energy_wh),
            "connector_cycles": counters.connector_cycles,
            "uptime_s": counters.uptime_base_s + int(now),
            "charging_time_s": int(counters.charging_time_s),
        }

    def version(self) -> JsonBody:
        """The ``/api/1/version`` body, in the key order the 25.x firmware sends."""
        return {
            "firmware_version": self.firmware,
            "git_branch": "HEAD",
            "part_number": PART_NUMBERS[self.wiring],
            "serial_number": self.serial,
            "web_service": WEB_SERVICE,
        }

    def wifi_status(self) -> JsonBody:
        """The ``/api/1/wifi_status`` body; the SSID is base64 as on the real unit."""
        rssi = self._rssi + self._noise_rng.randint(-2, 2)
        return {
            "wifi_ssid": base64.b64encode(self.wifi_ssid.encode()).decode("ascii"),
            "wifi_signal_strength": max(0, min(100, 2 * (rssi + 90))),
            "wifi_rssi": rssi,
            "wifi_snr": self._snr + self._noise_rng.randint(-1, 1),
            "wifi_connected": True,
            "wifi_infra_ip": self.ip_address,
            "internet": True,
            "wifi_mac": self.mac_address,
        }

    # ---- HTTP view ----------------------------------------------------------------------------

    def render(self, path: str) -> tuple[int, bytes]:
        """Status and body the unit sends for ``GET path``, with the body-level quirks applied."""
        path = path.partition("?")[0]
        endpoints: dict[str, tuple[Callable[[], JsonBody], Mapping[str, int]]] = {
            VITALS_PATH: (self.vitals, _VITALS_DECIMALS),
            LIFETIME_PATH: (self.lifetime, _NO_SPECIAL_DECIMALS),
            VERSION_PATH: (self.version, _NO_SPECIAL_DECIMALS),
            WIFI_STATUS_PATH: (self.wifi_status, _NO_SPECIAL_DECIMALS),
        }
        if path not in endpoints:
            if path.startswith(_API_PREFIX):
                return 500, b"Internal Server Error"
            return 404, b"Not Found"
        quirks = self.quirks
        if self.draw_quirk(quirks.http_500):
            return 500, b"Internal Server Error"
        build, decimals = endpoints[path]
        body = build()
        if path == VITALS_PATH:
            if self.draw_quirk(quirks.sensor_255):
                body["handle_temp_c"] = 255.0
            if self.draw_quirk(quirks.nan):
                floats = [key for key, value in body.items() if type(value) is float]
                body[self._quirk_rng.choice(floats)] = math.nan
        elif path == LIFETIME_PATH and self.draw_quirk(quirks.nan):
            body["avg_startup_temp"] = math.nan
        encoded = encode_body(body, decimals)
        if self.draw_quirk(quirks.truncated):
            encoded = encoded[:-1]
        return 200, encoded


def _encode_value(value: JsonValue, decimals: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Fixed decimals like the unit: 0.000, -0.0, and a bare nan for NaN.
        return f"{value:.{decimals}f}"
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ",".join(_encode_value(item, decimals) for item in value) + "]"


def encode_body(body: Mapping[str, JsonValue], decimals: Mapping[str, int]) -> bytes:
    """Compact single-line JSON with fixed decimals (1 unless ``decimals`` says otherwise)."""
    members = (
        f"{json.dumps(key)}:{_encode_value(value, decimals.get(key, _DEFAULT_DECIMALS))}"
        for key, value in body.items()
    )
    return ("{" + ",".join(members) + "}").encode()


# ---- HTTP server ------------------------------------------------------------------------------

MAX_LINE_BYTES: Final = 8192
MAX_HEAD_BYTES: Final = 16384
MAX_HEADER_LINES: Final = 64
MAX_REQUEST_BODY_BYTES: Final = 65536
KEEP_ALIVE_TIMEOUT_S: Final = 30.0
_REOPEN_RETRY_S: Final = 1.0
_PAD_CHUNK: Final = b" " * 65536
_ENDLESS_CHUNK_BYTES: Final = 65536
_ENDLESS_CHUNK_PAUSE_S: Final = 0.01
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HTTP_VERSION: Final = re.compile(r"HTTP/1\.[01]")
_JSON_TYPE: Final = "application/json"
_TEXT_TYPE: Final = "text/plain"


class _BadRequestError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    version: str
    headers: Mapping[str, str]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def _parse_head(lines: Sequence[bytes]) -> _Request:
    request_line = lines[0].decode("latin-1").rstrip("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:  # noqa: PLR2004 - method, target and version
        raise _BadRequestError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _HTTP_VERSION.fullmatch(version):
        raise _BadRequestError(400, "malformed request line")
    if not (target.startswith("/") and target.isascii() and target.isprintable()):
        raise _BadRequestError(400, "unsupported request target")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.decode("latin-1").rstrip("\r\n")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _BadRequestError(400, "malformed header")
        key = name.lower()
        value = value.strip(" \t")
        if key == "content-length" and headers.get(key, value) != value:
            raise _BadRequestError(400, "conflicting Content-Length")
        headers[key] = value
    return _Request(method, target, version, headers)


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request head, or ``None`` when the client closed between requests."""
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not lines and not exc.partial.strip():
                return None
            raise _BadRequestError(400, "incomplete request") from None
        except asyncio.LimitOverrunError:
            raise _BadRequestError(431, "request line or header too long") from None
        total += len(line)
        if total > MAX_HEAD_BYTES or len(lines) > MAX_HEADER_LINES:
            raise _BadRequestError(431, "request head too large")
        if line.strip(b"\r\n"):
            lines.append(line)
        elif lines:
            return _parse_head(lines)
        # RFC 9112 §2.2: empty lines before a request line are ignored.


def _response_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# Picks the unit that answers a request from its headers (names in lower case); ``None`` headers:
# the request was too malformed to read. A ``None`` unit answers 404.
UnitRoute: TypeAlias = Callable[[Mapping[str, str] | None], SimulatedUnit | None]


async def serve_http_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    route: UnitRoute,
    *,
    label: str,
) -> None:
    """Answer HTTP/1.1 requests on one accepted connection until it ends, then close it.

    Each request is answered by the unit ``route`` picks, with that unit's body-level quirks and
    its per-response transport quirks (hang, slow first byte, drip, huge and endless bodies);
    closing the listener (``refuse``) is up to the server. ``label`` names the server in log
    lines. ``reader`` should come from :func:`asyncio.start_server` with
    ``limit=MAX_LINE_BYTES``.
    """
    try:
        await _serve_requests(reader, writer, route)
    except (ConnectionError, TimeoutError):
        pass  # the client went away or idled out: nothing to answer
    except Exception:
        logger.exception("%s: connection handler failed", label)
    finally:
        await _close_quietly(writer)


async def _close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _serve_requests(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: UnitRoute
) -> None:
    while True:
        try:
            async with asyncio.timeout(KEEP_ALIVE_TIMEOUT_S):
                request = await _read_request(reader)
                if request is not None:
                    await _discard_request_body(reader, request)
        except _BadRequestError as exc:
            await _send_plain(writer, route(None), exc.status, str(exc), keep_alive=False)
            return
        if request is None:
            return
        unit = route(request.headers)
        if unit is None:
            await _send_plain(writer, None, 404, "no such unit", keep_alive=request.keep_alive)
        elif request.method != "GET":
            await _send_plain(
                writer, unit, 405, "only GET", keep_alive=request.keep_alive, allow="GET"
            )
        elif not await _answer(unit, request, reader, writer):
            return
        if not request.keep_alive:
            return


async def _discard_request_body(reader: asyncio.StreamReader, request: _Request) -> None:
    if "transfer-encoding" in request.headers:
        raise _BadRequestError(400, "request bodies are not supported")
    raw_length = request.headers.get("content-length", "0")
    if not raw_length.isdigit():
        raise _BadRequestError(400, "malformed Content-Length")
    length = int(raw_length)
    if length > MAX_REQUEST_BODY_BYTES:
        raise _BadRequestError(413, "request body too large")
    try:
        await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise _BadRequestError(400, "incomplete request body") from None


async def _answer(
    unit: SimulatedUnit,
    request: _Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> bool:
    """Send the response with the transport quirks; ``False`` when the connection is done."""
    quirks = unit.quirks
    if unit.draw_quirk(quirks.hang):
        while await reader.read(65536):
            pass  # swallow whatever the client sends until it gives up
        return False
    if quirks.slow_first_byte_s > 0:
        await asyncio.sleep(quirks.slow_first_byte_s)
    status, body = unit.render(request.target)
    content_type = _JSON_TYPE if status == http.HTTPStatus.OK else _TEXT_TYPE
    if unit.draw_quirk(quirks.endless_chunked):
        await _send_endless_chunked(writer, unit, status, content_type, body)
        return False
    pad = max(0, quirks.huge_body_bytes - len(body)) if quirks.huge_body_bytes else 0
    head = _response_head(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(pad + len(body))),
            ("Connection", "keep-alive" if request.keep_alive else "close"),
        ],
    )
    await _send(writer, unit, head)
    while pad > 0:
        # Generated piecewise so a 50 MB body never sits in memory.
        piece = memoryview(_PAD_CHUNK)[: min(pad, len(_PAD_CHUNK))]
        await _send(writer, unit, piece)
        pad -= len(piece)
    await _send(writer, unit, body)
    return True


async def _send(
    writer: asyncio.StreamWriter, unit: SimulatedUnit | None, data: bytes | memoryview
) -> None:
    # Read on every send, so a drip rate changed mid-response applies at once.
    rate = unit.quirks.drip_bytes_per_s if unit is not None else 0.0
    if rate <= 0:
        writer.write(data)
        await writer.drain()
        return
    view = memoryview(data)
    for index in range(len(view)):
        writer.write(view[index : index + 1])
        await writer.drain()
        await asyncio.sleep(1 / rate)


async def _send_plain(
    writer: asyncio.StreamWriter,
    unit: SimulatedUnit | None,
    status: int,
    text: str,
    *,
    keep_alive: bool,
    allow: str | None = None,
) -> None:
    body = text.encode()
    headers = [
        ("Content-Type", _TEXT_TYPE),
        ("Content-Length", str(len(body))),
        ("Connection", "keep-alive" if keep_alive else "close"),
    ]
    if allow is not None:
        headers.append(("Allow", allow))
    await _send(writer, unit, _response_head(status, headers) + body)


async def _send_endless_chunked(
    writer: asyncio.StreamWriter, unit: SimulatedUnit, status: int, content_type: str, body: bytes
) -> None:
    head = _response_head(
        status, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")]
    )
    # A zero-length chunk would end the body, so an empty body sends no chunk of its own.
    first_chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b""
    await _send(writer, unit, head + first_chunk)
    filler = f"{_ENDLESS_CHUNK_BYTES:x}\r\n".encode() + _PAD_CHUNK + b"\r\n"
    while True:
        await _send(writer, unit, filler)
        # A yield point even when the client drains as fast as we write.
        await asyncio.sleep(_ENDLESS_CHUNK_PAUSE_S)


class UnitServer:
    """Serves one :class:`SimulatedUnit` over HTTP/1.1, with its transport-level quirks.

    Use ``async with UnitServer(unit) as server`` or ``start()``/``stop()``; ``port`` is the bound
    port once started (``port=0`` picks a free one, kept across ``set_refusing`` cycles).
    A running server does no periodic work: it closes or reopens its listener when it is told
    that ``unit.quirks.refuse`` changed (see :meth:`SimulatedUnit.add_refuse_listener`).
    """

    def __init__(self, unit: SimulatedUnit, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.unit: Final = unit
        self.host: Final = host
        self._port = port
        self._label = f"simulated unit {unit.serial}"
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._lock = asyncio.Lock()
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._follower: asyncio.Task[None] | None = None
        self._generation = 0

    @property
    def port(self) -> int:
        """The listening port (the requested one until started)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the unit, e.g. ``http://127.0.0.1:8780``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def refusing(self) -> bool:
        """Whether the listening socket is closed right now."""
        return self._running and self._server is None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind and listen (closed again at once if the ``refuse`` quirk is set)."""
        if self._running:
            return
        await self._open_listener()
        self._running = True
        self._loop = asyncio.get_running_loop()
        # Before the first look at the flag, so a change while that is applied is not missed.
        self.unit.add_refuse_listener(self._refuse_quirk_changed)
        if self.unit.quirks.refuse:
            await self._apply_refusing(refusing=True)

    async def stop(self) -> None:
        """Close the listening socket and every open connection."""
        if not self._running:
            return
        self._running = False
        self.unit.remove_refuse_listener(self._refuse_quirk_changed)
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        async with self._lock:
            await self._close_listener_and_connections()

    async def set_refusing(self, refusing: bool) -> None:
        """Close (refuse connections) or reopen the listening socket on the same port."""
        self.unit.quirks.refuse = refusing
        if self._running:
            await self._apply_refusing(refusing=refusing)

    def _refuse_quirk_changed(self) -> None:
        loop = self._loop
        if loop is None:
            return
        # The flag may be set from another thread, or after the loop ended without stop()
        # (RuntimeError): then there is no listener left to close or reopen.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._start_following)

    def _start_following(self) -> None:
        if self._running and (self._follower is None or self._follower.done()):
            self._follower = asyncio.create_task(self._follow_refuse_quirk())

    async def _follow_refuse_quirk(self) -> None:
        # A loop, because the flag may flip again while the listener is being closed or reopened.
        warned = False
        while self._running and (wanted := self.unit.quirks.refuse) != self.refusing:
            try:
                await self._apply_refusing(refusing=wanted)
            except OSError as exc:
                if not warned:
                    logger.warning("%s: cannot reopen: %s", self._label, exc)
                    warned = True
                # Something else took the port meanwhile; it may let go of it.
                await asyncio.sleep(_REOPEN_RETRY_S)

    async def _apply_refusing(self, *, refusing: bool) -> None:
        async with self._lock:
            if refusing and self._server is not None:
                await self._close_listener_and_connections()
            elif not refusing and self._server is None and self._running:
                await self._open_listener()

    async def _open_listener(self) -> None:
        generation = self._generation

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # This task is the root of the connection and only we cancel it (shutdown). Ending
            # it normally matters: CPython 3.11's done-callback for it calls task.exception(),
            # which raises for a cancelled task and logs "Exception in callback".
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_connection(reader, writer, generation)

        self._server = await asyncio.start_server(
            serve, self.host, self._port, limit=MAX_LINE_BYTES
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def _close_listener_and_connections(self) -> None:
        self._generation += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            # Accepted just before the listener closed, but scheduled after the connections
            # were closed: it must not outlive the listener that accepted it.
            if generation == self._generation:
                await serve_http_connection(reader, writer, self._route, label=self._label)
            else:
                await _close_quietly(writer)
        finally:
            if task is not None:
                self._connections.pop(task, None)

    def _route(self, _headers: Mapping[str, str] | None) -> SimulatedUnit:
        return self.unit


class HostRoutedServer:
    """Serves many simulated units on one listening socket, routed by the ``Host`` header.

    ``Host: <serial>`` (any case; a ``:port`` suffix is ignored) picks the unit; an unknown or
    missing host is answered 404. Requests are read and answered by the simulator's own code
    (:func:`bridge.sim.simulator.serve_http_connection`), so every unit answers exactly as on its
    own :class:`~bridge.sim.simulator.UnitServer`. Transport quirks are not supported: ``refuse`` is
    ignored (there is no listener per unit to close), the others are untested in this mode.
    """

    def __init__(
        self, units: Sequence[SimulatedUnit], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._units = {unit.serial.lower(): unit for unit in units}
        if len(self._units) != len(units):
            raise ValueError("two units share a serial number")
        self.host: Final = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The listening port (the requested one until started)."""
        return self._port

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind and listen."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._serve, self.host, self._port, limit=MAX_LINE_BYTES
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close the listening socket and every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        # Ends normally when stop() cancels it: CPython 3.11's done-callback of a connection
        # task calls task.exception(), which raises for a cancelled task.
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await serve_http_connection(reader, writer, self._route, label="host router")
            finally:
                if task is not None:
                    self._connections.discard(task)

    def _route(self, headers: Mapping[str, str] | None) -> SimulatedUnit | None:
        if headers is None:
            return None
        host = headers.get("host", "").partition(":")[0]
        return self._units.get(host.strip().lower())


# ---- many units and the CLI -------------------------------------------------------------------


def simulated_serial(index: int) -> str:
    """Serial number of the ``index``-th simulated unit (1-based): ``SIM0000000001``."""
    return f"SIM{index:010d}"


def bench_units(count: int) -> list[SimulatedUnit]:
    """``count`` units as the benchmarks build them: every wiring, first plug-ins spread out."""
    return [
        SimulatedUnit(
            simulated_serial(index),
            wiring=WIRINGS[(index - 1) % len(WIRINGS)],
            seed=index,
            scenario=Scenario(first_idle_s=30.0 * index / count),
        )
        for index in range(1, count + 1)
    ]


async def run_simulator(
    count: int,
    *,
    host: str = "127.0.0.1",
    base_port: int = 8780,
    wiring: WiringChoice = "mixed",
    speed: float = 1.0,
    quirks: Quirks | None = None,
    stop: asyncio.Event | None = None,
    start_state: StartState = "idle",
    seed: int | None = None,
) -> None:
    """Serve ``count`` simulated units until ``stop`` is set or the task is cancelled.

    Unit ``i`` (1-based) is ``SIM000000000i`` on ``base_port + i - 1`` (``base_port=0``: free
    ports); ``wiring="mixed"`` alternates EU and NA, starting with EU. One line per unit goes
    to stdout once it listens.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    base_scenario = Scenario(speed=speed, start_state=start_state)
    async with contextlib.AsyncExitStack() as stack:
        for index in range(1, count + 1):
            unit_wiring: Wiring = (
                WIRINGS[(index - 1) % len(WIRINGS)] if wiring == "mixed" else wiring
            )
            scenario = dataclasses.replace(
                base_scenario, first_idle_s=base_scenario.idle_s * index / count
            )
            unit = SimulatedUnit(
                simulated_serial(index),
                wiring=unit_wiring,
                seed=None if seed is None else seed + index,
                scenario=scenario,
                quirks=dataclasses.replace(quirks) if quirks is not None else None,
            )
            port = 0 if base_port == 0 else base_port + index - 1
            server = await stack.enter_async_context(UnitServer(unit, host=host, port=port))
            sys.stdout.write(
                f"simulated wall connector {unit.serial} ({unit.wiring}) at {server.url}\n"
            )
            sys.stdout.flush()
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()


async def simulate_main(args: argparse.Namespace) -> int:
    """Run ``twc3-bridge simulate``; SIGINT/SIGTERM stop it cleanly. Returns the exit status."""
    quirks = Quirks()
    for name, value in args.quirk:
        quirks.set(name, value)
    if args.port and args.port + args.units - 1 > MAX_PORT:
        sys.stderr.write(
            f"simulate: error: --port {args.port} leaves no room for {args.units} units\n"
        )
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    previous_handlers: dict[signal.Signals, Callable[..., object] | int | None] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            previous_handlers[signum] = previous
    try:
        await run_simulator(
            args.units,
            host=args.host,
            base_port=args.port,
            wiring=args.wiring,
            speed=args.speed,
            quirks=quirks,
            stop=stop,
            start_state=args.start,
            seed=args.seed,
        )
    except OSError as exc:
        sys.stderr.write(f"simulate: error: cannot listen on {args.host}: {exc.strerror or exc}\n")
        return 1
    finally:
        for signum, previous in previous_handlers.items():
            loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)
    return 0
