"""A discovery mode switch through the real bridge process and a real mosquitto hands over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiomqtt
import pytest

from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, subscriber, wait_for_retained
from tests.ha_schema import problems_in_discovery_message
from tests.test_fault_suite import (
    assert_clean_log,
    polling,
    run_bridge,
    stop_cleanly,
    wait_until,
)

pytestmark = pytest.mark.broker

SERIAL: Final = "SIMMIGR00001"
NODE: Final = f"twc3_{SERIAL.lower()}"
DEVICE_TOPIC: Final = f"homeassistant/device/{NODE}/config"
MIGRATE: Final = b'{"migrate_discovery":true}'
LIMIT_S: Final = 90.0


@dataclass
class DiscoveryCapture:
    """Every message seen under ``homeassistant/#``, in order: (topic, payload)."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def index(self, topic: str, payload: Callable[[bytes], bool]) -> int:
        """Where the first message on ``topic`` whose payload matches was seen."""
        for position, (name, body) in enumerate(self.messages):
            if name == topic and payload(body):
                return position
        pytest.fail(f"nothing matching seen on {topic}")


@contextlib.asynccontextmanager
async def discovery_capture(port: int) -> AsyncIterator[DiscoveryCapture]:
    """Record every discovery message while the block runs."""
    capture = DiscoveryCapture()

    async def record(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            raw = message.payload if isinstance(message.payload, bytes) else b""
            capture.messages.append((str(message.topic), raw))

    async with subscriber(port, "homeassistant/#") as client:
        task = asyncio.create_task(record(client))
        try:
            yield capture
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def unit_entity_topics(found: dict[str, str]) -> set[str]:
    """The unit's per-entity config topics among retained ones."""
    return {t for t in found if f"/{NODE}/" in t and t.endswith("/config") and "/device/" not in t}


def body(server: UnitServer, data_dir: Path, mode: str) -> str:
    return (
        f'\n[homeassistant]\ndiscovery = "{mode}"\n'
        f'\n[bridge]\ndata_dir = "{data_dir}"\n'
        + polling()
        + f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nname = "Migrating unit"\n'
    )


async def test_mode_switch_hands_entities_over_both_ways(broker: Broker, tmp_path: Path) -> None:
    """Entity → device → entity: migrate requests first, new configs next, old ones cleared."""
    unit = SimulatedUnit(SERIAL, seed=7, scenario=Scenario(auto_cycle=False))
    data_dir = tmp_path / "data"
    for run_dir in ("1", "2", "3"):
        (tmp_path / run_dir).mkdir()
    async with UnitServer(unit) as server:
        async with run_bridge(tmp_path / "1", broker.port, body(server, data_dir, "entity")) as run:
            first = await wait_for_retained(
                broker.port,
                lambda found: len(unit_entity_topics(found)) >= 10,
                pattern="homeassistant/#",
                limit_s=LIMIT_S,
            )
            await wait_until(lambda: data_dir.joinpath("state.json").exists(), LIMIT_S, "state")
            await stop_cleanly(run)
            assert_clean_log(run)
        old = unit_entity_topics(first)

        async with (
            discovery_capture(broker.port) as seen,
            run_bridge(tmp_path / "2", broker.port, body(server, data_dir, "device")) as run,
        ):
            found = await wait_for_retained(
                broker.port,
                lambda found: DEVICE_TOPIC in found and not unit_entity_topics(found),
                pattern="homeassistant/#",
                limit_s=LIMIT_S,
            )
            await stop_cleanly(run)
            assert_clean_log(run)
        for topic in old:
            assert (
                seen.index(topic, lambda payload: payload == MIGRATE)
                < seen.index(DEVICE_TOPIC, lambda payload: payload not in {b"", MIGRATE})
                < seen.index(topic, lambda payload: payload == b"")
            )
        assert "handed over to device mode" in run.log_text()

        async with (
            discovery_capture(broker.port) as back,
            run_bridge(tmp_path / "3", broker.port, body(server, data_dir, "entity")) as run,
        ):
            found = await wait_for_retained(
                broker.port,
                lambda found: DEVICE_TOPIC not in found and unit_entity_topics(found) >= old,
                pattern="homeassistant/#",
                limit_s=LIMIT_S,
            )
            await stop_cleanly(run)
            assert_clean_log(run)
        marker = back.index(DEVICE_TOPIC, lambda payload: payload == MIGRATE)
        cleared = back.index(DEVICE_TOPIC, lambda payload: payload == b"")
        for topic in old:
            assert marker < back.index(topic, lambda payload: payload not in {b"", MIGRATE})
            assert back.index(topic, lambda payload: payload not in {b"", MIGRATE}) < cleared
    for topic, payload in [*seen.messages, *back.messages]:
        problems = problems_in_discovery_message(topic, payload.decode())
        assert problems == [], (topic, problems)
    assert all(payload != MIGRATE.decode() for payload in found.values())
