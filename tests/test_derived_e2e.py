"""Derived values and events through the real bridge, a real mosquitto and simulated units."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, subscriber, wait_for_retained

pytestmark = pytest.mark.broker


def write_config(path: Path, broker: Broker, servers: list[UnitServer], data_dir: Path) -> None:
    path.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "derived-e2e"\n'
        f'\n[bridge]\ndata_dir = "{data_dir}"\n'
        "\n[polling]\nvitals_s = 1\nvitals_idle_s = 1\nlifetime_s = 30\nwifi_status_s = 30\n"
        f'\n[[connectors]]\nhost = "127.0.0.1:{servers[0].port}"\nid = "eu"\n'
        f'\n[[connectors]]\nhost = "127.0.0.1:{servers[1].port}"\nid = "na"\n'
    )


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


async def log_says(log: Path, text: str, limit_s: float = 30.0) -> bool:
    """Whether ``text`` appears in the log within ``limit_s``."""
    for _ in range(int(limit_s / 0.1)):
        if text in await asyncio.to_thread(log.read_text):
            return True
        await asyncio.sleep(0.1)
    return text in await asyncio.to_thread(log.read_text)


async def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, 15)


def _saved_total(path: Path, serial: str) -> float:
    """The energy total the state file holds for one serial number (one record)."""
    saved = json.loads(path.read_text())
    (total,) = [float(r["total_wh"]) for r in saved["energy"] if r["serial"] == serial]
    return total


async def test_power_status_events_and_energy_total(broker: Broker, tmp_path: Path) -> None:
    """Charging units give the right power per wiring, events arrive, energy survives a restart."""
    held = Scenario(start_state="charging", auto_cycle=False)
    eu = SimulatedUnit("SIMDER000001", wiring="eu_three_phase", seed=5, scenario=held)
    na = SimulatedUnit("SIMDER000002", wiring="na_split_phase", seed=6, scenario=held)
    config, log = tmp_path / "bridge.toml", tmp_path / "bridge.log"
    async with UnitServer(eu) as eu_server, UnitServer(na) as na_server:
        write_config(config, broker, [eu_server, na_server], tmp_path / "data")
        process = start(config, log)
        try:
            async with asyncio.timeout(90):
                found = await wait_for_retained(
                    broker.port,
                    lambda f: all(
                        float(f.get(f"twc3/{unit}/derived/power_w", "0")) > 1000
                        and f.get(f"twc3/{unit}/derived/phase_mode") is not None
                        for unit in ("eu", "na")
                    ),
                    pattern="twc3/#",
                )
                na_vitals = json.loads(found["twc3/na/vitals"])
                assert found["twc3/na/derived/phase_mode"] == "split_phase"
                assert found["twc3/eu/derived/phase_mode"] == "three_phase"
                assert found["twc3/eu/derived/status"] == "charging"
                assert found["twc3/eu/derived/charging"] == "true"
                # Split phase is grid_v × vehicle current, not the per-phase sum.
                assert float(found["twc3/na/derived/power_w"]) == pytest.approx(
                    na_vitals["grid_v"] * na_vitals["vehicle_current_a"], rel=0.2
                )
                assert found["twc3/eu/derived/evse_state_name"] == "charging"
                assert "homeassistant/sensor/twc3_simder000001/derived_energy_wh/config" in (
                    await wait_for_retained(
                        broker.port,
                        lambda f: any("derived_energy_wh" in topic for topic in f),
                        pattern="homeassistant/#",
                    )
                )

                events: list[dict[str, object]] = []
                async with subscriber(broker.port, "twc3/+/event") as client:
                    eu.stop_charging()
                    eu.unplug()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(8):
                            async for message in client.messages:
                                assert isinstance(message.payload, bytes)
                                events.append(json.loads(message.payload))
                                if any(e["type"] == "session_ended" for e in events):
                                    break
                types = [event["type"] for event in events]
                assert "charging_stopped" in types
                assert "unplugged" in types
                ended = next(event for event in events if event["type"] == "session_ended")
                assert ended["unit"] == "eu"
                assert isinstance(ended["energy_wh"], float | int)
                assert float(ended["peak_power_w"]) > 1000  # type: ignore[arg-type]

                before = await wait_for_retained(
                    broker.port,
                    lambda f: float(f.get("twc3/na/derived/energy_wh", "0")) > 0,
                    pattern="twc3/na/derived/#",
                )
                total_before = float(before["twc3/na/derived/energy_wh"])
                await stop(process)
                # The published total is rounded to 3 decimals; the saved one is exact.
                saved = _saved_total(tmp_path / "data" / "state.json", "SIMDER000002")
                assert saved >= total_before - 0.001
                process = start(config, log)
                after = await wait_for_retained(
                    broker.port,
                    lambda f: float(f.get("twc3/na/derived/energy_wh", "0")) > total_before,
                    pattern="twc3/na/derived/#",
                )
                assert float(after["twc3/na/derived/energy_wh"]) >= total_before
                # The broker's retained total may still be the first run's: wait for the second
                # run to say it restored its total (its first poll can come a moment later).
                assert await log_says(log, "energy total restored")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
