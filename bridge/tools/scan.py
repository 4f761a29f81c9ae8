"""``twc3-bridge scan``: find Wall Connectors on a network and print their ``[[connectors]]``."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from bridge.adapters.twc import TwcBadResponseError, TwcClient, TwcError
from bridge.core.config import DEFAULT_HTTP_PORT
from bridge.core.models import ParseError, Version, parse_endpoint
from bridge.core.names import MAX_ID_LENGTH
from bridge.presentation.connector_block import connector_id, render_block, unit_names
from bridge.tools.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Outcome: TypeAlias = Literal["other", "silent"]

MAX_HOSTS: Final = 4096
DEFAULT_TIMEOUT_S: Final = 1.5
MAX_TIMEOUT_S: Final = 60.0
DEFAULT_CONCURRENCY: Final = 32
MAX_CONCURRENCY: Final = 256
MAX_PORT: Final = 65_535
# A version body is under 200 bytes; whatever else answers on the port need not be read in full.
MAX_BODY_BYTES: Final = 16 * 1024
_HUGE_COUNT: Final = 10**7


@dataclass(frozen=True, slots=True)
class Found:
    """A Wall Connector that answered ``/api/1/version``.

    Attributes:
        address: where it answered.
        port: the TCP port scanned.
        serial: its ``serial_number``, as sent (stripped).
        part_number: its ``part_number``, if it sent one as text.
        firmware: its ``firmware_version``, if it sent one as text.
    """

    address: IPAddress
    port: int
    serial: str
    part_number: str | None = None
    firmware: str | None = None

    @property
    def host(self) -> str:
        """The ``host`` value for the configuration file."""
        return host_text(self.address, self.port)


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What one scan found.

    Attributes:
        scanned: how many addresses were probed.
        found: the Wall Connectors, sorted by address.
        other: hosts that answered, but not as a Wall Connector.
        silent: hosts that refused, timed out or could not be reached.
        elapsed_s: wall-clock time of the scan.
    """

    scanned: int
    found: list[Found] = field(default_factory=list)
    other: int = 0
    silent: int = 0
    elapsed_s: float = 0.0


# ---- pure parts ------------------------------------------------------------------------------


def host_count(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    """How many addresses :func:`parse_network` gives for ``network``, without listing them."""
    if network.prefixlen >= network.max_prefixlen - 1:
        return network.num_addresses  # /31, /32, /127, /128: every address is a host
    if network.version == 4:  # noqa: PLR2004 - IP version
        return network.num_addresses - 2  # network and broadcast addresses
    return network.num_addresses - 1  # the Subnet-Router anycast address


def parse_network(text: str, max_hosts: int = MAX_HOSTS) -> list[IPAddress]:
    """The host addresses of an IPv4 or IPv6 network (``192.168.1.0/24``) or one address.

    Host bits are allowed (``192.168.1.7/24`` is the /24). /31, /32, /127 and /128 give all their
    addresses.

    Raises:
        ValueError: a one-line reason: not a network, a multicast or unspecified one, or more
            than ``max_hosts`` host addresses (checked before any address is listed).
    """
    value = text.strip()
    if not value:
        raise ValueError("give a network such as 192.168.1.0/24, or one address")
    if "%" in value:
        raise ValueError(f"{value!r}: IPv6 zone ids (%eth0) are not supported")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IPv4 or IPv6 network (such as 192.168.1.0/24) or address"
        ) from None
    if network.is_multicast:
        raise ValueError(
            f"{network} is a multicast network; Wall Connectors have unicast addresses"
        )
    if network.is_unspecified:
        raise ValueError(f"{value!r} is the unspecified address; give a network or a host")
    count = host_count(network)
    if count > max_hosts:
        shown = (
            f"about 2^{network.max_prefixlen - network.prefixlen}"
            if count >= _HUGE_COUNT
            else str(count)
        )
        raise ValueError(
            f"{network} has {shown} host addresses; scan at most {max_hosts} at a time "
            "(an IPv4 /20 or IPv6 /116), or split it"
        )
    if network.prefixlen >= network.max_prefixlen - 1:
        return list(network)
    return list(network.hosts())


def check_options(port: int, timeout_s: float, concurrency: int) -> None:
    """Check the scan options.

    Raises:
        ValueError: a one-line reason for the first option out of range.
    """
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"--port {port} is out of range 1-{MAX_PORT}")
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise ValueError(f"--timeout must be above 0 and at most {MAX_TIMEOUT_S:g} s")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"--concurrency must be within 1-{MAX_CONCURRENCY}")


def host_text(address: IPAddress, port: int) -> str:
    """``address`` as a configuration ``host``: ``:port`` unless 80, IPv6 in brackets."""
    shown = f"[{address}]" if address.version == 6 else str(address)  # noqa: PLR2004
    return shown if port == DEFAULT_HTTP_PORT else f"{shown}:{port}"


def base_url(address: IPAddress, port: int) -> str:
    """The unit's HTTP address, always with the port."""
    shown = f"[{address}]" if address.version == 6 else str(address)  # noqa: PLR2004
    return f"http://{shown}:{port}"


def identify(raw: bytes) -> tuple[str, str | None, str | None] | None:
    """``(serial, part number, firmware)`` when ``raw`` is a Wall Connector's version body.

    A body counts when it parses as the version endpoint and has a non-blank string
    ``serial_number``; anything else (another device's JSON, HTML, garbage) gives ``None``.
    """
    try:
        parsed = parse_endpoint("version", raw)
    except ParseError:
        return None
    model = parsed.model
    if not isinstance(model, Version) or model.serial_number is None:
        return None
    serial = model.serial_number.strip()
    if not serial:
        return None
    return serial, model.part_number, model.firmware_version


def _unique(candidate: str, used: set[str]) -> str:
    topic_id, number = candidate, 1
    while topic_id in used:
        number += 1
        suffix = f"_{number}"
        topic_id = candidate[: MAX_ID_LENGTH - len(suffix)] + suffix
    used.add(topic_id)
    return topic_id


def render_blocks(found: Iterable[Found]) -> str:
    """Every unit's block, sorted by address, blank-line separated; ids made unique."""
    units = sorted(found, key=lambda unit: (unit.address.version, int(unit.address), unit.port))
    used: set[str] = set()
    blocks = [
        render_block(unit, name=name, topic_id=_unique(connector_id(unit), used))
        for unit, name in zip(units, unit_names(units), strict=True)
    ]
    return "\n\n".join(blocks)


def summary(report: ScanReport) -> str:
    """The one line printed on stderr after a scan."""
    noun = "address" if report.scanned == 1 else "addresses"
    return (
        f"scanned {report.scanned} {noun} in {report.elapsed_s:.1f} s: "
        f"{len(report.found)} Wall Connector(s) found "
        f"({report.other} other answers, {report.silent} no answer)"
    )


# ---- network part ----------------------------------------------------------------------------


async def _probe(address: IPAddress, port: int, timeout_s: float) -> Found | Outcome:
    """One ``GET /api/1/version``, no retry; the client is always closed."""
    client = TwcClient(
        base_url(address, port),
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        max_body_bytes=MAX_BODY_BYTES,
    )
    try:
        # TwcClient bounds a request by both timeouts plus a margin; a scan wants less.
        async with asyncio.timeout(2 * timeout_s + 1.0):
            raw = await client.fetch("version")
    except TwcBadResponseError:
        return "other"
    except TwcError as error:
        # A connection that was accepted and then dropped is something answering on the port.
        return "other" if error.reason.startswith("connection dropped") else "silent"
    except TimeoutError:
        return "silent"
    finally:
        await client.aclose()
    identity = identify(raw)
    if identity is None:
        return "other"
    serial, part_number, firmware = identity
    return Found(address, port, serial, part_number, firmware)


async def survey(
    addresses: Sequence[IPAddress], port: int, timeout_s: float, concurrency: int
) -> ScanReport:
    """Probe every address, ``concurrency`` at a time, and count what answered.

    Raises:
        ValueError: an option out of range (see :func:`check_options`).
    """
    check_options(port, timeout_s, concurrency)
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded(address: IPAddress) -> Found | Outcome:
        async with semaphore:
            try:
                return await _probe(address, port, timeout_s)
            except Exception:  # noqa: BLE001 - one host's odd answer must not end the scan
                return "other"

    started = time.monotonic()
    results = await asyncio.gather(*(guarded(address) for address in addresses))
    elapsed = time.monotonic() - started
    found = sorted(
        (result for result in results if isinstance(result, Found)),
        key=lambda unit: (unit.address.version, int(unit.address)),
    )
    return ScanReport(
        scanned=len(addresses),
        found=found,
        other=results.count("other"),
        silent=results.count("silent"),
        elapsed_s=elapsed,
    )


async def scan(
    addresses: Sequence[IPAddress], port: int, timeout_s: float, concurrency: int
) -> list[Found]:
    """The Wall Connectors among ``addresses``, sorted by address (see :func:`survey`)."""
    return (await survey(addresses, port, timeout_s, concurrency)).found


def run_scan(
    network: str,
    *,
    port: int = DEFAULT_HTTP_PORT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> int:
    """The ``scan`` command: blocks on stdout, a summary on stderr; returns the exit code.

    Exit codes: 0 when a Wall Connector was found, 1 when none, 2 for a bad network or option
    (then nothing is sent).
    """
    try:
        addresses = parse_network(network)
        check_options(port, timeout_s, concurrency)
    except ValueError as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_USAGE
    report = asyncio.run(survey(addresses, port, timeout_s, concurrency))
    if report.found:
        sys.stdout.write(render_blocks(report.found) + "\n")
        sys.stdout.flush()
    sys.stderr.write(summary(report) + "\n")
    return EXIT_OK if report.found else EXIT_FAILURE
