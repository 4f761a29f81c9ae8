"""Homie 4 publishing through the real bridge process and a real mosquitto."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bridge.presentation.homie import EXTENSIONS, is_homie_id
from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, wait_for_retained

pytestmark = pytest.mark.broker

ROOT = "homie/twc3-bridge"
SERIALS = ("SIMHOMIE0001", "SIMHOMIE0002")
POLLING = """
[polling]
vitals_s = 1
vitals_idle_s = 1
lifetime_s = 30
wifi_status_s = 30
version_s = 3600
connect_timeout_s = 1
read_timeout_s = 2
"""
INTEGER = re.compile(r"-?\d+")
FLOAT = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


@pytest.fixture
async def servers() -> AsyncIterator[list[UnitServer]]:
    idle = Scenario(auto_cycle=False)
    units = [SimulatedUnit(serial, seed=i, scenario=idle) for i, serial in enumerate(SERIALS)]
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(UnitServer(unit)) for unit in units]


@pytest.fixture
def bridge_process(
    tmp_path: Path, broker: Broker, servers: list[UnitServer]
) -> Iterator[subprocess.Popen[bytes]]:
    connectors = "".join(
        f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nname = "Unit {index}"\n'
        f'id = "car_port_{index}"\n'
        for index, server in enumerate(servers, start=1)
    )
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "homie-e2e"\n'
        '\n[homie]\nenabled = true\nbase_topic = "homie"\ndevice_id = "twc3-bridge"\n'
        f'\n[bridge]\ndata_dir = "{tmp_path / "data"}"\n' + POLLING + connectors
    )
    with (tmp_path / "bridge.log").open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait(10)


def device_ready(found: dict[str, str]) -> bool:
    nodes = found.get(f"{ROOT}/$nodes", "").split(",")
    return (
        found.get(f"{ROOT}/$state") == "ready"
        and len(nodes) == 2
        and all(f"{ROOT}/{node}/$properties" in found for node in nodes)
    )


def check_value(datatype: str, payload: str, format_: str | None) -> None:
    if datatype == "integer":
        assert INTEGER.fullmatch(payload), payload
    elif datatype == "float":
        assert FLOAT.fullmatch(payload), payload
    elif datatype == "boolean":
        assert payload in {"true", "false"}
    elif datatype == "enum":
        assert format_ is not None
        assert payload in format_.split(",")
    else:
        assert datatype == "string"
        assert payload


async def test_bridge_publishes_a_valid_homie_device_and_disconnects_cleanly(
    broker: Broker, bridge_process: subprocess.Popen[bytes]
) -> None:
    """Device, both nodes and every property are retained and valid; SIGTERM says disconnected."""
    async with asyncio.timeout(60):
        found = await wait_for_retained(broker.port, device_ready, pattern="homie/#")
        # Values follow the attributes within one drain; read once more to be sure of them.
        found = await collect_retained(broker.port, "homie/#")
    assert found[f"{ROOT}/$homie"] == "4.0.0"
    assert found[f"{ROOT}/$name"]
    assert found[f"{ROOT}/$extensions"] == EXTENSIONS
    nodes = found[f"{ROOT}/$nodes"].split(",")
    assert sorted(nodes) == ["car-port-1", "car-port-2"]
    for node in nodes:
        assert found[f"{ROOT}/{node}/$name"].startswith("Unit ")
        assert found[f"{ROOT}/{node}/$type"]
        properties = found[f"{ROOT}/{node}/$properties"].split(",")
        assert len(properties) == len(set(properties)) > 40
        assert {"grid-v", "derived-power-w", "vehicle-connected"} <= set(properties)
        for prop in properties:
            assert is_homie_id(prop), prop
            base = f"{ROOT}/{node}/{prop}"
            datatype = found[f"{base}/$datatype"]
            assert found[f"{base}/$name"]
            format_ = found.get(f"{base}/$format")
            if datatype == "enum":
                assert format_
            assert base in found, f"no value for {base}"
            check_value(datatype, found[base], format_)
        assert found[f"{ROOT}/{node}/grid-v/$unit"] == "V"
        assert found[f"{ROOT}/{node}/derived-power-w/$unit"] == "W"
    for topic in found:
        for level in topic.split("/")[1:]:
            assert level.startswith("$") or is_homie_id(level), topic

    bridge_process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(bridge_process.wait, 15) == 0
    async with asyncio.timeout(30):
        after = await collect_retained(broker.port, "#")
    assert after[f"{ROOT}/$state"] == "disconnected"
    assert after["twc3/bridge/state"] == "offline"


async def test_a_killed_bridge_leaves_homie_state_lost(
    broker: Broker, bridge_process: subprocess.Popen[bytes]
) -> None:
    """SIGKILL fires both Wills: twc3/bridge/state is offline and $state is lost."""
    async with asyncio.timeout(60):
        await wait_for_retained(broker.port, device_ready, pattern="homie/#")
        bridge_process.kill()
        await asyncio.to_thread(bridge_process.wait, 10)
        found = await wait_for_retained(
            broker.port,
            lambda found: (
                found.get(f"{ROOT}/$state") == "lost"
                and found.get("twc3/bridge/state") == "offline"
            ),
        )
    assert found[f"{ROOT}/$homie"] == "4.0.0"
