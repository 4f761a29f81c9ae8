"""The bridge: once startup is over, the long-lived heap is frozen for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

import bridge.runtime.app
import bridge.runtime.housekeeping
import bridge.runtime.poller
from bridge.adapters.twc import TwcClient
from bridge.core.config import BridgeConfig, ConnectorConfig
from bridge.core.models import ENDPOINTS
from bridge.runtime.app import Bridge
from bridge.sim.simulator import SimulatedUnit, simulated_serial


def closed_port() -> int:
    """A loopback port nobody listens on: the MQTT link keeps retrying, the pollers go on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Body(httpx.AsyncByteStream):
    """A body streamed as a socket would deliver it (httpx pre-reads a bytes `content=`)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body


def simulated_client(units: dict[str, SimulatedUnit], connector: ConnectorConfig) -> TwcClient:
    assert connector.host is not None
    assert connector.base_url is not None
    unit = units[connector.host]

    def answer(request: httpx.Request) -> httpx.Response:
        status, body = unit.render(request.url.path)
        headers = {"content-length": str(len(body))}
        return httpx.Response(status, headers=headers, stream=_Body(body))

    return TwcClient(connector.base_url, transport=httpx.MockTransport(answer))


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's heap goes back to normal collection


@pytest.mark.usefixtures("unfrozen_afterwards")
@pytest.mark.parametrize("freeze", [True, False], ids=["freeze", "default"])
async def test_heap_frozen_only_when_asked_and_only_once_every_unit_was_asked_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freeze: bool
) -> None:
    monkeypatch.setattr(bridge.runtime.housekeeping, "SETTLE_CHECK_S", 0.05)
    # Startup asks each unit its four endpoints ~1 s apart; the order matters here, not the pace.
    monkeypatch.setattr(bridge.runtime.poller, "MIN_START_GAP_S", 0.05)
    monkeypatch.setattr(bridge.runtime.poller, "MIN_IDLE_S", 0.01)
    monkeypatch.setattr(bridge.runtime.poller, "MIN_REQUEST_GAP_S", 0.05)
    units = {f"unit{i}.invalid": SimulatedUnit(simulated_serial(i), seed=i) for i in (1, 2)}
    config = BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(tmp_path)},
            "mqtt": {"host": "127.0.0.1", "port": closed_port()},
            "connectors": [{"host": host, "id": host.partition(".")[0]} for host in units],
        }
    )
    instance = Bridge(
        config,
        client_factory=lambda c: simulated_client(units, c),
        freeze_heap_when_settled=freeze,
    )
    assert gc.get_freeze_count() == 0
    stop = asyncio.Event()
    seen_before_settled: list[bool] = []
    async with asyncio.timeout(30), asyncio.TaskGroup() as group:
        group.create_task(instance.run(stop))
        while not instance.settled():
            seen_before_settled.append(instance.heap_frozen)
            await asyncio.sleep(0.02)
        for _ in range(50):  # a few settle checks later
            if instance.heap_frozen:
                break
            await asyncio.sleep(0.02)
        stop.set()
    assert all(len(poller.attempted) == len(ENDPOINTS) for poller in instance.pollers)
    assert seen_before_settled
    assert not any(seen_before_settled)
    assert instance.heap_frozen is freeze
    assert (gc.get_freeze_count() > 0) is freeze
