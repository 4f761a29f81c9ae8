"""``twc3-bridge scan``: network validation, block rendering, and real scans on loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import bridge.adapters.survey as survey_module
from bridge.adapters.survey import Found, ScanReport, identify, survey
from bridge.adapters.twc import TwcClient
from bridge.core.config import CONFIG_ENV, PASSWORD_ENV, ConnectorConfig, load_config
from bridge.core.networks import MAX_HOSTS, check_options, host_count, parse_network
from bridge.presentation.connector_block import connector_id, render_block
from bridge.sim.simulator import SimulatedUnit, UnitServer
from bridge.tools import cli
from bridge.tools.exitcodes import EXIT_USAGE
from bridge.tools.scan import render_blocks, scan, summary

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30.0
SERIAL_A = "PGT22213075021"
SERIAL_B = "B7S24024J01612"
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
VERSION_BODY = (
    b'{"firmware_version":"25.34.1+ge48cc9be91ebc7","part_number":"1734412-02-D",'
    b'"serial_number":"B7S24024J01612"}'
)


# ---- pure: networks ------------------------------------------------------------------------


def test_parse_network_lists_the_hosts_of_a_small_network() -> None:
    """A /29 gives its six host addresses, without network and broadcast address."""
    assert parse_network("127.0.0.0/29") == [V4(f"127.0.0.{n}") for n in range(1, 7)]


def test_parse_network_allows_host_bits_and_spaces() -> None:
    """``192.168.1.7/24`` means the /24; surrounding blanks are ignored."""
    addresses = parse_network("  192.168.1.7/24 ")
    assert len(addresses) == 254
    assert addresses[0] == V4("192.168.1.1")
    assert addresses[-1] == V4("192.168.1.254")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", ["10.1.2.3"]),
        ("10.1.2.3/32", ["10.1.2.3"]),
        ("10.1.2.2/31", ["10.1.2.2", "10.1.2.3"]),
        ("2001:db8::5", ["2001:db8::5"]),
        ("2001:db8::4/127", ["2001:db8::4", "2001:db8::5"]),
        ("2001:db8::/126", ["2001:db8::1", "2001:db8::2", "2001:db8::3"]),
    ],
)
def test_parse_network_single_addresses_and_point_to_point(text: str, expected: list[str]) -> None:
    """One address, /31, /32, /127 and /128 scan every address they hold."""
    assert parse_network(text) == [ipaddress.ip_address(address) for address in expected]


@pytest.mark.parametrize(
    "network",
    [f"10.0.0.0/{prefix}" for prefix in range(20, 33)]
    + [f"2001:db8::/{prefix}" for prefix in range(116, 129)],
)
def test_host_count_matches_the_listed_addresses(network: str) -> None:
    """The size check counts exactly the addresses that would be probed."""
    parsed = ipaddress.ip_network(network)
    assert host_count(parsed) == len(parse_network(network))


@pytest.mark.parametrize("network", ["10.0.0.0/20", "2001:db8::/116"])
def test_largest_accepted_networks(network: str) -> None:
    """An IPv4 /20 (4094 hosts) and an IPv6 /116 (4095) are within the limit."""
    assert 4000 < len(parse_network(network)) <= MAX_HOSTS


@pytest.mark.parametrize(
    "network", ["10.0.0.0/19", "2001:db8::/115", "10.0.0.0/8", "0.0.0.0/0", "::/0"]
)
def test_too_large_networks_are_refused_without_listing_them(network: str) -> None:
    """More than 4096 hosts: a one-line error, decided at once even for ::/0."""
    started = time.monotonic()
    with pytest.raises(ValueError, match="host addresses; scan at most 4096") as caught:
        parse_network(network)
    assert time.monotonic() - started < 1.0
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "nonsense",
        "",
        "   ",
        "192.168.1",
        "192.168.1.0/33",
        "300.1.1.1",
        "192.168.1.0/24/1",
        "http://192.168.1.1",
        "wallconnector.local",
        "fe80::1%eth0",
        "224.0.0.0/28",
        "ff02::1",
        "0.0.0.0",
        "::",
        "1.2.3.4\n5.6.7.8",
        "\x00",
        "3232235777",
    ],
)
def test_garbage_networks_give_one_line_errors(text: str) -> None:
    """Anything that is no usable unicast network or address is refused with one line."""
    with pytest.raises(ValueError, match=r".") as caught:
        parse_network(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("port", "timeout_s", "concurrency", "message"),
    [
        (0, 1.5, 32, "--port"),
        (65_536, 1.5, 32, "--port"),
        (80, 0.0, 32, "--timeout"),
        (80, -1.0, 32, "--timeout"),
        (80, float("nan"), 32, "--timeout"),
        (80, float("inf"), 32, "--timeout"),
        (80, 1.5, 0, "--concurrency"),
        (80, 1.5, 257, "--concurrency"),
    ],
)
def test_check_options_refuses_out_of_range_values(
    port: int, timeout_s: float, concurrency: int, message: str
) -> None:
    """Port, timeout and concurrency outside their ranges are usage errors."""
    with pytest.raises(ValueError, match=message):
        check_options(port, timeout_s, concurrency)
    check_options(8080, 1.5, 256)


# ---- pure: identifying a unit --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (VERSION_BODY, (SERIAL_B, "1734412-02-D", "25.34.1+ge48cc9be91ebc7")),
        (b'{"serial_number":"PGT123456789"', ("PGT123456789", None, None)),  # missing final }
        (b'{"serial_number":"ACB1","part_number":7}', ("ACB1", None, None)),
        (b'{"firmware_version":"21.8.5","part_number":"1529455-02-D"}', None),
        (b'{"serial_number":12345}', None),
        (b'{"serial_number":"   "}', None),
        (b'{"serial_number":null}', None),
        (b'["serial_number"]', None),
        (b"<html><body>router login</body></html>", None),
        (b"", None),
        (b"\xff\xfe\x00garbage", None),
        (b'{"status":"ok","model":"SHSW-1"}', None),
    ],
)
def test_identify_accepts_only_version_bodies_with_a_serial(
    raw: bytes, expected: tuple[str, str | None, str | None] | None
) -> None:
    """A version body with a string serial identifies a unit; anything else does not."""
    assert identify(raw) == expected


# ---- pure: rendering -----------------------------------------------------------------------


def parse_blocks(text: str) -> list[dict[str, Any]]:
    """The ``[[connectors]]`` tables in printed scan output."""
    connectors = tomllib.loads(text)["connectors"]
    assert isinstance(connectors, list)
    return connectors


def test_render_block_ipv4_default_port() -> None:
    """Port 80 is left out of ``host``; the comment says what answered."""
    unit = Found(V4("192.168.1.50"), 80, SERIAL_A, "1529455-02-E", "24.4.1+g345568bb684d5c")
    block = render_block(unit, name="Wall Connector 5021", topic_id=connector_id(unit))
    assert block == (
        "# Wall Connector PGT22213075021 (part 1529455-02-E, firmware 24.4.1+g345568bb684d5c)"
        " at 192.168.1.50\n"
        "[[connectors]]\n"
        'host = "192.168.1.50"\n'
        'name = "Wall Connector 5021"\n'
        'id = "pgt22213075021"'
    )


@pytest.mark.parametrize(
    ("address", "port", "host", "expected"),
    [
        ("192.168.1.50", 80, "192.168.1.50", ("192.168.1.50", 80)),
        ("192.168.1.50", 8080, "192.168.1.50:8080", ("192.168.1.50", 8080)),
        ("2001:db8::5", 80, "[2001:db8::5]", ("2001:db8::5", 80)),
        ("2001:db8::5", 8080, "[2001:db8::5]:8080", ("2001:db8::5", 8080)),
    ],
)
def test_rendered_host_has_port_suffix_and_ipv6_brackets(
    address: str, port: int, host: str, expected: tuple[str, int]
) -> None:
    """``host`` carries ``:PORT`` unless 80, IPv6 in brackets, and the config reads it back."""
    unit = Found(ipaddress.ip_address(address), port, SERIAL_A)
    (table,) = parse_blocks(render_blocks([unit]))
    assert table["host"] == host
    assert f"at {host}\n" in render_blocks([unit])
    connector = ConnectorConfig.model_validate(table)
    assert connector.address == expected
    assert connector.configured_id() == "pgt22213075021"


def test_render_blocks_sorts_numerically_and_makes_ids_unique(tmp_path: Path) -> None:
    """.9 before .10; a serial seen twice gets a second id; the whole output is a valid config."""
    units = [
        Found(V4("10.0.0.10"), 80, SERIAL_A),
        Found(V4("10.0.0.9"), 80, SERIAL_B, "1734412-02-D", "25.34.1"),
        Found(V4("10.0.0.200"), 80, SERIAL_A),
    ]
    text = render_blocks(units)
    tables = parse_blocks(text)
    assert [table["host"] for table in tables] == ["10.0.0.9", "10.0.0.10", "10.0.0.200"]
    assert [table["id"] for table in tables] == [
        "b7s24024j01612",
        "pgt22213075021",
        "pgt22213075021_2",
    ]
    assert tables[0]["name"] == "Wall Connector 1612"
    # The same suffix twice: the whole serial keeps names apart.
    assert tables[1]["name"] == tables[2]["name"] == f"Wall Connector {SERIAL_A}"
    config = tmp_path / "bridge.toml"
    config.write_text(text + "\n", encoding="utf-8")
    assert [c.host for c in load_config(config, environ={}).connectors] == [
        "10.0.0.9",
        "10.0.0.10",
        "10.0.0.200",
    ]


@pytest.mark.parametrize(
    "serial",
    [
        'PGT1"\n[mqtt]\nhost = "evil"',
        "bridge",
        "group",
        "!!!",
        "\\u0000\x00\x1b[31m\u2028",
        "Ünïcødé-Sériål 😀",
        "X" * 5000,
        "\ud800lone",
    ],
)
def test_hostile_serials_still_render_a_valid_config(serial: str, tmp_path: Path) -> None:
    """Whatever a unit claims as serial, the output is one valid connector and one comment."""
    unit = Found(V4("192.168.1.50"), 80, serial, part_number="\n[x]", firmware='"')
    text = render_blocks([unit])
    comment, *rest = text.splitlines()
    assert comment.startswith("# Wall Connector ")
    assert rest[0] == "[[connectors]]"
    assert len(rest) == 4
    config = tmp_path / "bridge.toml"
    config.write_text(text + "\n", encoding="utf-8", errors="strict")
    (connector,) = load_config(config, environ={}).connectors
    assert connector.host == "192.168.1.50"
    assert connector.id is not None


def test_summary_line() -> None:
    """The stderr summary counts addresses, time and units found."""
    report = ScanReport(
        scanned=6, found=[Found(V4("127.0.0.2"), 80, SERIAL_A)], other=2, silent=3, elapsed_s=0.26
    )
    assert summary(report) == (
        "scanned 6 addresses in 0.3 s: 1 Wall Connector(s) found (2 other answers, 3 no answer)"
    )


# ---- real sockets, loopback only -----------------------------------------------------------


def http_response(body: bytes, status: str = "200 OK", headers: str = "") -> bytes:
    """A complete HTTP/1.1 response with a content length."""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Meter:
    """Requests in flight across servers, and the most seen at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.requests = 0


@contextlib.asynccontextmanager
async def raw_server(
    host: str, port: int, response: bytes | None, meter: Meter | None = None
) -> AsyncIterator[Meter]:
    """A server that reads one request and sends ``response`` (``None``: never answers)."""
    assert ipaddress.ip_address(host).is_loopback
    meter = Meter() if meter is None else meter
    done = asyncio.Event()
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            meter.requests += 1
            if response is None:
                await done.wait()
                return
            meter.in_flight += 1
            meter.peak = max(meter.peak, meter.in_flight)
            await asyncio.sleep(0.05)
            # Leave the count before the client can see the answer and start its next request.
            meter.in_flight -= 1
            writer.write(response)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    try:
        yield meter
    finally:
        done.set()
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)


def free_loopback_port(host: str) -> int:
    """A port free on ``host`` (skips the test where extra loopback addresses do not exist)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, 0))
        except OSError as error:
            pytest.skip(f"cannot bind {host}: {error}")
        port: int = sock.getsockname()[1]
        return port


NOT_A_UNIT = http_response(b'{"status":"ok","model":"SHSW-1","fw":"1.14.0"}')
GARBAGE = b"\x16\x03\x01\x00\xa5garbage, not HTTP\r\n\r\n"


@contextlib.asynccontextmanager
async def loopback_lan(*, with_units: bool = True) -> AsyncIterator[int]:
    """Units on 127.0.0.2 and .5, a JSON non-unit on .3, garbage on .4, all on one port."""
    port = free_loopback_port("127.0.0.2")
    async with contextlib.AsyncExitStack() as stack:
        if with_units:
            for host, serial, seed in (("127.0.0.2", SERIAL_A, 1), ("127.0.0.5", SERIAL_B, 2)):
                unit = SimulatedUnit(serial, seed=seed)
                await stack.enter_async_context(UnitServer(unit, host=host, port=port))
        await stack.enter_async_context(raw_server("127.0.0.3", port, NOT_A_UNIT))
        await stack.enter_async_context(raw_server("127.0.0.4", port, GARBAGE))
        yield port


class RecordingClient(TwcClient):
    """A TwcClient that remembers every instance and whether it was closed."""

    instances: list[RecordingClient] = []  # noqa: RUF012 - reset by each test

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = False
        RecordingClient.instances.append(self)

    async def aclose(self) -> None:
        """Close, and note it."""
        await super().aclose()
        self.closed = True


async def test_scan_finds_exactly_the_simulated_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 127.0.0.0/29 only the two simulated units count; every client is closed."""
    RecordingClient.instances = []
    monkeypatch.setattr(survey_module, "TwcClient", RecordingClient)
    async with asyncio.timeout(TIMEOUT_S), loopback_lan() as port:
        found = await scan(parse_network("127.0.0.0/29"), port, 1.0, 32)
    assert [(unit.address, unit.serial) for unit in found] == [
        (V4("127.0.0.2"), SERIAL_A),
        (V4("127.0.0.5"), SERIAL_B),
    ]
    assert all(unit.port == port and unit.part_number == "1529455-02-D" for unit in found)
    assert len(RecordingClient.instances) == 6
    assert all(client.closed for client in RecordingClient.instances)


async def test_survey_counts_other_answers_and_silent_hosts() -> None:
    """The JSON and garbage servers are "other"; .1 and .6 (nothing listening) are silent."""
    async with asyncio.timeout(TIMEOUT_S), loopback_lan() as port:
        report = await survey(parse_network("127.0.0.0/29"), port, 1.0, 1)
    assert report.scanned == 6
    assert [unit.serial for unit in report.found] == [SERIAL_A, SERIAL_B]
    assert (report.other, report.silent) == (2, 2)


async def test_concurrency_bounds_requests_in_flight() -> None:
    """With concurrency 2, two hosts at most are being asked at any moment, each only once."""
    port = free_loopback_port("127.0.0.1")
    hosts = [f"127.0.0.{n}" for n in range(1, 7)]
    meter = Meter()
    async with asyncio.timeout(TIMEOUT_S), contextlib.AsyncExitStack() as stack:
        for host in hosts:
            await stack.enter_async_context(raw_server(host, port, NOT_A_UNIT, meter))
        report = await survey([V4(host) for host in hosts], port, 1.0, 2)
    assert report.other == 6
    assert meter.requests == 6  # one request per host, no retries
    assert meter.peak == 2


async def test_hosts_that_never_answer_time_out_quickly() -> None:
    """A host that accepts and never answers is silent, and costs about the timeout."""
    port = free_loopback_port("127.0.0.6")
    async with asyncio.timeout(TIMEOUT_S), raw_server("127.0.0.6", port, None):
        started = time.monotonic()
        report = await survey([V4("127.0.0.6")], port, 0.3, 32)
        elapsed = time.monotonic() - started
    assert (report.found, report.other, report.silent) == ([], 0, 1)
    assert elapsed < 2 * 0.3 + 1.0 + 0.5


@pytest.mark.parametrize(
    "response",
    [
        http_response(b'{"firmware_version":"25.34.1"}'),
        http_response(b'{"serial_number":12345}'),
        http_response(b"[1, 2, 3]"),
        http_response(b"<html>login</html>"),
        http_response(VERSION_BODY, status="500 Internal Server Error"),
        http_response(
            b"", status="301 Moved Permanently", headers="Location: http://192.0.2.1/\r\n"
        ),
        http_response(b" " * 100_000 + VERSION_BODY),
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n" + VERSION_BODY,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        GARBAGE,
        b"",
    ],
)
async def test_odd_answers_are_not_units_and_do_not_stop_the_scan(response: bytes) -> None:
    """Wrong bodies, statuses, sizes and protocol garbage are no unit and raise nothing."""
    port = free_loopback_port("127.0.0.7")
    async with asyncio.timeout(TIMEOUT_S), raw_server("127.0.0.7", port, response):
        report = await survey([V4("127.0.0.7")], port, 1.0, 32)
    assert report.found == []
    assert report.other + report.silent == 1


async def test_truncated_version_body_still_counts() -> None:
    """The firmware quirk of a missing final brace does not hide a unit."""
    port = free_loopback_port("127.0.0.7")
    body = http_response(VERSION_BODY[:-1])
    async with asyncio.timeout(TIMEOUT_S), raw_server("127.0.0.7", port, body):
        found = await scan([V4("127.0.0.7")], port, 1.0, 32)
    assert [unit.serial for unit in found] == [SERIAL_B]


async def test_unexpected_error_for_one_host_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug hit by one host's answer counts that host as "other"; the others still count."""
    real_identify = identify

    def fragile(raw: bytes) -> tuple[str, str | None, str | None] | None:
        if b"SHSW" in raw:
            raise RuntimeError("boom")
        return real_identify(raw)

    monkeypatch.setattr(survey_module, "identify", fragile)
    async with asyncio.timeout(TIMEOUT_S), loopback_lan() as port:
        report = await survey(parse_network("127.0.0.0/29"), port, 1.0, 32)
    assert len(report.found) == 2
    assert report.other == 2


# ---- the command line ----------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The test's environment without the bridge's own variables."""
    return {k: v for k, v in os.environ.items() if k not in {CONFIG_ENV, PASSWORD_ENV}}


async def scan_cli(*args: str) -> tuple[int, str, str]:
    """Run ``scan`` as a subprocess without blocking the loop that serves the units."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "scan",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
        cwd=ROOT,
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.system
async def test_cli_prints_paste_ready_blocks(tmp_path: Path) -> None:
    """Exit 0, one TOML block per unit with ``host:port``, a summary line on stderr."""
    async with asyncio.timeout(TIMEOUT_S + 10), loopback_lan() as port:
        code, stdout, stderr = await scan_cli("127.0.0.0/29", "--port", str(port), "--timeout", "1")
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr
    assert f'host = "127.0.0.2:{port}"' in stdout
    tables = parse_blocks(stdout)
    assert [(t["host"], t["id"]) for t in tables] == [
        (f"127.0.0.2:{port}", SERIAL_A.lower()),
        (f"127.0.0.5:{port}", SERIAL_B.lower()),
    ]
    assert stdout.startswith(f"# Wall Connector {SERIAL_A} (part 1529455-02-D, firmware ")
    (line,) = stderr.splitlines()
    assert line.startswith("scanned 6 addresses in ")
    assert ": 2 Wall Connector(s) found" in line
    config = tmp_path / "bridge.toml"
    config.write_text(stdout, encoding="utf-8")
    assert len(load_config(config, environ={}).connectors) == 2


@pytest.mark.system
async def test_cli_exits_1_when_nothing_is_found() -> None:
    """Only non-units answer: exit 1, nothing on stdout, the summary on stderr."""
    async with asyncio.timeout(TIMEOUT_S + 10), loopback_lan(with_units=False) as port:
        code, stdout, stderr = await scan_cli("127.0.0.0/29", "--port", str(port), "--timeout", "1")
    assert code == 1, stderr
    assert stdout == ""
    assert len(stderr.splitlines()) == 1
    assert ": 0 Wall Connector(s) found (2 other answers, 4 no answer)" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("10.0.0.0/8",), "error: 10.0.0.0/8 has about 2^24 host addresses"),
        (("nonsense",), "error: 'nonsense' is not an IPv4 or IPv6 network"),
        (("127.0.0.1", "--concurrency", "1000"), "error: --concurrency"),
        (("127.0.0.1", "--timeout", "0"), "error: --timeout"),
    ],
)
@pytest.mark.system
async def test_cli_usage_errors_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    """Too large, garbage or out-of-range options: exit 2 and a single error line."""
    async with asyncio.timeout(TIMEOUT_S + 10):
        code, stdout, stderr = await scan_cli(*args)
    assert code == 2
    assert stdout == ""
    assert stderr.splitlines() == [stderr.strip()]
    assert stderr.startswith(message)


@pytest.mark.parametrize("network", ["10.0.0.0/8", "::/0", "nonsense"])
def test_refused_networks_send_no_traffic(
    network: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused network is decided before any client or socket exists."""

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("scan sent traffic for a refused network")

    monkeypatch.setattr(survey_module, "TwcClient", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket.socket, "connect_ex", forbidden)
    started = time.monotonic()
    assert cli.main(["scan", network]) == EXIT_USAGE
    assert time.monotonic() - started < 1.0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("error: ")
