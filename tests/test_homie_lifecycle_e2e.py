"""Homie ``$state`` follows the data connection: the real bridge, a broker and a cutting proxy.

The bridge reaches the broker through a loopback TCP proxy that reads the client id of each
CONNECT packet, so the test can cut exactly one of the bridge's two connections, as a network
fault would (no DISCONNECT), and watch ``$state`` on the broker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, subscriber, wait_for_retained
from tests.test_fault_suite import (
    Bridge,
    assert_clean_log,
    connector_block,
    polling,
    run_bridge,
    wait_until,
)

pytestmark = pytest.mark.broker

STATE = "homie/twc3-bridge/$state"
HOMIE = '\n[homie]\nenabled = true\nbase_topic = "homie"\ndevice_id = "twc3-bridge"\n'
MQTT_CONNECT = 0x10


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT control packet: fixed header, remaining length, the rest."""
    header = await reader.readexactly(1)
    length_bytes = b""
    length = 0
    for shift in range(0, 28, 7):
        byte = await reader.readexactly(1)
        length_bytes += byte
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
    return header + length_bytes + await reader.readexactly(length)


def varint(data: bytes, at: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``at``: its value and the index after it."""
    value = 0
    for shift in range(0, 28, 7):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    return value, at


def connect_client_id(packet: bytes) -> str:
    """The client id of an MQTT 3.1.1 or 5 CONNECT packet."""
    assert packet[0] & 0xF0 == MQTT_CONNECT, packet[:8]
    _, at = varint(packet, 1)
    name_length = int.from_bytes(packet[at : at + 2])
    at += 2 + name_length
    level = packet[at]
    at += 1 + 1 + 2  # level, connect flags, keep alive
    if level == 5:
        properties_length, at = varint(packet, at)
        at += properties_length
    id_length = int.from_bytes(packet[at : at + 2])
    return packet[at + 2 : at + 2 + id_length].decode()


@dataclass
class Piped:
    """One client connection through the proxy."""

    client_id: str
    downstream: asyncio.StreamWriter
    upstream: asyncio.StreamWriter

    def cut(self) -> None:
        """Drop both sides at once, without an MQTT DISCONNECT: what a network fault does."""
        self.downstream.transport.abort()
        self.upstream.transport.abort()


@dataclass
class CuttingProxy:
    """A loopback TCP proxy in front of the broker that can cut the connections of one client."""

    broker_port: int
    port: int = 0
    open: list[Piped] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await read_packet(reader)
            client_id = connect_client_id(first)
            if client_id in self.blocked:
                self.refused.append(client_id)
                writer.transport.abort()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        piped = Piped(client_id, writer, up_writer)
        self.seen.append(piped.client_id)
        self.open.append(piped)
        up_writer.write(first)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self.open.remove(piped)

    def connected(self, client_id: str) -> bool:
        """Whether ``client_id`` has a connection through the proxy now."""
        return any(piped.client_id == client_id for piped in self.open)

    def cut(self, client_id: str) -> int:
        """Cut every open connection of ``client_id``; how many there were."""
        victims = [piped for piped in self.open if piped.client_id == client_id]
        for piped in victims:
            piped.cut()
        return len(victims)


@contextlib.asynccontextmanager
async def cutting_proxy(broker_port: int) -> AsyncIterator[CuttingProxy]:
    """A running :class:`CuttingProxy` on a free loopback port."""
    proxy = CuttingProxy(broker_port)
    server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield proxy
        finally:
            for piped in list(proxy.open):
                piped.cut()


@dataclass
class StateLog:
    """Every ``$state`` payload the broker delivered live, in order."""

    payloads: list[str] = field(default_factory=list)

    def since(self, mark: int) -> list[str]:
        """The payloads after the first ``mark`` ones."""
        return self.payloads[mark:]


@contextlib.asynccontextmanager
async def watch_state(port: int) -> AsyncIterator[StateLog]:
    """Record ``$state`` at the broker while the block runs."""
    log = StateLog()

    async def record(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                log.payloads.append(message.payload.decode())

    async with subscriber(port, STATE) as client:
        task = asyncio.create_task(record(client))
        try:
            yield log
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def lost_then_ready(log: StateLog, mark: int) -> bool:
    after = log.since(mark)
    return "lost" in after and "ready" in after[after.index("lost") :]


@contextlib.asynccontextmanager
async def homie_bridge(
    tmp_path: Path, broker: Broker
) -> AsyncIterator[tuple[Bridge, CuttingProxy, str]]:
    """The bridge with Homie on, one simulated unit, its broker connections through a proxy."""
    unit = SimulatedUnit("SIMHLIFE0001", seed=7, scenario=Scenario(auto_cycle=False))
    async with (
        UnitServer(unit) as server,
        cutting_proxy(broker.port) as proxy,
        run_bridge(
            tmp_path, proxy.port, HOMIE + polling() + connector_block("garage", server)
        ) as bridge,
    ):
        client_id = tomllib.loads((tmp_path / "bridge.toml").read_text())["mqtt"]["client_id"]
        yield bridge, proxy, client_id


async def test_homie_state_is_lost_while_only_the_data_connection_is_down(
    broker: Broker, tmp_path: Path
) -> None:
    """Cut the data connection: lost, then ready on its return; cut the Will's: the same."""
    async with homie_bridge(tmp_path, broker) as (bridge, proxy, client_id):
        will_id = f"{client_id}-will"
        async with watch_state(broker.port) as log, asyncio.timeout(90):
            await wait_for_retained(broker.port, lambda f: f.get(STATE) == "ready")
            await wait_until(lambda: proxy.connected(will_id), 20, "the Will connection")

            mark = len(log.payloads)
            connections_before = proxy.seen.count(client_id)
            assert proxy.cut(client_id) == 1
            await wait_until(lambda: lost_then_ready(log, mark), 30, "lost, then ready")
            # Only the data connection went: the Will connection never reconnected.
            assert proxy.seen.count(will_id) == 1
            assert proxy.seen.count(client_id) == connections_before + 1
            assert "published homie/twc3-bridge/$state=lost" in bridge.log_text()
            found = await wait_for_retained(broker.port, lambda f: f.get(STATE) == "ready")
            assert found["twc3/bridge/state"] == "online"

            mark = len(log.payloads)
            assert proxy.cut(will_id) == 1
            await wait_until(lambda: lost_then_ready(log, mark), 30, "lost, then ready again")
            assert proxy.seen.count(client_id) == connections_before + 1
            await wait_for_retained(broker.port, lambda f: f.get(STATE) == "ready")

            mark = len(log.payloads)
            bridge.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(bridge.process.wait, 15) == 0
            found = await collect_retained(broker.port, "#")
            assert found[STATE] == "disconnected"
            assert found["twc3/bridge/state"] == "offline"
            # Both connections are closed by now: a clean exit sent no lost.
            assert log.since(mark) == ["disconnected"]
        assert_clean_log(bridge)


async def test_homie_state_stays_lost_while_the_data_connection_cannot_return(
    broker: Broker, tmp_path: Path
) -> None:
    """Data connection cut and then refused: $state says lost and stays so until it is back."""
    async with homie_bridge(tmp_path, broker) as (bridge, proxy, client_id):
        async with watch_state(broker.port) as log, asyncio.timeout(90):
            await wait_for_retained(broker.port, lambda f: f.get(STATE) == "ready")
            await wait_until(lambda: proxy.connected(f"{client_id}-will"), 20, "Will connection")
            mark = len(log.payloads)
            proxy.blocked.add(client_id)
            assert proxy.cut(client_id) == 1
            await wait_until(lambda: "lost" in log.since(mark), 20, "lost")
            await wait_until(lambda: len(proxy.refused) >= 2, 30, "two refused reconnects")
            found = await collect_retained(broker.port, STATE)
            assert found[STATE] == "lost"
            assert "ready" not in log.since(mark)
            proxy.blocked.clear()
            await wait_until(lambda: lost_then_ready(log, mark), 30, "ready after the outage")
        assert bridge.alive()
        assert_clean_log(bridge)
