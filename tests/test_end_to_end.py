"""The real ``twc3-bridge run`` process against a real mosquitto and three simulated units."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, wait_for_retained

pytestmark = pytest.mark.broker

FAST_POLLING = """
[polling]
vitals_s = 1
vitals_idle_s = 1
lifetime_s = 2
wifi_status_s = 2
version_s = 3600
connect_timeout_s = 1
read_timeout_s = 2
offline_after = 2
backoff_max_s = 2
"""


@dataclass
class Site:
    """Three simulated units, their servers and the bridge process watching them."""

    units: list[SimulatedUnit]
    servers: list[UnitServer]
    config: Path
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        """Everything the bridge logged so far."""
        return self.log.read_text(errors="replace")


def write_config(path: Path, broker_port: int, servers: list[UnitServer]) -> None:
    path.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "e2e-{os.getpid()}"\n'
        "reconnect_max_s = 1\n"
        + FAST_POLLING
        + f'\n[[connectors]]\nhost = "127.0.0.1:{servers[0].port}"\nid = "garage"\n'
        + f'\n[[connectors]]\nhost = "127.0.0.1:{servers[1].port}"\nname = "Car Port"\n'
        # The third has neither id nor name: its serial number names its topics.
        + f'\n[[connectors]]\nhost = "127.0.0.1:{servers[2].port}"\n'
    )


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config), "--log-level", "info"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def site(broker: Broker, tmp_path: Path) -> AsyncIterator[Site]:
    units = [
        SimulatedUnit(
            "SIME2E000001",
            wiring="eu_three_phase",
            seed=1,
            scenario=Scenario(start_state="charging"),
        ),
        SimulatedUnit("SIME2E000002", wiring="na_split_phase", seed=2),
        SimulatedUnit("SIME2E000003", wiring="eu_three_phase", seed=3),
    ]
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(UnitServer(unit)) for unit in units]
        config = tmp_path / "bridge.toml"
        write_config(config, broker.port, servers)
        log = tmp_path / "bridge.log"
        process = start_bridge(config, log)
        try:
            yield Site(units, servers, config, process, log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


UNIT_IDS = ("garage", "car_port", "sime2e000003")


def everything_published(found: dict[str, str]) -> bool:
    if found.get("twc3/bridge/state") != "online":
        return False
    for unit_id in UNIT_IDS:
        if found.get(f"twc3/{unit_id}/availability") != "online":
            return False
        for endpoint in ("vitals", "lifetime", "version", "wifi_status"):
            if f"twc3/{unit_id}/{endpoint}" not in found:
                return False
    return True


async def test_bridge_publishes_every_field_of_every_unit(site: Site, broker: Broker) -> None:
    """After start, each unit's bodies and fields are retained with the unit's own values."""
    async with asyncio.timeout(60):
        found = await wait_for_retained(broker.port, everything_published, pattern="twc3/#")
    for unit_id, unit in zip(UNIT_IDS, site.units, strict=True):
        assert found[f"twc3/{unit_id}/version/serial_number"] == unit.serial
        vitals = json.loads(found[f"twc3/{unit_id}/vitals"])
        assert set(vitals) == set(unit.vitals())
        assert found[f"twc3/{unit_id}/vitals/vehicle_connected"] in {"true", "false"}
        assert float(found[f"twc3/{unit_id}/vitals/grid_v"]) > 100
        assert "currentA_a" in vitals
        assert f"twc3/{unit_id}/vitals/currentA_a" in found
        assert found[f"twc3/{unit_id}/vitals/current_alerts"].startswith("[")
        assert float(found[f"twc3/{unit_id}/lifetime/energy_wh"]) >= 0
        wifi = json.loads(found[f"twc3/{unit_id}/wifi_status"])
        assert found[f"twc3/{unit_id}/wifi_status/wifi_ssid"] == wifi["wifi_ssid"]
    assert all(payload != "" for payload in found.values())
    assert not any(payload.lower() == "nan" for payload in found.values())


async def test_broker_restart_republishes_everything(site: Site, broker: Broker) -> None:
    """A broker that loses every retained message gets the whole state back after it restarts."""
    async with asyncio.timeout(90):
        before = await wait_for_retained(broker.port, everything_published, pattern="twc3/#")
        broker.stop()
        await asyncio.sleep(1.5)  # the bridge notices and keeps polling meanwhile
        broker.start()
        after = await wait_for_retained(
            broker.port, lambda found: set(before) <= set(found), pattern="twc3/#", limit_s=30
        )
    assert after["twc3/bridge/state"] == "online"
    assert site.process.poll() is None
    assert "MQTT: connected to" in site.log_text()
    assert "again" in site.log_text()


async def test_unreachable_unit_goes_offline_while_others_keep_updating(
    site: Site, broker: Broker
) -> None:
    """Refusing connections turns one unit offline; the others' uptime keeps moving."""
    async with asyncio.timeout(90):
        await wait_for_retained(broker.port, everything_published, pattern="twc3/#")
        await site.servers[1].set_refusing(True)
        offline = await wait_for_retained(
            broker.port,
            lambda found: found.get("twc3/car_port/availability") == "offline",
            pattern="twc3/#",
        )
        first_uptime = offline["twc3/garage/vitals/uptime_s"]
        later = await wait_for_retained(
            broker.port,
            lambda found: found.get("twc3/garage/vitals/uptime_s") != first_uptime,
            pattern="twc3/#",
        )
    assert later["twc3/garage/availability"] == "online"
    assert later["twc3/sime2e000003/availability"] == "online"
    assert later["twc3/car_port/availability"] == "offline"
    assert "connection refused" in later["twc3/car_port/poller/last_error"]
    log = site.log_text()
    assert log.count("unit car_port") >= 1
    assert log.count("offline: connection refused") == 1  # one line, not one per retry

    async with asyncio.timeout(30):
        await site.servers[1].set_refusing(False)
        back = await wait_for_retained(
            broker.port,
            lambda found: found.get("twc3/car_port/availability") == "online",
            pattern="twc3/#",
        )
    assert back["twc3/car_port/availability"] == "online"


async def test_sigterm_publishes_offline_and_exits_cleanly(site: Site, broker: Broker) -> None:
    """SIGTERM makes the bridge publish bridge/state offline itself and exit with code 0."""
    async with asyncio.timeout(60):
        await wait_for_retained(broker.port, everything_published, pattern="twc3/#")
        site.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(site.process.wait, 15)
        found = await collect_retained(broker.port, "twc3/bridge/state")
    assert site.process.returncode == 0, site.log_text()
    assert found["twc3/bridge/state"] == "offline"
    assert "Traceback" not in site.log_text()
