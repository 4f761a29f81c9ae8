"""The survey and the follower over real sockets: simulated units on 127.0.0.2-.5, one port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from bridge.adapters.survey import survey
from bridge.core.config import DiscoveryConfig
from bridge.core.networks import parse_network
from bridge.core.outbox import Outbox
from bridge.presentation.topics import TopicLayout
from bridge.runtime.follow import Follower
from bridge.sim.simulator import SimulatedUnit, UnitServer
from tests.test_follow import AddressBook, FakeUnit

TIMEOUT_S = 30.0
SERIALS = {
    "127.0.0.2": "PGT22213075021",
    "127.0.0.3": "B7S24024J01612",
    "127.0.0.4": "A1B23456C78901",
    "127.0.0.5": "Z9Y87654X32109",
}
# Each connection is held open this long before it is served, so connections overlap whenever
# the survey lets them; the bound is then visible in the count.
HOLD_S = 0.05


class ConnectionCount:
    """Connections open at once over every server of a test, and the most seen."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0


class CountingServer(UnitServer):
    """A UnitServer that counts its open connections in a shared :class:`ConnectionCount`."""

    def __init__(
        self, unit: SimulatedUnit, count: ConnectionCount, *, host: str, port: int
    ) -> None:
        super().__init__(unit, host=host, port=port)
        self.count = count

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        self.count.now += 1
        self.count.most = max(self.count.most, self.count.now)
        try:
            await asyncio.sleep(HOLD_S)
            await super()._serve_connection(reader, writer, generation)
        finally:
            self.count.now -= 1


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        try:
            sock.bind((host, 0))
        except OSError as error:
            pytest.skip(f"cannot bind {host}: {error}")
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _units(count: ConnectionCount) -> AsyncIterator[int]:
    port = _free_port("127.0.0.2")
    async with contextlib.AsyncExitStack() as stack:
        for seed, (host, serial) in enumerate(SERIALS.items()):
            unit = SimulatedUnit(serial, seed=seed)
            await stack.enter_async_context(CountingServer(unit, count, host=host, port=port))
        yield port


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_survey_finds_exactly_the_units_within_the_concurrency(concurrency: int) -> None:
    count = ConnectionCount()
    async with asyncio.timeout(TIMEOUT_S), _units(count) as port:
        report = await survey(parse_network("127.0.0.0/29"), port, 2.0, concurrency)
    assert {str(found.address): found.serial for found in report.found} == SERIALS
    assert report.scanned == 6
    assert report.silent == 2
    assert 1 <= count.most <= concurrency


async def test_the_follower_finds_a_moved_unit_over_real_sockets() -> None:
    """The unit polled at .7 (nothing there) answers at .4: the follower moves it there."""
    count = ConnectionCount()
    moved = FakeUnit("garage", SERIALS["127.0.0.4"], "127.0.0.7", lost_at=0.0)
    unclaimed: list[str] = []
    book = AddressBook()
    async with asyncio.timeout(TIMEOUT_S), _units(count) as port:
        moved.polled_at = f"127.0.0.7:{port}"
        config = DiscoveryConfig(networks=["127.0.0.0/29"], port=port, concurrency=2)
        follower = Follower(
            config,
            units=lambda: [moved],
            outbox=Outbox(),
            layout=TopicLayout("twc3"),
            state_file=book,
            on_unclaimed=lambda found: unclaimed.append(found.serial),
            clock=lambda: 1000.0,
        )
        await follower.search()
    assert moved.moves == [f"127.0.0.4:{port}"]
    assert book.kept == [(SERIALS["127.0.0.4"], f"127.0.0.4:{port}")]
    assert sorted(unclaimed) == sorted(set(SERIALS.values()) - {SERIALS["127.0.0.4"]})
    assert count.most <= 2
