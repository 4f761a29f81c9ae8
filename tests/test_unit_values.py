"""UnitDerivation.feed on hand-written bodies of each endpoint."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bridge.core.derived import SessionEnergy
from bridge.core.models import Endpoint, ParsedBody, Vitals, parse_endpoint
from bridge.core.unit_values import TEMPERATURE_FIELDS, UnitDerivation
from bridge.core.vocabulary import PhaseMode

NOW = 1_766_520_000.0  # 2025-12-23T20:00:00Z

# Invented bodies in the documented layouts (docs/device-api.md, 'Vitals fields' to 'Wi-Fi status
# fields'); no real unit's values.
CHARGING: dict[str, Any] = {
    "contactor_closed": True,
    "vehicle_connected": True,
    "session_s": 600,
    "grid_v": 240.0,
    "grid_hz": 60.0,
    "vehicle_current_a": 40.0,
    "currentA_a": 0.0,
    "currentB_a": 40.0,
    "currentC_a": 0.0,
    "currentN_a": 40.0,
    "voltageA_v": 119.0,
    "voltageB_v": 247.0,
    "voltageC_v": 119.0,
    "relay_coil_v": 5.7,
    "pcba_temp_c": 41.5,
    "handle_temp_c": 255.0,
    "mcu_temp_c": 38.0,
    "uptime_s": 3_600,
    "input_thermopile_uv": -2_100,
    "prox_v": 1.5,
    "pilot_high_v": 4.4,
    "pilot_low_v": -0.0,
    "session_energy_wh": 1_234.0,
    "config_status": 5,
    "evse_state": 11,
    "current_alerts": [40],
    "evse_not_ready_reasons": [1],
}
VITALS_KEYS = {
    "power_w",
    "current_a",
    "phase_mode",
    "status",
    "evse_state_name",
    "charging",
    "plugged_in",
    "energy_wh",
    "session_energy_kwh",
    "session_duration_s",
    "alerts",
    "last_boot",
    "role",
    *TEMPERATURE_FIELDS,
}
LIFETIME: dict[str, Any] = {
    "contactor_cycles": 120,
    "contactor_cycles_loaded": 3,
    "alert_count": 10,
    "thermal_foldbacks": 0,
    "avg_startup_temp": 22.5,
    "charge_starts": 120,
    "energy_wh": 1_500_000,
    "connector_cycles": 40,
    "uptime_s": 9_000_000,
    "charging_time_s": 400_000,
}


def _parsed(endpoint: Endpoint, body: dict[str, Any]) -> ParsedBody:
    return parse_endpoint(endpoint, json.dumps(body).encode())


def _vitals(**changes: Any) -> ParsedBody:
    return _parsed("vitals", {**CHARGING, **changes})


def test_vitals_values_have_the_documented_keys() -> None:
    """A vitals body gives exactly the derived vitals values, with the expected contents."""
    derived = UnitDerivation().feed(_vitals(), NOW)
    assert set(derived.values) == VITALS_KEYS
    assert derived.values == {
        "power_w": 9_600.0,
        "current_a": 40.0,
        "phase_mode": "split_phase",
        "status": "charging",
        "evse_state_name": "charging",
        "charging": True,
        "plugged_in": True,
        "energy_wh": 0.0,
        "session_energy_kwh": 1.234,
        "session_duration_s": 600,
        "alerts": ["handle_temperature_derate"],
        "last_boot": "2025-12-23T19:00:00Z",
        "role": "standalone",
        "pcba_temp_c": 41.5,
        "handle_temp_c": None,
        "mcu_temp_c": 38.0,
    }
    assert derived.events == []


def test_vitals_energy_total_and_events_over_two_samples() -> None:
    """The second sample adds the session increase and reports what changed."""
    unit = UnitDerivation()
    unit.feed(_vitals(), NOW)
    derived = unit.feed(
        _vitals(
            session_s=605,
            uptime_s=3_605,
            session_energy_wh=1_247.0,
            contactor_closed=False,
            current_alerts=[],
        ),
        NOW + 5,
    )
    assert derived.values["energy_wh"] == 13.0
    assert derived.values["power_w"] == 0.0
    assert derived.values["phase_mode"] == "split_phase"
    assert [event.type for event in derived.events] == ["charging_stopped", "alert_cleared"]


def test_empty_vitals_body_gives_empty_values() -> None:
    """With every key missing: the same keys, no power, and None or empty values."""
    derived = UnitDerivation().feed(_parsed("vitals", {}), NOW)
    assert set(derived.values) == VITALS_KEYS
    assert derived.values["power_w"] == 0.0
    assert derived.values["current_a"] == 0.0
    for key in ("status", "evse_state_name", "session_energy_kwh", "last_boot", "plugged_in"):
        assert derived.values[key] is None
    assert derived.values["alerts"] == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("three_phase", 247.0 * 40.0), ("split_phase", 240.0 * 40.0), ("single_phase", 9_600.0)],
)
def test_configured_phase_mode_chooses_the_formula(mode: PhaseMode, expected: float) -> None:
    """A configured phase mode is used and published instead of the detected one."""
    derived = UnitDerivation(phase_mode=mode).feed(_vitals(), NOW)
    assert derived.values["phase_mode"] == mode
    assert derived.values["power_w"] == pytest.approx(expected)


def test_restored_energy_continues() -> None:
    """A SessionEnergy passed in (restored state) continues its total."""
    energy = SessionEnergy.from_json(
        {
            "total_wh": 5_000.0,
            "last_session_wh": 1_230.0,
            "last_uptime_s": 3_590,
            "last_session_s": 590,
            "last_connected": True,
            "last_time": NOW - 10,
        }
    )
    derived = UnitDerivation(energy=energy).feed(_vitals(), NOW)
    assert derived.values["energy_wh"] == 5_004.0


def test_lifetime_values() -> None:
    """Lifetime gives the guarded energy and the rejection count."""
    derived = UnitDerivation().feed(_parsed("lifetime", LIFETIME), NOW)
    assert derived.values == {"lifetime_energy_wh": 1_500_000, "rejected_energy_samples": 0}
    assert derived.events == []


def test_lifetime_without_energy_gives_only_the_count() -> None:
    """No energy_wh yet: only rejected_energy_samples is published."""
    derived = UnitDerivation().feed(_parsed("lifetime", {"charge_starts": 3}), NOW)
    assert derived.values == {"rejected_energy_samples": 0}


def test_lifetime_phantom_jump_while_idle_is_rejected() -> None:
    """A jump with the contactor open in every vitals sample since is rejected and counted."""
    unit = UnitDerivation()
    unit.feed(_parsed("lifetime", LIFETIME), NOW)
    unit.feed(_vitals(contactor_closed=False, vehicle_connected=False), NOW + 30)
    derived = unit.feed(_parsed("lifetime", {**LIFETIME, "energy_wh": 1_500_900}), NOW + 60)
    assert derived.values == {"lifetime_energy_wh": 1_500_000, "rejected_energy_samples": 1}


def test_lifetime_increase_after_charging_is_accepted() -> None:
    """Vitals with the contactor closed let the next lifetime increase through."""
    unit = UnitDerivation()
    unit.feed(_parsed("lifetime", LIFETIME), NOW)
    unit.feed(_vitals(), NOW + 30)
    derived = unit.feed(_parsed("lifetime", {**LIFETIME, "energy_wh": 1_500_150}), NOW + 60)
    assert derived.values == {"lifetime_energy_wh": 1_500_150, "rejected_energy_samples": 0}


@pytest.mark.parametrize(
    ("ssid", "expected"),
    [("SG9tZU5ldA==", "HomeNet"), ("not base64!", "not base64!"), (None, None)],
)
def test_wifi_status_gives_decoded_ssid(ssid: str | None, expected: str | None) -> None:
    """wifi_status publishes the SSID decoded from base64 (raw when it is not base64)."""
    body = {"wifi_ssid": ssid, "wifi_signal_strength": 60, "wifi_connected": True}
    derived = UnitDerivation().feed(_parsed("wifi_status", body), NOW)
    assert derived.values == {"wifi_ssid": expected, "role": "standalone"}
    assert derived.events == []


def test_version_gives_firmware_changed_event() -> None:
    """The first version is only remembered; a different one later gives firmware_changed."""
    unit = UnitDerivation()
    body = {"firmware_version": "24.44.3+gabcdef", "part_number": "1734412-02-D"}
    first = unit.feed(_parsed("version", body), NOW)
    assert first.values == {}
    assert first.events == []
    assert unit.feed(_parsed("version", body), NOW + 3_600).events == []
    upgraded = unit.feed(
        _parsed("version", {**body, "firmware_version": "25.34.1+ge48cc9be91ebc7"}), NOW + 7_200
    )
    assert upgraded.values == {}
    assert [(event.type, event.details) for event in upgraded.events] == [
        ("firmware_changed", {"from": "24.44.3+gabcdef", "to": "25.34.1+ge48cc9be91ebc7"})
    ]


def test_phase_mode_is_not_claimed_before_a_charge_in_auto_mode() -> None:
    """Auto mode publishes no phase mode until the voltages of a charge have shown it."""
    derivation = UnitDerivation()
    idle = Vitals(contactor_closed=False, vehicle_connected=False, grid_v=240.0)
    assert derivation.vitals(idle, 0.0).values["phase_mode"] is None
    charging = Vitals(
        contactor_closed=True,
        vehicle_connected=True,
        grid_v=240.0,
        voltageA_v=120.0,
        voltageB_v=240.0,
        voltageC_v=120.0,
        vehicle_current_a=32.0,
    )
    assert derivation.vitals(charging, 5.0).values["phase_mode"] == "split_phase"
    assert derivation.vitals(idle, 10.0).values["phase_mode"] == "split_phase"


def test_absurd_vitals_leave_derived_values_unknown_not_raising() -> None:
    """Uptime 2**64-1, grid 1e308, energy 1e308: unknown to derivation, the total unchanged."""
    derivation = UnitDerivation()
    derivation.feed(_vitals(session_energy_wh=1_000.0), NOW)
    before = derivation.energy.total_wh
    absurd = _vitals(uptime_s=2**64 - 1, grid_v=1e308, session_energy_wh=1e308, session_s=10**300)
    derived = derivation.feed(absurd, NOW + 5)
    assert derived.values["last_boot"] is None
    assert derived.values["session_energy_kwh"] is None
    assert derived.values["session_duration_s"] is None
    assert derivation.energy.total_wh == before
    assert math.isfinite(derived.values["power_w"])
    assert derivation.max_power() < 1e6


@pytest.mark.parametrize("uptime_s", [2**64 - 1, 1e20, 7e10, -5])
def test_absurd_uptime_gives_no_last_boot(uptime_s: float) -> None:
    """The known crash: every one of these raised in last_boot."""
    assert UnitDerivation().feed(_vitals(uptime_s=uptime_s), NOW).values["last_boot"] is None


def test_absurd_lifetime_energy_is_not_taken_as_the_guarded_total() -> None:
    """A lifetime energy_wh of 1e308 leaves the guarded value where it was."""
    derivation = UnitDerivation()
    derivation.feed(_parsed("lifetime", {"energy_wh": 5_000}), NOW)
    derived = derivation.feed(_parsed("lifetime", {"energy_wh": 1e308}), NOW + 60)
    assert derived.values["lifetime_energy_wh"] == 5_000
