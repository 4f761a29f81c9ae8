"""The energy total only grows: restored by connector key before any poll, continued by serial."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bridge.runtime.poller
from bridge.adapters.twc import TwcBadResponseError, TwcClient
from bridge.core.config import BridgeConfig
from bridge.core.derived import SessionEnergy, continued_energy
from bridge.core.models import Endpoint
from bridge.runtime.app import Bridge
from bridge.runtime.statefile import StateFile

SERIAL = "SIMKEEP00001"
HOST = "192.0.2.40"
ENERGY_TOPIC = "twc3/garage/derived/energy_wh"

# --- the merge, pure ------------------------------------------------------------------------


def _counting(total_wh: float) -> SessionEnergy:
    return SessionEnergy(total_wh=total_wh, last_session_wh=30.0, last_time=100.0, prev_time=100.0)


def test_nothing_saved_for_the_serial_leaves_the_accumulator_alone() -> None:
    current = _counting(25.0)
    assert continued_energy(current, 20.0, None) is current


def test_a_saved_total_no_higher_than_the_restored_one_changes_nothing() -> None:
    """The serial's record is the one the connector key restored already: no double count."""
    current = _counting(1_005.0)
    assert continued_energy(current, 1_000.0, SessionEnergy(total_wh=1_000.0)) is current
    assert continued_energy(current, 1_000.0, SessionEnergy(total_wh=400.0)) is current


def test_a_higher_saved_total_gets_what_was_counted_since_start_added() -> None:
    """Renamed id: started from 0, counted 5 Wh, the serial's saved 1000 Wh: 1005 Wh."""
    current = _counting(5.0)
    continued = continued_energy(current, 0.0, SessionEnergy(total_wh=1_000.0, last_time=1.0))
    assert continued.total_wh == 1_005.0
    # The live session tracking goes on from this run's samples, not the saved ones.
    assert dataclasses.replace(continued, total_wh=5.0) == current
    assert current.total_wh == 5.0  # the input is not changed


@given(
    restored=st.floats(0, 1e9),
    counted=st.floats(0, 1e6),
    saved=st.none() | st.floats(0, 1e9),
)
def test_the_continued_total_is_never_below_either_total(
    restored: float, counted: float, saved: float | None
) -> None:
    current = _counting(restored + counted)
    continued = continued_energy(
        current, restored, None if saved is None else SessionEnergy(total_wh=saved)
    )
    assert continued.total_wh >= current.total_wh
    if saved is not None:
        assert continued.total_wh >= saved
        assert continued.total_wh == pytest.approx(max(restored, saved) + counted)


# --- a bridge in this process, with a scripted unit and a fake clock -------------------------

VersionMode = Literal["fail", "answer", "no serial"]


class FakeTime:
    """A monotonic clock that only moves when the poller sleeps."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def clock(self) -> float:
        """The current fake time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the fake time instead of waiting."""
        self.now += seconds


class ScriptedUnit:
    """A charging unit whose version endpoint fails, answers, or answers without a serial."""

    def __init__(self, version: VersionMode) -> None:
        self.version = version
        self.session_wh = 0.0
        self.uptime_s = 10_000
        self.asked: list[Endpoint] = []

    async def fetch(self, endpoint: Endpoint) -> bytes:
        """Answer one request as scripted; the session energy grows 5 Wh per vitals read."""
        self.asked.append(endpoint)
        body: dict[str, Any]
        if endpoint == "version":
            if self.version == "fail":
                raise TwcBadResponseError("unexpected response: HTTP 500", endpoint)
            body = {"firmware_version": "25.34.1", "part_number": "1529455-02-D"}
            if self.version == "answer":
                body["serial_number"] = SERIAL
        elif endpoint == "vitals":
            self.session_wh += 5.0
            self.uptime_s += 1
            body = {
                "contactor_closed": True,
                "vehicle_connected": True,
                "session_s": self.uptime_s - 9_000,
                "uptime_s": self.uptime_s,
                "grid_v": 230.0,
                "session_energy_wh": self.session_wh,
            }
        elif endpoint == "lifetime":
            body = {"energy_wh": 1_000}
        else:
            body = {"wifi_ssid": "SG9tZQ==", "wifi_rssi": -50}
        return json.dumps(body).encode()


def _bridge(data_dir: Path, unit: ScriptedUnit, unit_id: str = "garage") -> Bridge:
    config = BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(data_dir)},
            "polling": {"vitals_s": 1, "vitals_idle_s": 1, "backoff_max_s": 8},
            "connectors": [{"host": HOST, "id": unit_id}],
        }
    )
    instance = Bridge(config, client_factory=lambda _: cast("TwcClient", unit))
    fake = FakeTime()
    for poller in instance.pollers:
        poller._clock = fake.clock
        poller._sleep = fake.sleep
    return instance


async def _poll(instance: Bridge, polls: int, topic: str = ENERGY_TOPIC) -> list[float]:
    """Poll ``polls`` times; every energy total published on the way."""
    seen: list[float] = []
    for _ in range(polls):
        await instance.pollers[0].poll_once()
        value = instance.outbox.get(topic)
        if value is not None and (not seen or float(value) != seen[-1]):
            seen.append(float(value))
    return seen


def _saved_file(data_dir: Path, *records: tuple[str | None, str | None, float]) -> None:
    state = StateFile(data_dir / "state.json")
    for connector, serial, total in records:
        state.keep_energy(connector or "", serial, SessionEnergy(total_wh=total))
    assert state.flush()


@pytest.fixture(autouse=True)
def _quick_spacing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge.runtime.poller, "MIN_START_GAP_S", 0.0)
    monkeypatch.setattr(bridge.runtime.poller, "MIN_IDLE_S", 0.0)


async def test_the_total_is_restored_by_connector_key_before_the_first_poll(
    tmp_path: Path,
) -> None:
    """Version failing from the start: the first energy_wh published is the saved total."""
    _saved_file(tmp_path, ("garage", SERIAL, 5_000.0))
    unit = ScriptedUnit("fail")
    instance = _bridge(tmp_path, unit)
    assert instance.pollers[0].derivation.energy.total_wh == 5_000.0  # before any request
    seen = await _poll(instance, 12)
    assert unit.asked.count("version") >= 2
    assert seen[0] == 5_000.0
    assert seen == sorted(seen)
    assert seen[-1] > 5_000.0
    instance.save_energy()
    assert instance.state_file.flush()
    (record,) = StateFile(tmp_path / "state.json").energy_records()
    assert (record.connector, record.serial) == ("garage", SERIAL)
    assert record.total_wh == seen[-1]


async def test_a_version_1_file_restores_through_the_address_book(tmp_path: Path) -> None:
    """Today's file keys energy by serial only: the address book finds it for the connector."""
    (tmp_path / "state.json").write_text(
        json.dumps({"energy": {SERIAL: {"total_wh": 777.0}}, "addresses": {SERIAL: HOST}})
    )
    instance = _bridge(tmp_path, ScriptedUnit("fail"))
    seen = await _poll(instance, 6)
    assert seen[0] == 777.0
    assert min(seen) == 777.0


async def test_a_higher_total_saved_for_the_serial_is_continued_when_the_serial_arrives(
    tmp_path: Path,
) -> None:
    """Renamed id at a new address: counted from 0, then the serial's 1000 Wh plus that count."""
    _saved_file(tmp_path, ("old-name", SERIAL, 1_000.0))
    unit = ScriptedUnit("fail")
    instance = _bridge(tmp_path, unit)
    before = await _poll(instance, 6)
    assert before[0] == 0.0
    counted = before[-1]
    assert counted > 0
    unit.version = "answer"
    after = await _poll(instance, 30)
    assert instance.pollers[0].status.serial == SERIAL
    assert after[-1] >= 1_000.0 + counted
    assert after == sorted(after)
    instance.save_energy()
    assert instance.state_file.flush()
    records = StateFile(tmp_path / "state.json").energy_records()
    assert [(r.connector, r.serial) for r in records] == [("garage", SERIAL)]
    assert records[0].total_wh == after[-1]


async def test_a_unit_without_serial_number_keeps_its_total_across_restarts(
    tmp_path: Path,
) -> None:
    """A version body without serial_number: the total is saved and restored by connector key."""
    unit = ScriptedUnit("no serial")
    first = _bridge(tmp_path, unit)
    seen = await _poll(first, 8)
    assert seen[-1] > 0
    first.save_energy()
    assert first.state_file.flush()
    second = _bridge(tmp_path, unit)
    again = await _poll(second, 4)
    # The saved session base goes on too: what the unit delivered meanwhile (5 Wh) is counted.
    assert again[0] == seen[-1] + 5.0
    assert again == sorted(again)


async def test_a_failed_version_request_is_asked_again_after_the_backoff_not_an_hour(
    tmp_path: Path,
) -> None:
    """HTTP 500 from version: retried within backoff_max_s (8 s here), not after version_s."""
    unit = ScriptedUnit("fail")
    instance = _bridge(tmp_path, unit)
    await _poll(instance, 40)  # ~40 s of fake time at one request a second
    assert unit.asked.count("version") >= 5
    unit.version = "answer"
    await _poll(instance, 12)
    assert instance.pollers[0].status.serial == SERIAL
