"""Pure derived values: power and phase detection, status, names, session energy, lifetime guard."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from bridge.core.derived import (
    ENERGY_TOLERANCE_WH,
    Event,
    EventTracker,
    LifetimeGuard,
    PhaseTracker,
    SessionEnergy,
    clean_temperature,
    current_a,
    decode_alerts,
    decode_ssid,
    detect_wiring,
    evse_state_name,
    last_boot,
    max_power_w,
    plausible_increase_wh,
    power_w,
    status,
)
from bridge.core.models import Vitals
from bridge.core.vocabulary import Wiring

# Invented samples in the layouts docs/device-api.md describes
# ('Vitals fields', 'Computing power', 'Split-phase layouts'); no real unit's values.
EU_16A = Vitals(
    contactor_closed=True,
    vehicle_connected=True,
    grid_v=226.0,
    vehicle_current_a=16.1,
    currentA_a=16.1,
    currentB_a=16.0,
    currentC_a=16.1,
    voltageA_v=231.0,
    voltageB_v=227.0,
    voltageC_v=228.0,
)
EU_SINGLE_PHASE = Vitals(
    contactor_closed=True,
    vehicle_connected=True,
    grid_v=230.0,
    vehicle_current_a=16.0,
    currentA_a=16.0,
    currentB_a=0.1,
    currentC_a=0.0,
    voltageA_v=230.0,
    voltageB_v=0.2,
    voltageC_v=0.1,
)
# 2023 layout: A and B at line-line voltage, C at half; currents spread, vehicle current = total.
NA_2023 = Vitals(
    contactor_closed=True,
    vehicle_connected=True,
    grid_v=240.0,
    vehicle_current_a=40.4,
    currentA_a=18.7,
    currentB_a=21.7,
    currentC_a=22.1,
    voltageA_v=240.0,
    voltageB_v=239.0,
    voltageC_v=119.0,
)
# 2025 layout: B at line-line voltage carries the whole current, A = C = 0, N flickers.
NA_2025 = Vitals(
    contactor_closed=True,
    vehicle_connected=True,
    grid_v=240.0,
    vehicle_current_a=40.0,
    currentA_a=0.0,
    currentB_a=40.0,
    currentC_a=0.0,
    currentN_a=40.0,
    voltageA_v=119.0,
    voltageB_v=247.0,
    voltageC_v=119.0,
)
NA_2025_N_ZERO = NA_2025.model_copy(update={"currentN_a": 0.0})
# Contactor open, car plugged in: a few volts and a few tenths of an amp of noise.
IDLE_NOISE = Vitals(
    contactor_closed=False,
    vehicle_connected=True,
    grid_v=246.0,
    vehicle_current_a=0.4,
    currentA_a=0.2,
    currentB_a=0.5,
    currentC_a=0.3,
    currentN_a=0.2,
    voltageA_v=2.1,
    voltageB_v=5.4,
    voltageC_v=2.1,
)
# The sample right after the contactor opened: per-phase values still show the charge
# (docs/device-api.md, 'Split-phase layouts').
JUST_OPENED = Vitals(
    contactor_closed=False,
    vehicle_connected=True,
    grid_v=253.2,
    vehicle_current_a=0.4,
    currentA_a=0.0,
    currentB_a=35.8,
    currentC_a=0.0,
    currentN_a=35.8,
    voltageA_v=119.0,
    voltageB_v=247.0,
    voltageC_v=118.8,
)
# Contactor closed but the outputs still read idle (the first closed sample of a charge).
CLOSED_IDLE_VOLTAGES = IDLE_NOISE.model_copy(update={"contactor_closed": True})
WIRINGS: tuple[Wiring, ...] = ("three_phase", "split_phase", "single_phase")


def _phase_sum(vitals: Vitals) -> float:
    pairs = (
        (vitals.voltageA_v, vitals.currentA_a),
        (vitals.voltageB_v, vitals.currentB_a),
        (vitals.voltageC_v, vitals.currentC_a),
    )
    return sum((v or 0.0) * (i or 0.0) for v, i in pairs)


# --- power and phase detection ------------------------------------------------------------------


def test_eu_three_phase_power_is_the_per_phase_sum() -> None:
    """EU 3×16 A at ~230 V is Σ V·I ≈ 11 kW, not grid_v × vehicle_current_a ≈ 3.6 kW."""
    power = power_w(EU_16A, "three_phase")
    assert power == pytest.approx(_phase_sum(EU_16A), abs=0.1)
    assert 10_800 < power < 11_200
    assert power > 2.5 * 226.0 * 16.1


@pytest.mark.parametrize(
    "sample", [NA_2023, NA_2025, NA_2025_N_ZERO], ids=["2023", "2025", "2025N0"]
)
def test_na_split_phase_power_is_grid_voltage_times_vehicle_current(sample: Vitals) -> None:
    """NA split phase at 240 V uses grid_v × vehicle_current_a for both phase layouts."""
    assert sample.grid_v is not None
    assert sample.vehicle_current_a is not None
    expected = sample.grid_v * sample.vehicle_current_a
    assert power_w(sample, "split_phase") == pytest.approx(expected, abs=0.1)
    assert 9_500 < power_w(sample, "split_phase") < 9_800
    assert power_w(sample, "split_phase") != pytest.approx(_phase_sum(sample), abs=1.0)


def test_na_2023_three_phase_sum_would_over_read_by_a_quarter() -> None:
    """On the 2023 layout the three-phase sum reads ~27 % high; the split-phase formula does not."""
    split = power_w(NA_2023, "split_phase")
    assert power_w(NA_2023, "three_phase") / split > 1.2


def test_na_2025_flickering_neutral_current_does_not_change_power() -> None:
    """currentN_a alternating between 0 and the full current leaves the power unchanged."""
    assert power_w(NA_2025, "split_phase") == power_w(NA_2025_N_ZERO, "split_phase")


@pytest.mark.parametrize("sample", [IDLE_NOISE, JUST_OPENED], ids=["idle-noise", "one-sample-lag"])
@pytest.mark.parametrize("wiring", WIRINGS)
def test_open_contactor_gives_zero_power_and_current(sample: Vitals, wiring: Wiring) -> None:
    """Contactor open: 0 W and 0 A, despite idle noise or per-phase values lagging one sample."""
    assert power_w(sample, wiring) == 0.0
    assert current_a(sample) == 0.0


def test_missing_contactor_flag_gives_zero_power() -> None:
    """An unknown contactor state is not treated as closed."""
    sample = NA_2025.model_copy(update={"contactor_closed": None})
    assert power_w(sample, "split_phase") == 0.0
    assert current_a(sample) == 0.0


def test_current_is_vehicle_current_while_closed() -> None:
    """With the contactor closed the current is vehicle_current_a, never negative."""
    assert current_a(NA_2023) == 40.4
    assert current_a(NA_2025.model_copy(update={"vehicle_current_a": -0.1})) == 0.0


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (EU_16A, "three_phase"),
        (EU_SINGLE_PHASE, "single_phase"),
        (NA_2023, "split_phase"),
        (NA_2025, "split_phase"),
        (NA_2025_N_ZERO, "split_phase"),
        (IDLE_NOISE, None),
        (JUST_OPENED, None),
        (CLOSED_IDLE_VOLTAGES, None),
        (NA_2025.model_copy(update={"contactor_closed": None}), None),
        (NA_2025.model_copy(update={"grid_v": None}), None),
    ],
    ids=[
        "eu-3ph",
        "eu-1ph",
        "na-2023",
        "na-2025",
        "na-2025-n0",
        "idle",
        "just-opened",
        "closed-idle-volts",
        "contactor-unknown",
        "no-grid-v",
    ],
)
def test_detect_wiring(sample: Vitals, expected: Wiring | None) -> None:
    """Each layout is recognised while charging; nothing is guessed from an open contactor."""
    assert detect_wiring(sample) == expected


def test_phase_tracker_auto_keeps_detection_after_contactor_opens() -> None:
    """Auto mode keeps the wiring learnt while charging once the contactor opens again."""
    tracker = PhaseTracker()
    assert tracker.update(IDLE_NOISE) == "three_phase"  # nothing learnt yet
    assert tracker.detected is None
    assert tracker.update(NA_2025) == "split_phase"
    assert tracker.update(JUST_OPENED) == "split_phase"
    assert tracker.update(IDLE_NOISE) == "split_phase"
    assert tracker.update(CLOSED_IDLE_VOLTAGES) == "split_phase"
    assert tracker.detected == "split_phase"


def test_phase_tracker_auto_follows_a_new_detection() -> None:
    """A later detection made while charging replaces the earlier one."""
    tracker = PhaseTracker()
    tracker.update(EU_16A)
    assert tracker.update(NA_2023) == "split_phase"


@pytest.mark.parametrize("mode", WIRINGS)
def test_phase_tracker_configured_mode_overrides_detection(mode: Wiring) -> None:
    """A configured wiring is used whatever the voltages say."""
    tracker = PhaseTracker(mode)
    for sample in (NA_2023, EU_16A, NA_2025, IDLE_NOISE):
        assert tracker.update(sample) == mode


def test_max_power_uses_phases_and_voltage() -> None:
    """Rated current × voltage × phases; three phases and 250 V while unknown."""
    assert max_power_w("split_phase", 240.0, 48.0) == 48.0 * 240.0
    assert max_power_w("three_phase", 230.0, 32.0) == 32.0 * 230.0 * 3
    assert max_power_w(None, None, 48.0) == 48.0 * 250.0 * 3
    assert max_power_w("single_phase", 3.0, 16.0) == 16.0 * 250.0


# --- status, names, small decoders --------------------------------------------------------------


@pytest.mark.parametrize(
    ("contactor", "connected", "expected"),
    [
        (False, False, "disconnected"),
        (False, True, "connected"),
        (True, True, "charging"),
        (True, None, "charging"),
        (None, True, "connected"),
        (None, False, "disconnected"),
        (None, None, None),
        (False, None, None),
    ],
)
def test_status_from_booleans(
    contactor: bool | None, connected: bool | None, expected: str | None
) -> None:
    """Coarse status comes from the contactor and vehicle_connected booleans only."""
    sample = Vitals(contactor_closed=contactor, vehicle_connected=connected, evse_state=7)
    assert status(sample) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1, "not_connected"),
        (4, "ready"),
        (9, "waiting_car"),
        (11, "charging"),
        (7, "transition"),
        (3, "unknown_3"),
        (5, "unknown_5"),
        (8, "unknown_8"),
        (10, "unknown_10"),
        (12, "unknown_12"),
        (13, "unknown_13"),
        (None, None),
    ],
)
def test_evse_state_name(code: int | None, expected: str | None) -> None:
    """Agreed codes are named, 7 is a transition, contested or unseen codes are unknown_<n>."""
    assert evse_state_name(code) == expected


def test_no_evse_state_is_called_error() -> None:
    """No code maps to "error" (7 appears on nearly every plug-in)."""
    assert all(evse_state_name(code) != "error" for code in range(-1, 64))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(255.0, None), (255.5, None), (254.9, 254.9), (21.3, 21.3), (-4.0, -4.0), (None, None)],
)
def test_clean_temperature(value: float | None, expected: float | None) -> None:
    """The 255 °C "read invalid" sentinel becomes None; real readings pass."""
    assert clean_temperature(value) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("SG9tZU5ldA==", "HomeNet"),
        ("Q2Fmw6k=", "Café"),
        ("not base64!", "not base64!"),
        ("//79", "//79"),  # valid base64 of bytes that are not UTF-8
        ("SG9tZU5ldA", "SG9tZU5ldA"),  # missing padding
        (None, None),
    ],
)
def test_decode_ssid(raw: str | None, expected: str | None) -> None:
    """Base64 SSIDs decode to text; invalid base64 or non-UTF-8 bytes are kept raw."""
    assert decode_ssid(raw) == expected


def test_last_boot_is_iso_utc_to_the_minute() -> None:
    """last_boot = now - uptime, ISO 8601 with Z, seconds dropped so jitter does not churn it."""
    now = datetime(2025, 12, 23, 20, 54, 1, 763546, tzinfo=UTC).timestamp()
    assert last_boot(27, now) == "2025-12-23T20:53:00Z"
    assert last_boot(28, now + 1.0) == "2025-12-23T20:53:00Z"
    assert last_boot(0, now) == "2025-12-23T20:54:00Z"
    assert last_boot(None, now) is None
    assert last_boot(-1, now) is None


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        ([40], ["handle_temperature_derate"]),
        ([27], ["alert_27"]),
        ([40, 27], ["handle_temperature_derate", "alert_27"]),
        (["alert1", "alert2"], ["alert1", "alert2"]),
        ([], []),
        (None, []),
    ],
)
def test_decode_alerts(alerts: list[int | str] | None, expected: list[str]) -> None:
    """Alert 40 is named, other numbers become alert_<n>, old placeholder strings are kept."""
    assert decode_alerts(alerts) == expected


# --- SessionEnergy examples ---------------------------------------------------------------------

SPLIT_MAX_W = max_power_w("split_phase", 240.0, 48.0)  # 11 520 W


def _v(
    energy: float | None,
    *,
    connected: bool | None = True,
    closed: bool | None = None,
    session_s: int | None = 100,
    uptime_s: int | None = 500_000,
) -> Vitals:
    # Unvalidated: the accumulator's own guards must hold for values the model's bounds refuse.
    return Vitals.model_construct(
        contactor_closed=bool(connected) if closed is None else closed,
        vehicle_connected=connected,
        session_s=session_s if connected else 0,
        session_energy_wh=energy,
        uptime_s=uptime_s,
    )


class Feeder:
    """Feeds a SessionEnergy samples 5 s apart with consistent session and uptime clocks."""

    def __init__(self, energy: SessionEnergy | None = None, t: float = 1_000.0) -> None:
        self.energy = energy or SessionEnergy()
        self.t = t
        self.uptime = 500_000
        self.session_s = 0
        self.returned: list[float] = []

    def feed(
        self,
        wh: float | None,
        *,
        connected: bool = True,
        dt: float = 5.0,
        uptime_s: int | None = None,
        session_s: int | None = None,
    ) -> float:
        """Feed one sample ``dt`` seconds after the previous one; returns what was added."""
        self.t += dt
        self.uptime = uptime_s if uptime_s is not None else self.uptime + round(dt)
        if session_s is not None:
            self.session_s = session_s
        else:
            self.session_s = self.session_s + round(dt) if connected else 0
        sample = _v(wh, connected=connected, session_s=self.session_s, uptime_s=self.uptime)
        added = self.energy.update(sample, self.t, SPLIT_MAX_W)
        self.returned.append(added)
        return added


def test_normal_charge_accumulates_the_session_increase() -> None:
    """A charge adds exactly what session_energy_wh grew by."""
    feeder = Feeder()
    feeder.feed(0.0, session_s=10)
    for step in range(1, 13):
        feeder.feed(12.5 * step)
    assert feeder.energy.total_wh == pytest.approx(150.0)
    assert sum(feeder.returned) == feeder.energy.total_wh
    assert feeder.energy.rejected == 0


def test_unplug_keeps_retained_value_and_adds_nothing() -> None:
    """After unplug the unit keeps the session value; nothing is added while it sits there."""
    feeder = Feeder()
    feeder.feed(0.0, session_s=10)
    feeder.feed(12.0)
    feeder.feed(24.0)
    assert feeder.feed(24.0, connected=False) == 0.0
    for _ in range(5):
        assert feeder.feed(24.0, connected=False, dt=15.0) == 0.0
    assert feeder.energy.total_wh == pytest.approx(24.0)


def test_plug_in_reset_to_zero_does_not_drop_the_total() -> None:
    """The reset to 0 at plug-in starts a new base; the next charge adds on top."""
    feeder = Feeder()
    feeder.feed(0.0, session_s=10)
    feeder.feed(30.0)
    feeder.feed(30.0, connected=False)
    assert feeder.feed(0.0, session_s=1) == 0.0
    assert feeder.energy.total_wh == pytest.approx(30.0)
    feeder.feed(10.0)
    feeder.feed(20.0)
    assert feeder.energy.total_wh == pytest.approx(50.0)
    assert feeder.energy.rejected == 0


def test_plug_in_with_stale_large_retained_value_then_zero_adds_nothing() -> None:
    """First connected sample still showing the old 25 kWh, then 0: no spurious addition."""
    feeder = Feeder()
    feeder.feed(25_164.699, connected=False)
    feeder.feed(25_164.699, session_s=1)  # stale: the reset shows one sample late
    feeder.feed(0.0)
    assert feeder.energy.total_wh == 0.0
    feeder.feed(6.0)
    feeder.feed(12.0)
    assert feeder.energy.total_wh == pytest.approx(12.0)


def test_plug_in_with_stale_small_retained_value_then_zero_adds_nothing() -> None:
    """First connected sample still showing an old 30 Wh, then 0: no spurious addition."""
    feeder = Feeder()
    feeder.feed(30.0, connected=False)
    feeder.feed(30.0, session_s=1)  # stale: the reset shows one sample late
    feeder.feed(0.0)
    for step in range(1, 6):
        feeder.feed(5.0 * step)
    assert feeder.energy.total_wh == pytest.approx(25.0)


def test_reboot_mid_session_starts_a_new_base() -> None:
    """Uptime going backwards while connected: the reset to 0 is a new base, not a drop."""
    feeder = Feeder()
    feeder.feed(5_000.0, session_s=3_000)
    feeder.feed(5_012.0)
    assert feeder.feed(0.0, uptime_s=25, session_s=20) == 0.0
    assert feeder.feed(8.0) == pytest.approx(8.0)
    assert feeder.feed(20.0) == pytest.approx(12.0)
    assert feeder.energy.total_wh == pytest.approx(12.0 + 20.0)
    assert feeder.energy.rejected == 0


def test_reboot_counts_energy_already_made_in_the_new_boot() -> None:
    """After a reboot the first value counts in full when the session clock allows it."""
    feeder = Feeder()
    feeder.feed(5_000.0, session_s=3_000)
    assert feeder.feed(4.0, uptime_s=30, session_s=10) == pytest.approx(4.0)


def test_bridge_restart_continues_without_double_counting() -> None:
    """to_json → JSON text → from_json continues from the saved base."""
    feeder = Feeder()
    feeder.feed(0.0, session_s=10)
    feeder.feed(20.0)
    feeder.feed(40.0)
    saved = json.loads(json.dumps(feeder.energy.to_json()))
    restored = Feeder(SessionEnergy.from_json(saved), t=feeder.t)
    restored.uptime, restored.session_s = feeder.uptime, feeder.session_s
    assert restored.energy.total_wh == pytest.approx(40.0)
    assert restored.feed(40.0, dt=30.0) == 0.0  # the same value read again after the restart
    assert restored.feed(52.0) == pytest.approx(12.0)
    assert restored.energy.total_wh == pytest.approx(52.0)


def test_bridge_restart_across_a_plug_in_counts_the_new_session_once() -> None:
    """Saved while unplugged, restarted 10 min after a plug-in: the new session counts once."""
    feeder = Feeder()
    feeder.feed(0.0, session_s=10)
    feeder.feed(40.0)
    feeder.feed(40.0, connected=False)
    restored = Feeder(SessionEnergy.from_json(feeder.energy.to_json()), t=feeder.t)
    restored.uptime = feeder.uptime
    assert restored.feed(900.0, dt=700.0, session_s=600) == pytest.approx(900.0)
    assert restored.feed(912.0) == pytest.approx(12.0)
    assert restored.energy.total_wh == pytest.approx(40.0 + 912.0)


def test_drop_without_evidence_is_ignored() -> None:
    """A lower value with no plug-in or reboot behind it is a glitch: ignored, counted."""
    feeder = Feeder()
    feeder.feed(100.0, session_s=500)
    assert feeder.feed(40.0) == 0.0
    assert feeder.energy.rejected == 1
    assert feeder.feed(110.0) == pytest.approx(10.0)
    assert feeder.energy.total_wh == pytest.approx(10.0)


def test_implausible_spike_is_ignored() -> None:
    """A jump far above what the unit can deliver is ignored; the next value counts normally."""
    feeder = Feeder()
    feeder.feed(100.0, session_s=500)
    assert feeder.feed(1.0e6) == 0.0
    assert feeder.feed(112.0) == pytest.approx(12.0)
    assert feeder.energy.total_wh == pytest.approx(12.0)
    assert feeder.energy.rejected == 1


def test_glitch_after_a_poll_gap_does_not_freeze_the_total() -> None:
    """Unit silent 60 s while charging at 9.6 kW, first answer a glitch: later samples count."""
    feeder = Feeder()
    feeder.feed(1_000.0, session_s=500)
    feeder.feed(9.9e6, dt=60.0)  # the first answer after 60 s of timeouts is a glitch
    for step in range(1, 11):  # then every 5 s at 9.6 kW
        feeder.feed(1_000.0 + 9_600 * (60 + 5 * step) / 3600)
    assert feeder.energy.total_wh == pytest.approx(9_600 * 110 / 3600)


def test_connected_with_session_clock_at_zero_adds_nothing() -> None:
    """Plugged in, session_s 0 and 30 Wh retained (state 8), polled every 6 s: nothing added."""
    energy = SessionEnergy()
    sample = Vitals(
        contactor_closed=False,
        vehicle_connected=True,
        session_s=0,
        session_energy_wh=30.0,
        uptime_s=5_000,
        evse_state=8,
    )
    for step in range(5):
        energy.update(sample, 6.0 * step, SPLIT_MAX_W)
    assert energy.total_wh == 0.0


def test_missing_or_invalid_session_energy_is_skipped() -> None:
    """None, NaN, infinite and negative session values add nothing and change no base."""
    feeder = Feeder()
    feeder.feed(10.0, session_s=50)
    for bad in (None, math.nan, math.inf, -5.0):
        assert feeder.feed(bad) == 0.0
    assert feeder.feed(20.0) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "data",
    [
        None,
        "garbage",
        42,
        [1, 2],
        {},
        {"total_wh": "lots"},
        {"total_wh": -5.0},
        {"total_wh": math.nan},
        {"total_wh": math.inf},
        {"total_wh": True},
        {"total_wh": 10**400},  # too large for a float: math.isfinite raised OverflowError
        {"total_wh": 10**400, "last_session_wh": 10**400, "last_time": 10**400},
    ],
)
def test_restore_from_garbage_gives_fresh_accumulator(data: Any) -> None:
    """Unusable saved state gives a zero total and no base."""
    energy = SessionEnergy.from_json(data)
    assert energy.total_wh == 0.0
    assert energy.last_session_wh is None
    assert energy.last_time is None
    assert energy.update(_v(500.0), 10.0, SPLIT_MAX_W) == 0.0  # the first value is only a base
    assert energy.total_wh == 0.0


def test_restore_keeps_total_when_base_is_garbage() -> None:
    """A valid total with an unusable base keeps the total and takes the next value as base."""
    energy = SessionEnergy.from_json({"total_wh": 123.0, "last_session_wh": "x", "last_time": 5})
    assert energy.total_wh == 123.0
    assert energy.last_session_wh is None
    assert energy.update(_v(500.0), 10.0, SPLIT_MAX_W) == 0.0
    assert energy.total_wh == 123.0


# --- LifetimeGuard examples ---------------------------------------------------------------------

OPEN = Vitals(contactor_closed=False, vehicle_connected=False)
CLOSED = Vitals(contactor_closed=True, vehicle_connected=True)


def test_lifetime_first_value_is_the_base() -> None:
    """The first reading is accepted as it is."""
    guard = LifetimeGuard()
    assert guard.update(1_234_567.0, 0.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_234_567.0
    assert guard.rejected == 0


def test_lifetime_none_and_nan_are_skipped() -> None:
    """Missing and NaN readings neither count nor reject."""
    guard = LifetimeGuard()
    assert guard.update(None, 0.0, SPLIT_MAX_W)
    assert guard.guarded_wh is None
    guard.update(1_000.0, 1.0, SPLIT_MAX_W)
    assert guard.update(math.nan, 2.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_000.0
    assert guard.rejected == 0


def test_lifetime_increase_while_charging_is_accepted() -> None:
    """A plausible increase after the contactor closed is added."""
    guard = LifetimeGuard()
    guard.update(1_000_000.0, 0.0, SPLIT_MAX_W)
    guard.saw_vitals(CLOSED)
    assert guard.update(1_009_600.0, 3_600.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_009_600.0


def test_lifetime_increase_with_contactor_open_is_rejected_and_never_absorbed() -> None:
    """A phantom jump while idle is rejected; later real increases are added without it."""
    guard = LifetimeGuard()
    guard.update(1_000_000.0, 0.0, SPLIT_MAX_W)
    guard.saw_vitals(OPEN)
    assert not guard.update(1_000_500.0, 5_400.0, SPLIT_MAX_W)  # phantom +500 Wh, idle
    assert guard.guarded_wh == 1_000_000.0
    guard.saw_vitals(CLOSED)
    assert guard.update(1_010_100.0, 9_000.0, SPLIT_MAX_W)  # a real 9.6 kWh charge
    assert guard.guarded_wh == 1_009_600.0
    assert guard.rejected == 1


def test_lifetime_small_idle_increase_within_tolerance_is_accepted() -> None:
    """Rounding-size steps while idle (≤ the tolerance) pass."""
    guard = LifetimeGuard()
    guard.update(1_000.0, 0.0, SPLIT_MAX_W)
    assert guard.update(1_000.0 + ENERGY_TOLERANCE_WH, 60.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_000.0 + ENERGY_TOLERANCE_WH


def test_lifetime_decrease_is_rejected() -> None:
    """A lower reading is rejected and the guarded value stays."""
    guard = LifetimeGuard()
    guard.update(1_000_000.0, 0.0, SPLIT_MAX_W)
    guard.saw_vitals(CLOSED)
    assert not guard.update(999_000.0, 60.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_000_000.0
    assert guard.rejected == 1


def test_lifetime_increase_above_rated_power_is_rejected() -> None:
    """More than rated current × voltage × phases × elapsed (with margin) is rejected."""
    guard = LifetimeGuard()
    guard.update(1_000_000.0, 0.0, SPLIT_MAX_W)
    guard.saw_vitals(CLOSED)
    too_much = plausible_increase_wh(3_600.0, SPLIT_MAX_W) + 1.0
    assert not guard.update(1_000_000.0 + too_much, 3_600.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_000_000.0


def test_lifetime_bulk_update_after_a_session_is_accepted() -> None:
    """Lifetime jumps once after the session; accepted as the contactor closed meanwhile.

    docs/device-api.md, 'Phantom energy jumps'.
    """
    guard = LifetimeGuard()
    guard.update(2_000_000.0, 0.0, SPLIT_MAX_W)
    t = 0.0
    for _ in range(120):  # 2 h charging at 9.6 kW, lifetime read every 60 s and unchanged
        t += 60.0
        guard.saw_vitals(CLOSED)
        assert guard.update(2_000_000.0, t, SPLIT_MAX_W)
    for _ in range(10):  # unplugged, contactor open
        t += 60.0
        guard.saw_vitals(OPEN)
        guard.update(2_000_000.0, t, SPLIT_MAX_W)
    assert guard.update(2_019_200.0, t + 60.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 2_019_200.0
    assert guard.rejected == 0


def test_lifetime_spike_up_then_back_never_moves_the_value() -> None:
    """A huge phantom spike followed by the old value leaves the guarded value alone."""
    guard = LifetimeGuard()
    guard.update(1_000_000.0, 0.0, SPLIT_MAX_W)
    guard.saw_vitals(CLOSED)
    assert not guard.update(4_000_000.0, 60.0, SPLIT_MAX_W)
    guard.update(1_000_000.0, 120.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_000_000.0
    assert guard.update(1_001_000.0, 3_600.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_001_000.0


def test_lifetime_dip_then_back_never_moves_the_value() -> None:
    """A reading dipping below and coming back to the same value adds nothing."""
    guard = LifetimeGuard()
    guard.update(1_000.0, 0.0, SPLIT_MAX_W)
    guard.saw_vitals(OPEN)
    guard.update(990.0, 60.0, SPLIT_MAX_W)
    guard.update(1_000.0, 120.0, SPLIT_MAX_W)
    assert guard.guarded_wh == 1_000.0


# --- EventTracker -------------------------------------------------------------------------------


def _ev(
    *,
    connected: bool,
    closed: bool = False,
    session_s: int = 0,
    energy: float = 0.0,
    uptime_s: int = 10_000,
    alerts: list[int | str] | None = None,
) -> Vitals:
    return Vitals(
        vehicle_connected=connected,
        contactor_closed=closed,
        session_s=session_s,
        session_energy_wh=energy,
        uptime_s=uptime_s,
        current_alerts=alerts if alerts is not None else [],
    )


def _types(events: list[Event]) -> list[str]:
    return [event.type for event in events]


def _ended(events: list[Event]) -> dict[str, Any]:
    return next(event.details for event in events if event.type == "session_ended")


def test_events_for_a_whole_session() -> None:
    """Plug-in, charge start/stop, unplug and session_ended with energy, duration and peak."""
    tracker = EventTracker()
    assert tracker.vitals(_ev(connected=False, energy=55.6), 0.0) == []
    assert _types(tracker.vitals(_ev(connected=True, session_s=1, uptime_s=10_002), 0.0)) == [
        "plugged_in"
    ]
    started = tracker.vitals(_ev(connected=True, closed=True, session_s=3, uptime_s=10_004), 5.0)
    assert _types(started) == ["charging_started"]
    tracker.vitals(
        _ev(connected=True, closed=True, session_s=5, energy=5.0, uptime_s=10_006), 9_600.0
    )
    tracker.vitals(
        _ev(connected=True, closed=True, session_s=7, energy=10.0, uptime_s=10_008), 9_500.0
    )
    stopped = tracker.vitals(_ev(connected=True, session_s=9, energy=11.0, uptime_s=10_010), 0.0)
    assert _types(stopped) == ["charging_stopped"]
    ended = tracker.vitals(_ev(connected=False, energy=11.0, uptime_s=10_012), 0.0)
    assert _types(ended) == ["unplugged", "session_ended"]
    assert _ended(ended) == {"energy_wh": 11.0, "duration_s": 9, "peak_power_w": 9_600.0}


def test_session_ended_peak_power_is_per_session() -> None:
    """The peak is reset at plug-in: a previous session's peak does not leak into the next."""
    tracker = EventTracker()
    tracker.vitals(_ev(connected=True, closed=True, session_s=5, energy=5.0), 11_000.0)
    tracker.vitals(_ev(connected=False, energy=5.0), 0.0)
    tracker.vitals(_ev(connected=True, session_s=1), 0.0)
    tracker.vitals(_ev(connected=True, closed=True, session_s=3, energy=1.0), 3_700.0)
    ended = tracker.vitals(_ev(connected=False, energy=1.0), 0.0)
    assert _types(ended) == ["charging_stopped", "unplugged", "session_ended"]
    assert _ended(ended)["peak_power_w"] == 3_700.0


def test_session_ended_energy_falls_back_to_previous_sample() -> None:
    """When the unplug sample already reads 0 the last connected value is reported."""
    tracker = EventTracker()
    tracker.vitals(_ev(connected=True, session_s=60, energy=42.0), 0.0)
    ended = tracker.vitals(_ev(connected=False, energy=0.0), 0.0)
    assert _ended(ended)["energy_wh"] == 42.0
    assert _ended(ended)["duration_s"] == 60


def test_rebooted_when_uptime_goes_backwards() -> None:
    """uptime_s lower than the previous sample's gives a rebooted event with the new uptime."""
    tracker = EventTracker()
    tracker.vitals(_ev(connected=False, uptime_s=100_000), 0.0)
    assert tracker.vitals(_ev(connected=False, uptime_s=100_005), 0.0) == []
    events = tracker.vitals(_ev(connected=False, uptime_s=27), 0.0)
    assert _types(events) == ["rebooted"]
    assert events[0].details == {"uptime_s": 27}


def test_first_sample_gives_no_events() -> None:
    """Nothing is known before the first sample, so it produces no events."""
    tracker = EventTracker()
    assert tracker.vitals(_ev(connected=True, closed=True, uptime_s=5, alerts=[40]), 1.0) == []


def test_alert_raised_and_cleared() -> None:
    """New alert IDs are raised with their name, vanished ones cleared."""
    tracker = EventTracker()
    tracker.vitals(_ev(connected=True), 0.0)
    raised = tracker.vitals(_ev(connected=True, alerts=[40]), 0.0)
    assert [(e.type, e.details) for e in raised] == [
        ("alert_raised", {"alert": 40, "name": "handle_temperature_derate"})
    ]
    both = tracker.vitals(_ev(connected=True, alerts=[27]), 0.0)
    assert [(e.type, e.details) for e in both] == [
        ("alert_raised", {"alert": 27, "name": "alert_27"}),
        ("alert_cleared", {"alert": 40, "name": "handle_temperature_derate"}),
    ]
    assert tracker.vitals(_ev(connected=True, alerts=[27]), 0.0) == []


def test_firmware_changed() -> None:
    """A different firmware version than the last seen gives one firmware_changed event."""
    tracker = EventTracker()
    assert tracker.version("24.44.3+gabc") == []
    assert tracker.version("24.44.3+gabc") == []
    assert tracker.version(None) == []
    events = tracker.version("25.34.1+ge48cc9be91ebc7")
    assert [(e.type, e.details) for e in events] == [
        ("firmware_changed", {"from": "24.44.3+gabc", "to": "25.34.1+ge48cc9be91ebc7"})
    ]
    assert tracker.version("25.34.1+ge48cc9be91ebc7") == []


# --- Hypothesis: SessionEnergy ------------------------------------------------------------------

_ENERGY_VALUES = st.one_of(
    st.floats(0, 200),
    st.floats(0, 1e9),
    st.just(0.0),
    st.none(),
    st.sampled_from([math.nan, math.inf, -1.0]),
)


_STEP = st.tuples(
    st.floats(0.01, 7_200),  # seconds since the previous sample
    st.sampled_from(["runs", "runs", "reboot", "missing"]),  # uptime_s
    st.none() | st.booleans(),  # vehicle_connected
    st.booleans(),  # contactor_closed
    st.none() | st.integers(0, 10**6),  # session_s
    _ENERGY_VALUES,
)


@st.composite
def _arbitrary_samples(draw: st.DrawFn) -> list[tuple[float, Vitals]]:
    t = draw(st.floats(0, 2e9))
    uptime = draw(st.integers(0, 10**7))
    samples = []
    for dt, clock, connected, closed, session_s, energy in draw(
        st.lists(_STEP, min_size=1, max_size=25)
    ):
        t += dt
        uptime = 5 if clock == "reboot" else uptime + round(dt)
        sample = Vitals.model_construct(
            vehicle_connected=connected,
            contactor_closed=closed,
            session_s=session_s,
            uptime_s=None if clock == "missing" else uptime,
            session_energy_wh=energy,
        )
        samples.append((t, sample))
    return samples


@settings(max_examples=200, deadline=None)
@given(_arbitrary_samples(), st.floats(1_000, 40_000))
def test_session_total_never_decreases_and_is_the_sum_of_increases(
    samples: list[tuple[float, Vitals]], max_power: float
) -> None:
    """For any samples, the total never drops and equals the sum of what update returned."""
    energy = SessionEnergy()
    returned = 0.0
    previous = 0.0
    for now, sample in samples:
        added = energy.update(sample, now, max_power)
        assert math.isfinite(added)
        assert added >= 0.0
        returned += added
        assert energy.total_wh >= previous
        previous = energy.total_wh
    assert energy.total_wh == returned


@settings(max_examples=100, deadline=None)
@given(_arbitrary_samples(), st.floats(1_000, 40_000), st.data())
def test_session_restart_anywhere_gives_the_same_total(
    samples: list[tuple[float, Vitals]], max_power: float, data: st.DataObject
) -> None:
    """Saving through JSON and restoring at any point changes nothing in the final total."""
    cut = data.draw(st.integers(0, len(samples)))
    straight = SessionEnergy()
    for now, sample in samples:
        straight.update(sample, now, max_power)
    restarted = SessionEnergy()
    for now, sample in samples[:cut]:
        restarted.update(sample, now, max_power)
    restarted = SessionEnergy.from_json(json.loads(json.dumps(restarted.to_json())))
    for now, sample in samples[cut:]:
        restarted.update(sample, now, max_power)
    assert restarted.total_wh == straight.total_wh


@dataclass(frozen=True)
class ChargeRun:
    """A plausible charging sequence and one glitch sample to put into it."""

    max_power: float
    samples: tuple[tuple[float, Vitals], ...]
    glitch_at: int  # the glitch goes before samples[glitch_at] (or replaces it)
    glitch: tuple[float, Vitals]


def _charging_sample(t: float, energy: float) -> Vitals:
    return Vitals(
        contactor_closed=True,
        vehicle_connected=True,
        session_s=100 + round(t),
        uptime_s=1_000_000 + round(t),
        session_energy_wh=energy,
    )


@st.composite
def _charge_run(
    draw: st.DrawFn,
    *,
    regimes: tuple[tuple[float, float], ...],
    dt_range: tuple[float, float],
    insert: bool,
) -> ChargeRun:
    """Charging at up to the regime's real power; regimes are (max power, real power cap)."""
    max_power, power_cap = draw(st.sampled_from(regimes))
    t = 0.0
    energy = draw(st.floats(1.0, 5_000.0))
    samples = [(t, _charging_sample(t, energy))]
    for _ in range(draw(st.integers(2, 25))):
        dt = draw(st.floats(*dt_range))
        t += dt
        energy += draw(st.floats(0.0, 1.0)) * power_cap * dt / 3600
        samples.append((t, _charging_sample(t, energy)))
    if insert:
        index = draw(st.integers(1, len(samples)))
        before_t, before = samples[index - 1]
        after_t = samples[index][0] if index < len(samples) else before_t + dt_range[1]
        at = before_t + draw(st.floats(0.01, 0.99)) * (after_t - before_t)
    else:  # replace one interior sample: a poll that returned a bad value
        index = draw(st.integers(1, len(samples) - 2))
        before_t, before = samples[index - 1]
        at = samples[index][0]
    base = before.session_energy_wh or 0.0
    if draw(st.booleans()):
        bound = plausible_increase_wh(at - before_t, max_power)
        value = base + bound + draw(st.floats(0.01, 1e9))
    else:
        value = base * draw(st.floats(0.0, 0.999))
    glitch = (at, _charging_sample(at, value))
    return ChargeRun(max_power, tuple(samples), index, glitch)


def _session_total(max_power: float, samples: list[tuple[float, Vitals]]) -> float:
    energy = SessionEnergy()
    for now, sample in samples:
        energy.update(sample, now, max_power)
    return energy.total_wh


NA_48A = (max_power_w("split_phase", 240.0, 48.0), 48.0 * 240.0)
EU_3X32A = (max_power_w("three_phase", 230.0, 48.0), 3 * 32.0 * 230.0)


@settings(max_examples=200, deadline=None)
@given(_charge_run(regimes=(NA_48A, EU_3X32A), dt_range=(4.0, 6.0), insert=False))
def test_session_total_ignores_one_glitch_at_default_polling(run: ChargeRun) -> None:
    """Polled every ~5 s, one poll answering a spike or a drop leaves the final total unchanged."""
    clean = list(run.samples)
    glitched = list(run.samples)
    glitched[run.glitch_at] = run.glitch
    assert _session_total(run.max_power, glitched) == pytest.approx(
        _session_total(run.max_power, clean)
    )


_GAP_GLITCH_EXAMPLE = ChargeRun(
    max_power=NA_48A[0],
    samples=(
        (0.0, _charging_sample(0.0, 1_000.0)),
        (60.0, _charging_sample(60.0, 1_160.0)),
        (90.0, _charging_sample(90.0, 1_240.0)),
        (120.0, _charging_sample(120.0, 1_320.0)),
    ),
    glitch_at=2,
    glitch=(85.0, _charging_sample(85.0, 1_000_000.0)),
)


@settings(max_examples=200, deadline=None, phases=(Phase.explicit, Phase.generate))
@example(_GAP_GLITCH_EXAMPLE)
@given(
    _charge_run(
        regimes=(NA_48A, EU_3X32A, (36_000.0, 36_000.0)), dt_range=(1.0, 120.0), insert=True
    )
)
def test_session_total_ignores_one_inserted_glitch_at_any_interval(run: ChargeRun) -> None:
    """A spike above the bound or a drop inserted anywhere after the first sample: no change."""
    clean = list(run.samples)
    glitched = [*clean[: run.glitch_at], run.glitch, *clean[run.glitch_at :]]
    assert _session_total(run.max_power, glitched) == pytest.approx(
        _session_total(run.max_power, clean)
    )


# --- Hypothesis: LifetimeGuard ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.01, 86_400),
            st.booleans(),
            st.none() | st.floats(allow_infinity=True, allow_nan=True),
        ),
        max_size=40,
    ),
    st.floats(1_000, 40_000),
)
def test_lifetime_guarded_never_decreases(
    readings: list[tuple[float, bool, float | None]], max_power: float
) -> None:
    """For any readings and contactor states the guarded value never goes down."""
    guard = LifetimeGuard()
    t = 0.0
    previous: float | None = None
    for dt, closed, raw in readings:
        t += dt
        guard.saw_vitals(Vitals(contactor_closed=closed))
        guard.update(raw, t, max_power)
        if previous is not None:
            assert guard.guarded_wh is not None
            assert guard.guarded_wh >= previous
        previous = guard.guarded_wh


@st.composite
def _lifetime_run(
    draw: st.DrawFn,
) -> tuple[float, list[tuple[float, bool, float]], int, float]:
    """Readings (time, contactor closed before it, raw) with real increases only when charging."""
    max_power = draw(st.sampled_from([NA_48A[0], EU_3X32A[0]]))
    t, raw = 0.0, draw(st.floats(0, 1e8))
    readings = [(t, False, raw)]
    for _ in range(draw(st.integers(1, 20))):
        dt = draw(st.floats(10, 7_200))
        charged = draw(st.booleans())
        t += dt
        if charged:
            raw += draw(st.floats(0, 1)) * max_power * dt / 3600
        readings.append((t, charged, raw))
    index = draw(st.integers(1, len(readings) - 1))
    spike_size = draw(st.floats(0.01, 1e10))
    return max_power, readings, index, spike_size


@settings(max_examples=200, deadline=None)
@given(_lifetime_run())
def test_lifetime_single_spike_up_and_back_never_moves_it(
    run: tuple[float, list[tuple[float, bool, float]], int, float],
) -> None:
    """A spike above the bound, then the value before it again, leaves the end value unchanged."""
    max_power, readings, index, spike_size = run

    def final(spiked: bool) -> float | None:
        guard = LifetimeGuard()
        for position, (now, charged, raw) in enumerate(readings):
            if spiked and position == index:
                before_t, _, before = readings[index - 1]
                spike = before + plausible_increase_wh(now, max_power) + spike_size
                guard.update(spike, before_t + 1.0, max_power)
                guard.update(before, before_t + 2.0, max_power)
            guard.saw_vitals(Vitals(contactor_closed=charged))
            guard.update(raw, now, max_power)
        return guard.guarded_wh

    assert final(spiked=True) == pytest.approx(final(spiked=False))


def test_lifetime_persistent_phantom_jump_is_excluded_for_good() -> None:
    """A jump while idle that stays is never added; later real charging still counts."""
    guard = LifetimeGuard()
    guard.update(1_000.0, 0.0, SPLIT_MAX_W)
    guard.saw_vitals(OPEN)
    assert not guard.update(6_000.0, 60.0, SPLIT_MAX_W)  # phantom +5 kWh while idle
    assert guard.update(6_000.0, 120.0, SPLIT_MAX_W)  # it stays: adopted as the new reference
    guard.saw_vitals(CLOSED)
    assert guard.update(6_500.0, 3_600.0, SPLIT_MAX_W)  # a real charge afterwards
    assert guard.guarded_wh == 1_500.0
    assert guard.rejected == 1


@pytest.mark.parametrize("uptime_s", [2**64 - 1, 10**20, 7 * 10**10, 10**400, -5])
def test_last_boot_of_an_absurd_uptime_is_unknown(uptime_s: int) -> None:
    """An uptime over a century or negative gives no boot time instead of raising."""
    assert last_boot(uptime_s, 1_766_523_240.0) is None


@pytest.mark.parametrize("now", [1e20, -1e20, 9e18])
def test_last_boot_at_a_time_outside_the_calendar_is_unknown(now: float) -> None:
    """A wall clock far outside what datetime can show gives no boot time instead of raising."""
    assert last_boot(60, now) is None


def test_last_boot_just_under_a_century_is_a_date() -> None:
    """The bound is a century: a long but possible uptime still gives a boot time."""
    assert last_boot(99 * 365 * 86_400, 4_000_000_000.0) is not None


@pytest.mark.parametrize("session_s", [2**64 - 1, 10**400, -5])
def test_session_energy_survives_an_absurd_session_clock(session_s: int) -> None:
    """A session clock too large for a float (unvalidated model) counts nothing, never raises."""
    energy = SessionEnergy()
    energy.update(_v(100.0, session_s=100), 1000.0, SPLIT_MAX_W)
    replug = Vitals.model_construct(
        contactor_closed=True,
        vehicle_connected=True,
        session_s=session_s,
        session_energy_wh=5.0,
        uptime_s=10,  # below the last one: a reboot, so the session clock is consulted
    )
    added = energy.update(replug, 1005.0, SPLIT_MAX_W)
    assert added in {0.0, 5.0}
    assert energy.total_wh == added
