"""Home Assistant discovery through the real bridge process and a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiomqtt
import pytest

from bridge.presentation.entities import ENTITIES, entities_for_fields
from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, subscriber, wait_for_retained

pytestmark = pytest.mark.broker

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

SERIALS = ("SIMDISC00001", "SIMDISC00002", "SIMDISC00003")


def expected_config_count(unit: SimulatedUnit) -> int:
    """How many entities a unit's four bodies give, plus every derived value."""
    bodies = {
        "vitals": unit.vitals(),
        "lifetime": unit.lifetime(),
        "version": unit.version(),
        "wifi_status": unit.wifi_status(),
    }
    # Units are held idle: phase_mode appears only once a charge has shown the wiring.
    derived = sum(1 for e in ENTITIES if e.endpoint == "derived" and e.field != "phase_mode")
    return derived + sum(
        len(entities_for_fields(endpoint, list(body))) for endpoint, body in bodies.items()
    )


class Bridge:
    """The bridge process, restartable with a new config; its state folder stays the same."""

    def __init__(self, workdir: Path, broker: Broker) -> None:
        self.workdir = workdir
        self.broker = broker
        self.config = workdir / "bridge.toml"
        self.log = workdir / "bridge.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, servers: list[UnitServer], mode: str = "entity") -> None:
        """Write a config naming each server's unit."""
        connectors = "".join(
            f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nname = "Unit {index}"\n'
            for index, server in enumerate(servers, start=1)
        )
        self.config.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\nclient_id = "disc-e2e"\n'
            f'\n[homeassistant]\ndiscovery = "{mode}"\n'
            f'\n[bridge]\ndata_dir = "{self.workdir / "data"}"\n' + POLLING + connectors
        )

    def start(self) -> None:
        """Start the bridge process."""
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(self.config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    async def stop(self) -> None:
        """SIGTERM, and wait for a clean exit."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """Kill the process if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
async def units() -> AsyncIterator[tuple[list[SimulatedUnit], list[UnitServer]]]:
    idle = Scenario(auto_cycle=False)
    simulated = [
        SimulatedUnit(serial, seed=index, scenario=idle) for index, serial in enumerate(SERIALS)
    ]
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(UnitServer(unit)) for unit in simulated]
        yield simulated, servers


@pytest.fixture
def bridge(tmp_path: Path, broker: Broker) -> Iterator[Callable[[], Bridge]]:
    created: list[Bridge] = []

    def make() -> Bridge:
        instance = Bridge(tmp_path, broker)
        created.append(instance)
        return instance

    yield make
    for instance in created:
        instance.kill()


def configs_of(found: dict[str, str], serial: str) -> dict[str, str]:
    node = f"/twc3_{serial.lower()}/"
    return {
        topic: payload
        for topic, payload in found.items()
        if node in topic and topic.endswith("/config")
    }


def all_units_announced(units: list[SimulatedUnit]) -> Callable[[dict[str, str]], bool]:
    def check(found: dict[str, str]) -> bool:
        return all(
            len(configs_of(found, unit.serial)) >= expected_config_count(unit) for unit in units
        ) and any("twc3_bridge" in topic for topic in found)

    return check


async def test_every_entity_config_is_retained_and_points_at_published_topics(
    units: tuple[list[SimulatedUnit], list[UnitServer]],
    bridge: Callable[[], Bridge],
    broker: Broker,
) -> None:
    """After start each unit has one retained config per field, each reading a retained topic."""
    simulated, servers = units
    instance = bridge()
    instance.write_config(servers)
    instance.start()
    async with asyncio.timeout(60):
        configs = await wait_for_retained(
            broker.port, all_units_announced(simulated), pattern="homeassistant/#"
        )
        states = await collect_retained(broker.port, "twc3/#")
    for unit in simulated:
        mine = configs_of(configs, unit.serial)
        assert len(mine) == expected_config_count(unit)
        for payload_text in mine.values():
            payload = json.loads(payload_text)
            assert payload["device"]["serial_number"] == unit.serial
            assert payload["device"]["identifiers"] == [f"twc3_{unit.serial.lower()}"]
            assert payload["state_topic"] in states, payload["state_topic"]
            assert payload["availability_mode"] == "all"
    bridge_config = json.loads(configs["homeassistant/binary_sensor/twc3_bridge_twc3/state/config"])
    assert bridge_config["state_topic"] == "twc3/bridge/state"
    assert "availability" not in bridge_config


async def test_removed_connector_loses_its_configs_after_restart(
    units: tuple[list[SimulatedUnit], list[UnitServer]],
    bridge: Callable[[], Bridge],
    broker: Broker,
) -> None:
    """Dropping a connector from the config and restarting removes its retained configs."""
    simulated, servers = units
    instance = bridge()
    instance.write_config(servers)
    instance.start()
    async with asyncio.timeout(90):
        await wait_for_retained(
            broker.port, all_units_announced(simulated), pattern="homeassistant/#"
        )
        await instance.stop()
        instance.write_config(servers[:2])
        instance.start()
        found = await wait_for_retained(
            broker.port,
            lambda found: not configs_of(found, SERIALS[2]) and bool(configs_of(found, SERIALS[0])),
            pattern="homeassistant/#",
        )
    assert len(configs_of(found, SERIALS[0])) == expected_config_count(simulated[0])
    assert len(configs_of(found, SERIALS[1])) == expected_config_count(simulated[1])
    assert "removing" in instance.log.read_text()


async def test_one_home_assistant_birth_triggers_exactly_one_reannounce(
    units: tuple[list[SimulatedUnit], list[UnitServer]],
    bridge: Callable[[], Bridge],
    broker: Broker,
) -> None:
    """One `online` on homeassistant/status republishes every config once, then the states."""
    simulated, servers = units
    instance = bridge()
    instance.write_config(servers)
    instance.start()
    async with asyncio.timeout(60):
        retained = await wait_for_retained(
            broker.port, all_units_announced(simulated), pattern="homeassistant/#"
        )
        expected = {topic for topic in retained if topic.endswith("/config")}
        received: dict[str, int] = {}
        order: list[str] = []
        async with subscriber(broker.port, "#") as client:
            await client.publish("homeassistant/status", b"online", qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(6):
                    async for message in client.messages:
                        topic = str(message.topic)
                        if message.retain:
                            continue  # the retained copies every new subscriber gets
                        order.append(topic)
                        if topic.endswith("/config"):
                            received[topic] = received.get(topic, 0) + 1
    assert set(received) == expected
    assert set(received.values()) == {1}
    # Unchanged values (the serial number is read hourly) arrive again only through the
    # re-announce, and only after every config.
    republished = [i for i, topic in enumerate(order) if topic.endswith("/version/serial_number")]
    last_config = max(i for i, topic in enumerate(order) if topic.endswith("/config"))
    assert len(republished) == len(SERIALS)
    assert last_config < min(republished)
    assert instance.log.read_text().count("Home Assistant came online") == 1


async def test_device_based_discovery_publishes_one_config_per_device(
    units: tuple[list[SimulatedUnit], list[UnitServer]],
    bridge: Callable[[], Bridge],
    broker: Broker,
) -> None:
    """With discovery = "device" each unit is one device config holding all its components."""
    simulated, servers = units
    instance = bridge()
    instance.write_config(servers, mode="device")
    instance.start()

    def devices_announced(found: dict[str, str]) -> bool:
        return all(
            f"homeassistant/device/twc3_{serial.lower()}/config" in found for serial in SERIALS
        )

    async with asyncio.timeout(60):
        found = await wait_for_retained(broker.port, devices_announced, pattern="homeassistant/#")
    for unit in simulated:
        payload = json.loads(found[f"homeassistant/device/twc3_{unit.serial.lower()}/config"])
        assert len(payload["components"]) == expected_config_count(unit)
        assert payload["origin"]["name"] == "twc3-mqtt-bridge"
    assert not any(topic.startswith("homeassistant/sensor/") for topic in found)
    with contextlib.suppress(aiomqtt.MqttError):
        await instance.stop()
