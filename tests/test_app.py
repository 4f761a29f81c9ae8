"""The bridge: once startup is over, the long-lived heap is frozen for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import logging
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
from bridge.core.derived import SessionEnergy
from bridge.core.models import ENDPOINTS
from bridge.runtime.app import NOT_FOUND_URL, Bridge, connector_label, connector_owner
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


# --- connectors followed by serial ---------------------------------------------------------------

CONFIGURED = "192.0.2.50"
LAST_FOUND = "192.0.2.77"
SERIAL = "PGT0000000001"


def followed_config(
    data_dir: Path, connector: dict[str, str], *, networks: bool = True
) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(data_dir)},
            "discovery": {"networks": ["192.0.2.0/24"] if networks else []},
            "connectors": [connector],
        }
    )


def remember(data_dir: Path, *, energy_wh: float = 0.0) -> None:
    """A state file from an earlier run: the unit last found at LAST_FOUND, a saved total."""
    earlier = Bridge(followed_config(data_dir, {"host": CONFIGURED, "id": "garage"}))
    earlier.state_file.keep_address(SERIAL, LAST_FOUND)
    earlier.state_file.keep_energy("garage", SERIAL, SessionEnergy(total_wh=energy_wh))
    assert earlier.state_file.flush()


@pytest.mark.parametrize("serial", [SERIAL, None], ids=["configured serial", "serial saved"])
def test_a_followed_unit_starts_where_it_was_last_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, serial: str | None
) -> None:
    remember(tmp_path)
    caplog.set_level(logging.INFO)
    connector = {"host": CONFIGURED, "id": "garage"} | ({"serial": serial} if serial else {})
    instance = Bridge(followed_config(tmp_path, connector))
    assert instance.pollers[0].address == LAST_FOUND
    assert instance.clients[0].base_url == f"http://{LAST_FOUND}"
    assert instance.config.connectors[0].host == CONFIGURED  # the configured host stays
    expected = (
        f"unit garage ({CONFIGURED}): starting at {LAST_FOUND}, where it was last found "
        f'(configured host {CONFIGURED}; set host = "{LAST_FOUND}" to make it permanent)'
    )
    assert [r.getMessage() for r in caplog.records if "starting at" in r.getMessage()] == [expected]


def test_without_following_the_configured_host_is_polled(tmp_path: Path) -> None:
    remember(tmp_path)
    connector = {"host": CONFIGURED, "id": "garage", "serial": SERIAL}
    instance = Bridge(followed_config(tmp_path, connector, networks=False))
    assert instance.pollers[0].address == CONFIGURED
    assert instance.clients[0].base_url == f"http://{CONFIGURED}"


def test_a_connector_by_serial_alone_is_keyed_and_named_by_its_serial(tmp_path: Path) -> None:
    remember(tmp_path, energy_wh=5000.0)
    connector = ConnectorConfig(serial=SERIAL)
    assert connector_owner(connector) == f"serial:{SERIAL}"
    assert connector_label(connector) == f"serial {SERIAL}"
    named = ConnectorConfig(serial=SERIAL, name="Garage")
    assert connector_owner(named) == "garage"
    assert connector_label(named) == f"garage (serial {SERIAL})"
    instance = Bridge(followed_config(tmp_path, {"serial": SERIAL}))
    poller = instance.pollers[0]
    # Found where it was last seen, its saved total continued by serial before any answer.
    assert poller.address == LAST_FOUND
    assert poller.wanted_serial == SERIAL
    assert poller.derivation.energy.total_wh == 5000.0
    assert poller.topics is not None
    assert poller.topics.unit_id == "pgt0000000001"


def test_a_connector_by_serial_alone_never_seen_waits_to_be_found(tmp_path: Path) -> None:
    instance = Bridge(followed_config(tmp_path, {"serial": SERIAL}))
    poller = instance.pollers[0]
    assert poller.address is None
    assert poller.unreachable_since() is not None
    assert instance.clients[0].base_url == NOT_FOUND_URL
