"""The real HTTP client moved between two simulated units on 127.0.0.2 and 127.0.0.3."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from bridge.adapters.twc import TwcClient
from bridge.core.config import PollingConfig, http_base_url
from bridge.core.outbox import Outbox
from bridge.runtime.poller import ConnectorPoller, IdRegistry
from bridge.sim.simulator import SimulatedUnit, UnitServer
from tests.conftest import free_port
from tests.test_poller import FakeTime

OLD_HOST = "127.0.0.2"
NEW_HOST = "127.0.0.3"
FOLLOWED = "PGT0000000001"
STRANGER = "PGT0000000002"
TIMEOUT_S = 30


@contextlib.asynccontextmanager
async def two_addresses() -> AsyncIterator[int]:
    """A stranger unit at OLD_HOST and the followed one at NEW_HOST, on one port."""
    port = free_port(OLD_HOST)
    async with (
        UnitServer(SimulatedUnit(STRANGER, seed=2), host=OLD_HOST, port=port),
        UnitServer(SimulatedUnit(FOLLOWED, seed=1), host=NEW_HOST, port=port),
    ):
        yield port


def serial_in(body: bytes) -> str:
    serial: str = json.loads(body)["serial_number"]
    return serial


async def test_retarget_drops_the_kept_alive_connection() -> None:
    """After a retarget the next request reaches the new address, not the old open connection."""
    async with asyncio.timeout(TIMEOUT_S), two_addresses() as port:
        client = TwcClient(f"http://{OLD_HOST}:{port}", connect_timeout_s=2, read_timeout_s=5)
        try:
            assert serial_in(await client.fetch("version")) == STRANGER
            client.retarget(f"http://{NEW_HOST}:{port}")
            assert client.base_url == f"http://{NEW_HOST}:{port}"
            assert serial_in(await client.fetch("version")) == FOLLOWED
            assert serial_in(await client.fetch("version")) == FOLLOWED
        finally:
            await client.aclose()


async def test_a_followed_unit_refuses_the_stranger_then_follows_the_move() -> None:
    async with asyncio.timeout(TIMEOUT_S), two_addresses() as port:
        old, new = f"{OLD_HOST}:{port}", f"{NEW_HOST}:{port}"
        client = TwcClient(http_base_url(old), connect_timeout_s=2, read_timeout_s=5)
        time_source = FakeTime()
        outbox = Outbox(clock=time_source.clock)
        poller = ConnectorPoller(
            label="garage",
            configured_id="garage",
            base_topic="twc3",
            polling=PollingConfig(offline_after=2),
            fetcher=client,
            outbox=outbox,
            registry=IdRegistry(),
            clock=time_source.clock,
            sleep=time_source.sleep,
            address=old,
            serial=FOLLOWED,
            retarget=lambda host: client.retarget(http_base_url(host)),
            following=True,
        )
        try:
            for _ in range(3):
                await poller.poll_once()
            assert poller.status.online is False
            assert poller.status.serial is None
            assert outbox.get("twc3/garage/vitals") is None
            assert poller.unreachable_since() is not None

            poller.move_to(new)
            assert outbox.get("twc3/garage/derived/reachability") == "moved"
            for _ in range(4):
                await poller.poll_once()
            assert poller.status.serial == FOLLOWED
            assert poller.status.online is True
            assert outbox.get("twc3/garage/availability") == "online"
            assert outbox.get("twc3/garage/derived/reachability") == "reachable"
            assert outbox.get("twc3/garage/vitals") is not None
            assert poller.unreachable_since() is None
        finally:
            await client.aclose()
