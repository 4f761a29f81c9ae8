"""A unit found at run time is published like a configured one (real bridge, broker and sockets)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from bridge.adapters.survey import Found
from bridge.core.config import BridgeConfig
from bridge.runtime.app import Bridge
from bridge.runtime.statefile import StateFile
from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, wait_for_retained

CONFIGURED_SERIAL = "SIMFOUNDE2E01"
FOUND_SERIAL = "SIMFOUNDE2E02"
FOUND_ADDRESS = "127.0.0.3"
LIMIT_S = 60.0


def _config(data_dir: Path, broker_port: int, configured_port: int) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(data_dir)},
            "mqtt": {"host": "127.0.0.1", "port": broker_port},
            "homie": {"enabled": True},
            "discovery": {"networks": ["127.0.0.0/29"], "add_new": True},
            "polling": {
                "vitals_s": 1,
                "vitals_idle_s": 1,
                "connect_timeout_s": 1,
                "read_timeout_s": 2,
                "backoff_max_s": 2,
            },
            "connectors": [{"host": f"127.0.0.2:{configured_port}", "id": "garage"}],
        }
    )


def _published(found: dict[str, str], unit_id: str) -> bool:
    """Online, with values, a Homie node and discovery configs pointing at its topics."""
    return (
        found.get(f"twc3/{unit_id}/availability") == "online"
        and f"twc3/{unit_id}/derived/energy_wh" in found
        and unit_id in found.get("homie/twc3-bridge/$nodes", "").split(",")
        and any(
            topic.startswith("homeassistant/") and f'"twc3/{unit_id}/' in payload
            for topic, payload in found.items()
        )
    )


async def test_a_unit_found_at_run_time_is_published_announced_and_kept(
    broker: Broker, tmp_path: Path
) -> None:
    configured = SimulatedUnit(CONFIGURED_SERIAL, scenario=Scenario(auto_cycle=False))
    found_unit = SimulatedUnit(FOUND_SERIAL, scenario=Scenario(auto_cycle=False))
    unit_id = FOUND_SERIAL.lower()
    async with (
        UnitServer(configured, host="127.0.0.2") as configured_server,
        UnitServer(found_unit, host=FOUND_ADDRESS) as found_server,
    ):
        instance = Bridge(_config(tmp_path, broker.port, configured_server.port))
        stop = asyncio.Event()
        async with asyncio.timeout(LIMIT_S), asyncio.TaskGroup() as group:
            running = group.create_task(instance.run(stop))
            await wait_for_retained(broker.port, lambda f: _published(f, "garage"), limit_s=30)
            # What the follower hands over for a unit no connector claims.
            instance.add_found_unit(
                Found(ipaddress.IPv4Address(FOUND_ADDRESS), found_server.port, FOUND_SERIAL)
            )
            retained = await wait_for_retained(
                broker.port, lambda f: _published(f, unit_id), limit_s=30
            )
            stop.set()
            await running
    assert retained["twc3/garage/availability"] == "online"
    saved = StateFile(tmp_path / "state.json")
    assert saved.found_units() == {FOUND_SERIAL: f"{FOUND_ADDRESS}:{found_server.port}"}
    assert saved.address_of(FOUND_SERIAL) == f"{FOUND_ADDRESS}:{found_server.port}"
    assert saved.published_units()[unit_id] == unit_id
