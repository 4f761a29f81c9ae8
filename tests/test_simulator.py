"""Simulated wall connector: state machine physics, body format, quirks, HTTP server, CLI."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from bridge.sim.options import Wiring, add_simulate_arguments, parse_quirk
from bridge.sim.simulator import (
    HostRoutedServer,
    JsonValue,
    Quirks,
    Scenario,
    SimulatedUnit,
    UnitServer,
    encode_body,
    run_simulator,
    simulate_main,
    simulated_serial,
)

VITALS_KEYS = [
    "contactor_closed",
    "vehicle_connected",
    "session_s",
    "grid_v",
    "grid_hz",
    "vehicle_current_a",
    "currentA_a",
    "currentB_a",
    "currentC_a",
    "currentN_a",
    "voltageA_v",
    "voltageB_v",
    "voltageC_v",
    "relay_coil_v",
    "pcba_temp_c",
    "handle_temp_c",
    "mcu_temp_c",
    "uptime_s",
    "input_thermopile_uv",
    "prox_v",
    "pilot_high_v",
    "pilot_low_v",
    "session_energy_wh",
    "config_status",
    "evse_state",
    "current_alerts",
    "evse_not_ready_reasons",
]
LIFETIME_KEYS = [
    "contactor_cycles",
    "contactor_cycles_loaded",
    "alert_count",
    "thermal_foldbacks",
    "avg_startup_temp",
    "charge_starts",
    "energy_wh",
    "connector_cycles",
    "uptime_s",
    "charging_time_s",
]
VERSION_KEYS = ["firmware_version", "git_branch", "part_number", "serial_number", "web_service"]
WIFI_KEYS = [
    "wifi_ssid",
    "wifi_signal_strength",
    "wifi_rssi",
    "wifi_snr",
    "wifi_connected",
    "wifi_infra_ip",
    "internet",
    "wifi_mac",
]
ONE_DECIMAL_KEYS = [
    "grid_v",
    "vehicle_current_a",
    "currentA_a",
    "currentB_a",
    "currentC_a",
    "currentN_a",
    "voltageA_v",
    "voltageB_v",
    "voltageC_v",
    "relay_coil_v",
    "pcba_temp_c",
    "handle_temp_c",
    "mcu_temp_c",
    "prox_v",
    "pilot_high_v",
    "pilot_low_v",
]
PATHS = ["/api/1/vitals", "/api/1/lifetime", "/api/1/version", "/api/1/wifi_status"]

# A short, fully predictable cycle: idle 10 s, 7 (3 s), 9 (3 s), charge 100 s, finished 10 s.
PREDICTABLE: dict[str, Any] = {
    "idle_s": 10.0,
    "plug_transient": (7, 9),
    "transient_step_s": (3.0, 3.0),
    "charge_s": 100.0,
    "finished_s": 10.0,
    "unplug_latch_probability": 0.0,
}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the fake time forward."""
        self.now += seconds


def make_unit(
    wiring: Wiring = "eu_three_phase", *, seed: int = 7, **scenario: Any
) -> tuple[SimulatedUnit, FakeClock]:
    clock = FakeClock()
    unit = SimulatedUnit(
        "SIM0000000001",
        wiring=wiring,
        clock=clock,
        seed=seed,
        scenario=Scenario(**{**PREDICTABLE, **scenario}),
    )
    return unit, clock


def parsed_body(unit: SimulatedUnit, path: str) -> dict[str, Any]:
    status, body = unit.render(path)
    assert status == 200
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def vitals(unit: SimulatedUnit) -> dict[str, Any]:
    return parsed_body(unit, "/api/1/vitals")


def lifetime(unit: SimulatedUnit) -> dict[str, Any]:
    return parsed_body(unit, "/api/1/lifetime")


def true_power_w(sample: dict[str, Any], wiring: Wiring) -> float:
    """What a correct consumer computes, gated on the contactor.

    See docs/device-api.md, 'Computing power'.
    """
    if not sample["contactor_closed"]:
        return 0.0
    if wiring == "na_split_phase":
        return float(sample["grid_v"] * sample["vehicle_current_a"])
    return float(sum(sample[f"voltage{p}_v"] * sample[f"current{p}_a"] for p in "ABC"))


# ---- state machine ----------------------------------------------------------------------------


def test_full_cycle_walks_idle_plug_in_charge_finish_unplug() -> None:
    unit, clock = make_unit()
    seen: list[tuple[str, int, bool, bool]] = []
    for _ in range(300):
        sample = vitals(unit)
        state = (
            unit.state_name,
            sample["evse_state"],
            sample["contactor_closed"],
            sample["vehicle_connected"],
        )
        if not seen or seen[-1] != state:
            seen.append(state)
        clock.advance(0.5)
    assert seen[:6] == [
        ("idle", 1, False, False),
        ("plugging", 7, False, True),
        ("plugging", 9, False, True),
        ("charging", 11, True, True),
        ("finished", 9, False, True),
        ("idle", 1, False, False),
    ]


def test_cycle_timing_follows_the_scenario() -> None:
    unit, clock = make_unit()
    changes: dict[int, float] = {}
    last = None
    for step in range(260):
        state = unit.evse_state
        if state != last:
            changes.setdefault(state, step * 0.5)
            last = state
        clock.advance(0.5)
    assert changes == {1: 0.0, 7: 10.0, 9: 13.0, 11: 16.0}


def test_unplug_through_latch_shows_state_7_then_recent_unplug_reasons() -> None:
    unit, clock = make_unit(unplug_latch_probability=1.0)
    clock.advance(126.5)  # finished ends at 126 s
    sample = vitals(unit)
    assert (sample["evse_state"], sample["vehicle_connected"], sample["prox_v"]) == (7, True, 2.7)
    assert sample["evse_not_ready_reasons"] == [3]
    clock.advance(2.0)
    sample = vitals(unit)
    assert (sample["evse_state"], sample["vehicle_connected"], sample["session_s"]) == (1, False, 0)
    assert sample["evse_not_ready_reasons"] == [8]
    clock.advance(5.0)
    assert vitals(unit)["evse_not_ready_reasons"] == [4, 8]


def test_transient_is_drawn_from_observed_sequences_when_not_configured() -> None:
    unit, clock = make_unit(plug_transient=None, transient_step_s=(2.0, 6.0), seed=11)
    states = []
    for _ in range(80):
        states.append(unit.evse_state)
        clock.advance(0.25)
    transient = tuple(dict.fromkeys(s for s in states if s not in (1, 11)))
    assert transient in {(7,), (7, 9), (2, 7), (3, 9)}


@pytest.mark.parametrize("wiring", ["eu_three_phase", "na_split_phase"])
def test_session_energy_integrates_the_true_power(wiring: Wiring) -> None:
    unit, clock = make_unit(wiring)
    integrated_wh = 0.0
    previous = true_power_w(vitals(unit), wiring)
    for _ in range(120):  # the finished phase runs from 116 s to 126 s
        clock.advance(1.0)
        sample = vitals(unit)
        power = true_power_w(sample, wiring)
        integrated_wh += (previous + power) / 2 / 3600
        previous = power
    assert unit.state_name == "finished"
    reported = sample["session_energy_wh"]
    expected_floor = (
        {"eu_three_phase": 3 * 228 * 16, "na_split_phase": 240 * 40}[wiring] * 80 / 3600
    )
    assert reported > expected_floor
    assert reported == pytest.approx(integrated_wh, rel=0.01)


def test_three_phase_energy_is_not_grid_v_times_vehicle_current() -> None:
    unit, _ = make_unit("eu_three_phase", start_state="charging")
    sample = vitals(unit)
    naive = sample["grid_v"] * sample["vehicle_current_a"]
    assert true_power_w(sample, "eu_three_phase") == pytest.approx(3 * naive, rel=0.03)


def test_session_energy_kept_after_unplug_and_reset_at_next_plug_in() -> None:
    unit, clock = make_unit(auto_cycle=False)
    retained_from_before = vitals(unit)["session_energy_wh"]
    assert retained_from_before > 0
    unit.start_charging()
    clock.advance(60.0)
    unit.stop_charging()
    charged = vitals(unit)["session_energy_wh"]
    assert charged > 0
    unit.unplug()
    clock.advance(500.0)
    sample = vitals(unit)
    assert (sample["evse_state"], sample["vehicle_connected"], sample["session_s"]) == (1, False, 0)
    assert sample["session_energy_wh"] == charged
    unit.plug_in()
    clock.advance(1.0)
    _, body = unit.render("/api/1/vitals")
    assert b'"session_energy_wh":0.000,' in body
    assert json.loads(body)["session_s"] == 1


def test_energy_not_reset_when_charging_pauses_within_one_plug_in() -> None:
    unit, clock = make_unit(auto_cycle=False, start_state="charging")
    unit.stop_charging()
    paused = unit.session_energy_wh
    clock.advance(30.0)
    unit.start_charging()
    clock.advance(30.0)
    assert unit.session_energy_wh > paused > 0


def test_na_split_phase_uses_the_2025_layout() -> None:
    unit, clock = make_unit("na_split_phase", start_state="charging", charge_s=1000.0)
    neutral_values = set()
    for _ in range(40):
        sample = vitals(unit)
        assert sample["contactor_closed"]
        assert sample["currentA_a"] == sample["currentC_a"] == 0.0
        assert sample["currentB_a"] == pytest.approx(40.0, abs=0.2)
        assert sample["vehicle_current_a"] == sample["currentB_a"]
        assert sample["currentN_a"] in (0.0, sample["currentB_a"])
        neutral_values.add(sample["currentN_a"] == 0.0)
        assert 119.0 <= sample["voltageA_v"] <= 124.0
        assert 119.0 <= sample["voltageC_v"] <= 124.0
        assert abs(sample["voltageA_v"] - sample["voltageC_v"]) < 1.0
        assert 240.0 <= sample["voltageB_v"] <= 247.0
        assert 240.0 <= sample["grid_v"] <= 248.0
        assert sample["grid_hz"] == pytest.approx(60.0, abs=0.2)
        assert sample["prox_v"] == 1.5
        assert sample["evse_not_ready_reasons"] == [1]
        clock.advance(2.0)
    assert neutral_values == {True, False}, "currentN must flicker between 0 and the full current"


def test_eu_three_phase_layout() -> None:
    unit, clock = make_unit("eu_three_phase", start_state="charging", charge_s=1000.0)
    for _ in range(20):
        sample = vitals(unit)
        for phase in "ABC":
            assert sample[f"current{phase}_a"] == pytest.approx(16.0, abs=0.2)
            assert 227.5 <= sample[f"voltage{phase}_v"] <= 232.5
        assert sample["vehicle_current_a"] == pytest.approx(16.1, abs=0.2)
        assert sample["grid_v"] == pytest.approx(230.0, abs=2.5)
        assert sample["grid_hz"] == pytest.approx(50.0, abs=0.1)
        clock.advance(2.0)


@pytest.mark.parametrize("wiring", ["eu_three_phase", "na_split_phase"])
def test_contactor_open_shows_only_idle_noise(wiring: Wiring) -> None:
    unit, clock = make_unit(wiring, idle_s=1000.0)
    for _ in range(30):
        sample = vitals(unit)
        assert not sample["contactor_closed"]
        assert sample["evse_not_ready_reasons"] == [4, 8]
        assert all(0.0 <= sample[f"voltage{p}_v"] <= 9.0 for p in "ABC")
        assert all(0.0 <= sample[f"current{p}_a"] <= 0.5 for p in "ABCN")
        assert 0.0 <= sample["vehicle_current_a"] <= 0.5
        assert sample["pilot_high_v"] == pytest.approx(11.8, abs=0.15)
        clock.advance(1.0)


def test_temperatures_rise_while_charging() -> None:
    unit, clock = make_unit(start_state="charging", charge_s=5000.0)
    before = vitals(unit)
    clock.advance(1800.0)
    after = vitals(unit)
    assert after["pcba_temp_c"] > before["pcba_temp_c"] + 3
    assert after["handle_temp_c"] > before["handle_temp_c"] + 1
    assert after["input_thermopile_uv"] < before["input_thermopile_uv"] - 300


def test_lifetime_counters_follow_what_happened() -> None:
    unit, clock = make_unit()
    before = lifetime(unit)
    uptime_before = vitals(unit)["uptime_s"]
    clock.advance(110.0)  # mid-way through the finished phase
    session_wh = unit.session_energy_wh
    after = lifetime(unit)
    assert after["charge_starts"] == before["charge_starts"] + 1
    assert after["contactor_cycles"] == before["contactor_cycles"] + 1
    assert after["connector_cycles"] == before["connector_cycles"] + 1
    assert after["contactor_cycles_loaded"] == before["contactor_cycles_loaded"]
    assert after["energy_wh"] - before["energy_wh"] == pytest.approx(session_wh, abs=1.0)
    assert after["charging_time_s"] - before["charging_time_s"] == pytest.approx(94, abs=1)
    assert after["uptime_s"] - before["uptime_s"] == 110
    assert vitals(unit)["uptime_s"] - uptime_before == 110
    assert before["uptime_s"] > uptime_before


def test_stopping_under_load_counts_a_loaded_contactor_cycle() -> None:
    unit, _ = make_unit(start_state="charging")
    before = lifetime(unit)["contactor_cycles_loaded"]
    unit.stop_charging()
    assert lifetime(unit)["contactor_cycles_loaded"] == before + 1


def test_reboot_resets_uptime_and_session() -> None:
    unit, clock = make_unit(start_state="charging")
    lifetime_uptime = lifetime(unit)["uptime_s"]
    clock.advance(5.0)
    unit.reboot()
    sample = vitals(unit)
    assert sample["uptime_s"] == 0
    assert (sample["evse_state"], sample["contactor_closed"], sample["session_s"]) == (1, False, 0)
    assert sample["session_energy_wh"] == 0.0
    assert sample["evse_not_ready_reasons"] == [2, 4, 8]
    clock.advance(6.0)  # idle_s is 10, booting lasts 35 s: stay idle for this check
    assert vitals(unit)["uptime_s"] == 6
    assert lifetime(unit)["uptime_s"] == lifetime_uptime + 11


def test_controls_force_transitions() -> None:
    unit, clock = make_unit(auto_cycle=False)
    clock.advance(1000.0)
    assert unit.state_name == "idle"
    unit.plug_in()
    assert (unit.state_name, unit.evse_state) == ("plugging", 7)
    clock.advance(6.0)
    assert unit.evse_state == 11
    unit.stop_charging()
    assert unit.evse_state == 9
    clock.advance(1000.0)
    assert unit.evse_state == 9, "without auto_cycle the car stays plugged in"
    unit.start_charging()
    assert unit.evse_state == 11
    unit.unplug()
    assert (unit.state_name, unit.evse_state) == ("idle", 1)
    unit.start_charging()
    assert unit.evse_state == 11


def test_start_state_charging_is_mid_session_at_full_current() -> None:
    unit, clock = make_unit("na_split_phase", start_state="charging")
    sample = vitals(unit)
    assert sample["evse_state"] == 11
    assert sample["vehicle_current_a"] == pytest.approx(40.0, abs=0.2)
    assert sample["session_s"] > 60
    assert sample["session_energy_wh"] > 150  # about 70 s at full power behind it
    clock.advance(99.0)
    assert unit.evse_state == 11
    clock.advance(2.0)
    assert unit.evse_state == 9


def test_speed_scales_simulated_time() -> None:
    unit, clock = make_unit(speed=10.0)
    start = vitals(unit)["uptime_s"]
    clock.advance(1.1)  # 11 simulated seconds: past the 10 s idle phase
    sample = vitals(unit)
    assert sample["uptime_s"] - start == 11
    assert sample["evse_state"] == 7


def test_same_seed_same_bodies() -> None:
    first, first_clock = make_unit(seed=3)
    second, second_clock = make_unit(seed=3)
    for _ in range(50):
        assert first.render("/api/1/vitals") == second.render("/api/1/vitals")
        first_clock.advance(3.0)
        second_clock.advance(3.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"charge_s": 0.0},
        {"speed": -1.0},
        {"plug_transient": (11,)},
        {"transient_step_s": (5.0, 2.0)},
        {"unplug_latch_probability": 2.0},
    ],
)
def test_scenario_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Scenario"):
        Scenario(**bad)


# ---- body format ------------------------------------------------------------------------------


def walk_states() -> Iterator[tuple[SimulatedUnit, str]]:
    for wiring in ("eu_three_phase", "na_split_phase"):
        unit, clock = make_unit(wiring, unplug_latch_probability=1.0)
        for _ in range(70):
            yield unit, unit.state_name
            clock.advance(2.0)


def test_every_body_parses_with_documented_keys_in_order() -> None:
    states = set()
    for unit, state in walk_states():
        states.add(state)
        bodies = {path: unit.render(path) for path in PATHS}
        for status, body in bodies.values():
            assert status == 200
            assert b"\n" not in body
            assert b" " not in body
        parsed = {path: json.loads(body) for path, (_, body) in bodies.items()}
        assert list(parsed["/api/1/vitals"]) == VITALS_KEYS
        assert list(parsed["/api/1/lifetime"]) == LIFETIME_KEYS
        assert list(parsed["/api/1/version"]) == VERSION_KEYS
        assert list(parsed["/api/1/wifi_status"]) == WIFI_KEYS
    assert states == {"idle", "plugging", "charging", "finished", "unplugging"}


def test_numbers_use_the_units_fixed_decimals() -> None:
    for unit, _ in walk_states():
        body = unit.render("/api/1/vitals")[1].decode()
        assert re.search(r'"grid_hz":\d+\.\d{3},', body)
        assert re.search(r'"session_energy_wh":\d+\.\d{3},', body)
        for key in ONE_DECIMAL_KEYS:
            assert re.search(rf'"{key}":-?\d+\.\d,', body), key
        for key in ("session_s", "uptime_s", "input_thermopile_uv", "config_status", "evse_state"):
            assert re.search(rf'"{key}":-?\d+,', body), key
        lifetime = unit.render("/api/1/lifetime")[1].decode()
        assert '"avg_startup_temp":0.0,' in lifetime


def test_version_and_wifi_status_values() -> None:
    unit, _ = make_unit("na_split_phase")
    version = json.loads(unit.render("/api/1/version")[1])
    assert version["serial_number"] == "SIM0000000001"
    assert re.fullmatch(r"\d+\.\d+\.\d+\+g[0-9a-f]{14}", version["firmware_version"])
    assert version["git_branch"] == "HEAD"
    wifi = json.loads(unit.render("/api/1/wifi_status")[1])
    assert base64.b64decode(wifi["wifi_ssid"]).decode() == unit.wifi_ssid
    assert re.fullmatch(r"([0-9A-F]{2}:){5}[0-9A-F]{2}", wifi["wifi_mac"])
    assert 0 <= wifi["wifi_signal_strength"] <= 100
    assert wifi["wifi_rssi"] < 0


def test_encode_body_formats_like_the_unit() -> None:
    body: dict[str, JsonValue] = {
        "a": -0.0,
        "b": 1.0,
        "c": True,
        "d": [4, 8],
        "e": "x",
        "f": math.nan,
        "g": 3,
    }
    assert encode_body(body, {"b": 3}) == (
        b'{"a":-0.0,"b":1.000,"c":true,"d":[4,8],"e":"x","f":nan,"g":3}'
    )


def test_unknown_paths() -> None:
    unit, _ = make_unit()
    assert unit.render("/api/1/status")[0] == 500
    assert unit.render("/api/1/power_sharing")[0] == 500
    assert unit.render("/api/2/vitals")[0] == 404
    assert unit.render("/")[0] == 404
    assert unit.render("/api/1/vitals?cache=0")[0] == 200


# ---- body-level quirks ------------------------------------------------------------------------


def test_nan_quirk_emits_a_bare_nan_token() -> None:
    unit, _ = make_unit()
    unit.quirks = Quirks(nan=1.0)
    body = unit.render("/api/1/vitals")[1]
    assert re.search(rb":nan[,}]", body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    assert b'"avg_startup_temp":nan,' in unit.render("/api/1/lifetime")[1]


def test_truncated_quirk_drops_the_final_brace() -> None:
    unit, _ = make_unit()
    unit.quirks.truncated = 1.0
    for path in PATHS:
        status, body = unit.render(path)
        assert status == 200
        assert not body.endswith(b"}")
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        json.loads(body + b"}")


def test_http_500_and_sensor_255_quirks() -> None:
    unit, _ = make_unit()
    unit.quirks = Quirks(http_500=1.0)
    assert unit.render("/api/1/vitals")[0] == 500
    unit.quirks = Quirks(sensor_255=1.0)
    assert json.loads(unit.render("/api/1/vitals")[1])["handle_temp_c"] == 255.0


def test_quirk_probability_is_seeded() -> None:
    def outcomes(seed: int) -> list[int]:
        unit, _ = make_unit(seed=seed)
        unit.quirks = Quirks(http_500=0.5)
        return [unit.render("/api/1/version")[0] for _ in range(200)]

    first = outcomes(5)
    assert first == outcomes(5)
    assert 60 < first.count(500) < 140


def test_parse_quirk() -> None:
    assert parse_quirk("nan=0.1") == ("nan", 0.1)
    assert parse_quirk("hang") == ("hang", 1.0)
    assert parse_quirk("refuse") == ("refuse", True)
    assert parse_quirk("refuse=off") == ("refuse", False)
    assert parse_quirk("slow_first_byte_s=3") == ("slow_first_byte_s", 3.0)
    assert parse_quirk("huge_body_bytes=50000000") == ("huge_body_bytes", 50_000_000)
    for bad in ["bogus", "nan=2", "nan=x", "slow_first_byte_s", "huge_body_bytes=1.5", "refuse=7"]:
        with pytest.raises(ValueError, match="quirk"):
            parse_quirk(bad)


def test_refuse_listeners_hear_changes_only() -> None:
    quirks = Quirks(refuse=True)
    heard: list[bool] = []

    def listener() -> None:
        heard.append(quirks.refuse)

    quirks.add_refuse_listener(listener)
    quirks.refuse = True
    quirks.nan = 0.5
    quirks.set("refuse", value=False)
    quirks.refuse = True
    assert heard == [False, True]
    copy = dataclasses.replace(quirks)
    assert copy == quirks
    copy.refuse = False
    assert heard == [False, True]
    quirks.remove_refuse_listener(listener)
    quirks.remove_refuse_listener(listener)
    quirks.refuse = False
    assert heard == [False, True]


def test_unit_refuse_listeners_follow_replaced_quirks() -> None:
    unit, _ = make_unit()
    heard: list[bool] = []
    unit.add_refuse_listener(lambda: heard.append(unit.quirks.refuse))
    old = unit.quirks
    unit.quirks = Quirks(refuse=True)
    unit.quirks = Quirks(refuse=True, nan=1.0)
    old.refuse = True
    unit.quirks.refuse = False
    assert heard == [True, False]


def test_quirks_validate_values() -> None:
    with pytest.raises(ValueError, match="probability"):
        Quirks(truncated=1.5)
    quirks = Quirks()
    with pytest.raises(ValueError, match="unknown quirk"):
        quirks.set("teleport", 1.0)
    quirks.set("drip_bytes_per_s", 100.0)
    assert quirks.drip_bytes_per_s == 100.0


# ---- HTTP server ------------------------------------------------------------------------------


def get_request(path: str, *headers: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"GET {path} {version}", "Host: sim", *headers, "", ""]
    return "\r\n".join(lines).encode()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in filter(None, lines):
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status, headers = await read_head(reader)
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def fetch(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    async with connection(port) as (reader, writer):
        writer.write(get_request(path, "Connection: close"))
        return await read_response(reader)


@pytest.fixture
async def server() -> AsyncIterator[UnitServer]:
    unit = SimulatedUnit("SIM0000000001", seed=1, scenario=Scenario(start_state="charging"))
    async with UnitServer(unit) as running:
        yield running


async def test_keep_alive_serves_two_requests_on_one_connection(server: UnitServer) -> None:
    async with asyncio.timeout(3), connection(server.port) as (reader, writer):
        writer.write(get_request("/api/1/vitals"))
        status, headers, body = await read_response(reader)
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "keep-alive"
        assert json.loads(body)["evse_state"] == 11
        writer.write(get_request("/api/1/lifetime"))
        status, _, body = await read_response(reader)
        assert status == 200
        assert list(json.loads(body)) == LIFETIME_KEYS


@pytest.mark.parametrize(
    ("headers", "version"),
    [(("Connection: close",), "HTTP/1.1"), ((), "HTTP/1.0")],
)
async def test_connection_closes_when_asked_or_on_http_1_0(
    server: UnitServer, headers: tuple[str, ...], version: str
) -> None:
    async with asyncio.timeout(3), connection(server.port) as (reader, writer):
        writer.write(get_request("/api/1/version", *headers, version=version))
        status, response_headers, _ = await read_response(reader)
        assert (status, response_headers["connection"]) == (200, "close")
        assert await reader.read() == b""


async def test_unknown_paths_over_http(server: UnitServer) -> None:
    async with asyncio.timeout(3):
        status, headers, _ = await fetch(server.port, "/api/1/status")
        assert (status, headers["content-type"]) == (500, "text/plain")
        assert (await fetch(server.port, "/index.html"))[0] == 404


async def test_only_get_is_served_and_the_connection_survives(server: UnitServer) -> None:
    async with asyncio.timeout(3), connection(server.port) as (reader, writer):
        writer.write(b"POST /api/1/vitals HTTP/1.1\r\nHost: sim\r\nContent-Length: 2\r\n\r\n{}")
        status, headers, _ = await read_response(reader)
        assert (status, headers["allow"]) == (405, "GET")
        writer.write(get_request("/api/1/version"))
        assert (await read_response(reader))[0] == 200


async def test_set_refusing_closes_and_reopens_the_port(server: UnitServer) -> None:
    port = server.port
    async with asyncio.timeout(3):
        async with connection(port) as (reader, writer):
            writer.write(get_request("/api/1/version"))
            await read_response(reader)
            await server.set_refusing(True)
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        with pytest.raises(ConnectionRefusedError):
            await fetch(port, "/api/1/version")
        await server.set_refusing(False)
        assert server.port == port
        assert (await fetch(port, "/api/1/version"))[0] == 200


async def test_refuse_quirk_set_directly_is_applied(server: UnitServer) -> None:
    async with asyncio.timeout(3):
        server.unit.quirks.refuse = True
        await asyncio.sleep(0.2)  # the server closes its listener a few loop turns later
        assert server.refusing
        with pytest.raises(ConnectionRefusedError):
            await fetch(server.port, "/api/1/version")
        server.unit.quirks.refuse = False
        await asyncio.sleep(0.2)
        assert not server.refusing
        assert (await fetch(server.port, "/api/1/version"))[0] == 200


async def test_refuse_quirk_followed_when_the_quirks_are_replaced(server: UnitServer) -> None:
    port = server.port
    async with asyncio.timeout(3):
        server.unit.quirks = Quirks(refuse=True)
        await asyncio.sleep(0.2)
        assert server.refusing
        with pytest.raises(ConnectionRefusedError):
            await fetch(port, "/api/1/version")
        server.unit.quirks = Quirks()
        await asyncio.sleep(0.2)
        assert not server.refusing
        assert (await fetch(port, "/api/1/version"))[0] == 200


async def test_quirks_shared_by_two_servers_refuse_on_both() -> None:
    shared = Quirks()
    units = [SimulatedUnit(f"SIM000000000{i}", seed=i, quirks=shared) for i in (1, 2)]
    async with asyncio.timeout(3), UnitServer(units[0]) as first, UnitServer(units[1]) as second:
        shared.refuse = True
        await asyncio.sleep(0.2)
        assert first.refusing
        assert second.refusing
        shared.refuse = False
        await asyncio.sleep(0.2)
        assert not first.refusing
        assert not second.refusing


async def test_a_flag_flipped_back_at_once_leaves_the_listener_open(server: UnitServer) -> None:
    async with asyncio.timeout(3):
        server.unit.quirks.refuse = True
        server.unit.quirks.refuse = False
        await asyncio.sleep(0.2)
        assert not server.refusing
        assert (await fetch(server.port, "/api/1/version"))[0] == 200


async def test_idle_servers_run_no_task_of_their_own() -> None:
    """Serving many units costs nothing while no request comes: no watcher task per unit."""
    before = asyncio.all_tasks()
    async with contextlib.AsyncExitStack() as stack:
        for index in range(1, 21):
            unit = SimulatedUnit(f"SIM{index:010d}", seed=index)
            await stack.enter_async_context(UnitServer(unit))
        await asyncio.sleep(0.05)
        assert asyncio.all_tasks() == before


async def test_a_stopped_server_stops_listening_to_the_refuse_flag() -> None:
    unit = SimulatedUnit("SIM0000000001", seed=1)
    running = UnitServer(unit)
    await running.start()
    await running.stop()
    assert unit._refuse_listeners == []
    assert unit.quirks._refuse_listeners == []
    unit.quirks.refuse = True
    await asyncio.sleep(0.05)
    assert not running.refusing


@pytest.mark.parametrize(
    ("garbage", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET /api/1/vitals\r\n\r\n", 400),
        (b"GET /api/1/vitals HTTP/1.1\r\n no-colon\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-Flood: 1\r\n" * 200 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
async def test_garbage_requests_close_the_connection_not_the_server(
    server: UnitServer, garbage: bytes, status: int
) -> None:
    async with asyncio.timeout(3):
        async with connection(server.port) as (reader, writer):
            writer.write(garbage)
            assert (await read_response(reader))[0] == status
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        assert (await fetch(server.port, "/api/1/version"))[0] == 200


async def test_client_closing_mid_request_does_not_hurt(server: UnitServer) -> None:
    async with asyncio.timeout(3):
        async with connection(server.port) as (_, writer):
            writer.write(b"GET /api/1/vit")
            await writer.drain()
        assert (await fetch(server.port, "/api/1/version"))[0] == 200


async def test_slow_first_byte_delays_the_response(server: UnitServer) -> None:
    server.unit.quirks.slow_first_byte_s = 0.3
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(3):
        started = loop.time()
        status, _, _ = await fetch(server.port, "/api/1/vitals")
        assert status == 200
        assert loop.time() - started >= 0.3


async def test_hang_never_answers_and_stop_still_works(caplog: pytest.LogCaptureFixture) -> None:
    unit = SimulatedUnit("SIM0000000001", seed=1, quirks=Quirks(hang=1.0))
    async with asyncio.timeout(3):
        async with UnitServer(unit) as running, connection(running.port) as (reader, writer):
            writer.write(get_request("/api/1/vitals"))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await reader.read(1)
        # Leaving the server's context closed the hung connection.
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
        await asyncio.sleep(0)  # let asyncio run the handler's done-callbacks
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_stop_in_the_middle_of_a_response_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    unit = SimulatedUnit("SIM0000000001", seed=1, quirks=Quirks(drip_bytes_per_s=100.0))
    async with asyncio.timeout(3):
        running = UnitServer(unit)
        await running.start()
        async with connection(running.port) as (reader, writer):
            writer.write(get_request("/api/1/version"))
            assert await reader.readexactly(4) == b"HTTP"
            await running.stop()
        await asyncio.sleep(0)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_drip_sends_slowly(server: UnitServer) -> None:
    server.unit.quirks.drip_bytes_per_s = 2000.0
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(3):
        started = loop.time()
        status, _, body = await fetch(server.port, "/api/1/version")
        elapsed = loop.time() - started
        assert status == 200
        assert json.loads(body)["serial_number"] == "SIM0000000001"
        assert elapsed >= 0.8 * (len(body) + 100) / 2000.0


async def test_huge_body_has_the_requested_size(server: UnitServer) -> None:
    server.unit.quirks.huge_body_bytes = 3_000_000
    async with asyncio.timeout(3):
        status, headers, body = await fetch(server.port, "/api/1/version")
        assert (status, int(headers["content-length"]), len(body)) == (200, 3_000_000, 3_000_000)
        assert json.loads(body)["git_branch"] == "HEAD"


async def test_endless_chunked_never_ends(server: UnitServer) -> None:
    server.unit.quirks.endless_chunked = 1.0
    async with asyncio.timeout(3):
        async with connection(server.port) as (reader, writer):
            writer.write(get_request("/api/1/vitals"))
            status, headers = await read_head(reader)
            assert (status, headers["transfer-encoding"]) == (200, "chunked")
            assert "content-length" not in headers
            received = 0
            while received < 500_000:
                chunk = await reader.read(65536)
                assert chunk, "the chunked body must not end"
                received += len(chunk)
        server.unit.quirks.endless_chunked = 0.0
        assert (await fetch(server.port, "/api/1/version"))[0] == 200


async def test_stop_closes_idle_keep_alive_connections() -> None:
    unit = SimulatedUnit("SIM0000000001", seed=1)
    running = UnitServer(unit)
    await running.start()
    async with asyncio.timeout(3), connection(running.port) as (reader, writer):
        writer.write(get_request("/api/1/version"))
        await read_response(reader)
        await running.stop()
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    with pytest.raises(ConnectionRefusedError):
        await fetch(running.port, "/api/1/version")


# ---- many units and the CLI -------------------------------------------------------------------


async def wait_for_lines(capsys: pytest.CaptureFixture[str], count: int) -> list[str]:
    lines: list[str] = []
    while len(lines) < count:
        await asyncio.sleep(0.01)
        lines += capsys.readouterr().out.splitlines()
    return lines


async def test_run_simulator_serves_units_until_stopped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop = asyncio.Event()
    async with asyncio.timeout(3):
        task = asyncio.create_task(run_simulator(2, base_port=0, stop=stop, seed=3))
        lines = await wait_for_lines(capsys, 2)
        assert re.fullmatch(
            r"simulated wall connector SIM0000000001 \(eu_three_phase\) at http://127\.0\.0\.1:\d+",
            lines[0],
        )
        assert "SIM0000000002 (na_split_phase)" in lines[1]
        port = int(lines[1].rsplit(":", 1)[1])
        _, _, body = await fetch(port, "/api/1/version")
        assert json.loads(body)["serial_number"] == "SIM0000000002"
        stop.set()
        await task
        with pytest.raises(ConnectionRefusedError):
            await fetch(port, "/api/1/version")


async def test_run_simulator_shuts_down_on_cancellation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with asyncio.timeout(3):
        task = asyncio.create_task(run_simulator(1, base_port=0, wiring="na_split_phase"))
        (line,) = await wait_for_lines(capsys, 1)
        port = int(line.rsplit(":", 1)[1])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConnectionRefusedError):
            await fetch(port, "/api/1/version")


def simulate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twc3-bridge simulate")
    add_simulate_arguments(parser)
    return parser


def test_simulate_arguments_parse() -> None:
    args = simulate_parser().parse_args(
        [
            *("--units", "3", "--quirk", "nan=0.1", "--quirk", "slow_first_byte_s=3"),
            *("--wiring", "na_split_phase", "--speed", "5", "--start", "charging"),
        ]
    )
    assert (args.units, args.wiring, args.speed, args.start) == (
        3,
        "na_split_phase",
        5.0,
        "charging",
    )
    assert args.quirk == [("nan", 0.1), ("slow_first_byte_s", 3.0)]
    defaults = simulate_parser().parse_args([])
    assert (defaults.units, defaults.host, defaults.port) == (1, "127.0.0.1", 8780)
    assert (defaults.wiring, defaults.speed, defaults.quirk) == ("mixed", 1.0, [])


@pytest.mark.parametrize(
    "argv",
    [
        ["--quirk", "bogus"],
        ["--quirk", "nan=3"],
        ["--speed", "0"],
        ["--speed", "fast"],
        ["--units", "0"],
        ["--port", "70000"],
        ["--wiring", "delta"],
        ["--start", "finished"],
    ],
)
def test_simulate_arguments_reject_bad_values_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        simulate_parser().parse_args(argv)
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert "Traceback" not in errors[0]


async def test_simulate_main_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = simulate_parser().parse_args(["--port", str(port)])
        async with asyncio.timeout(3):
            assert await simulate_main(args) == 1
    (error,) = capsys.readouterr().err.splitlines()
    assert "cannot listen" in error


async def test_simulate_main_stops_cleanly_on_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    args = simulate_parser().parse_args(["--port", "0", "--quirk", "nan=0.5"])
    handler_before = signal.getsignal(signal.SIGTERM)
    async with asyncio.timeout(3):
        task = asyncio.create_task(simulate_main(args))
        await wait_for_lines(capsys, 1)
        handler = signal.getsignal(signal.SIGTERM)
        assert handler not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await task == 0
    assert signal.getsignal(signal.SIGTERM) == handler_before


async def get_with_host(
    port: int, host: str | None, path: str = "/api/1/version"
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        host_line = f"Host: {host}\r\n" if host is not None else ""
        writer.write(f"GET {path} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n".encode())
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    return int(head.split(b" ")[1]), body


# ---- one port for many units, routed by Host --------------------------------------------------


async def test_host_header_picks_the_unit() -> None:
    units = [SimulatedUnit(simulated_serial(index), seed=index) for index in (1, 2)]
    async with asyncio.timeout(3), HostRoutedServer(units) as server:
        for unit in units:
            status, body = await get_with_host(server.port, unit.serial)
            assert (status, json.loads(body)["serial_number"]) == (200, unit.serial)
        status, body = await get_with_host(server.port, f"{units[1].serial.lower()}:{server.port}")
        assert (status, json.loads(body)["serial_number"]) == (200, units[1].serial)
        assert (await get_with_host(server.port, "SIM0000000003"))[0] == 404
        assert (await get_with_host(server.port, None))[0] == 404
        status, body = await get_with_host(server.port, units[0].serial, "/api/1/vitals")
        assert (status, len(json.loads(body))) == (200, 27)


async def test_one_connection_reaches_several_units() -> None:
    units = [SimulatedUnit(simulated_serial(index), seed=index) for index in (1, 2)]
    async with asyncio.timeout(3), HostRoutedServer(units) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for unit in (*units, units[0]):
                writer.write(f"GET /api/1/version HTTP/1.1\r\nHost: {unit.serial}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                assert json.loads(await reader.readexactly(length))["serial_number"] == unit.serial
        finally:
            writer.close()
            await writer.wait_closed()
