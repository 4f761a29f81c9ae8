"""scripts/simulator_routing.py: the Host-routed simulator answers per unit, and it measures."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from bridge.simulator import SimulatedUnit, simulated_serial

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def routing() -> Iterator[ModuleType]:
    # On sys.path, not loaded from a file spec: spawned children import the script by name.
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("simulator_routing")
    finally:
        sys.path.remove(str(SCRIPTS))
        sys.modules.pop("simulator_routing", None)


async def get(port: int, host: str | None, path: str = "/api/1/version") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        host_line = f"Host: {host}\r\n" if host is not None else ""
        writer.write(f"GET {path} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n".encode())
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    return int(head.split(b" ")[1]), body


async def test_host_header_picks_the_unit(routing: ModuleType) -> None:
    units = [SimulatedUnit(simulated_serial(index), seed=index) for index in (1, 2)]
    async with asyncio.timeout(3), routing.HostRoutedServer(units) as server:
        for unit in units:
            status, body = await get(server.port, unit.serial)
            assert (status, json.loads(body)["serial_number"]) == (200, unit.serial)
        status, body = await get(server.port, f"{units[1].serial.lower()}:{server.port}")
        assert (status, json.loads(body)["serial_number"]) == (200, units[1].serial)
        assert (await get(server.port, "SIM0000000003"))[0] == 404
        assert (await get(server.port, None))[0] == 404
        status, body = await get(server.port, units[0].serial, "/api/1/vitals")
        assert (status, len(json.loads(body))) == (200, 27)


async def test_one_connection_reaches_several_units(routing: ModuleType) -> None:
    units = [SimulatedUnit(simulated_serial(index), seed=index) for index in (1, 2)]
    async with asyncio.timeout(3), routing.HostRoutedServer(units) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for unit in (*units, units[0]):
                writer.write(f"GET /api/1/version HTTP/1.1\r\nHost: {unit.serial}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                assert json.loads(await reader.readexactly(length))["serial_number"] == unit.serial
        finally:
            writer.close()
            await writer.wait_closed()


# The port mode gets a shorter window: its figures are the bench's, the point is that it runs.
@pytest.mark.parametrize(("mode", "seconds"), [("host", 1.0), ("port", 0.5)])
def test_measure_end_to_end(routing: ModuleType, mode: str, seconds: float) -> None:
    result = routing.measure(mode, 3, seconds, warmup_s=0.2)
    assert result.mode == mode
    assert result.answered_per_s > 0
    assert result.peak_rss_mb > 0
    assert result.cpu_percent >= 0
    assert result.errors == 0
    assert math.isfinite(result.p99_ms)
    assert "answered/s" in routing.format_table([result])


@pytest.mark.parametrize(
    "argv",
    [
        ["--units", "0"],
        ["--units", "x"],
        ["--seconds", "-1"],
        ["--seconds", "nan"],
        ["--mode", "udp"],
    ],
)
def test_bad_arguments_are_one_line(
    routing: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        routing.main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("simulator_routing: error: ")
