"""Surveying a network: one ``GET /api/1/version`` per address, bounded concurrency, no retry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from bridge.adapters.twc import TwcBadResponseError, TwcClient, TwcError
from bridge.core.config import DEFAULT_HTTP_PORT
from bridge.core.models import ParseError, Version, parse_endpoint
from bridge.core.networks import IPAddress, check_options

Outcome: TypeAlias = Literal["other", "silent"]

# A version body is under 200 bytes; whatever else answers on the port need not be read in full.
MAX_BODY_BYTES: Final = 16 * 1024


def host_text(address: IPAddress, port: int) -> str:
    """``address`` as a configuration ``host``: ``:port`` unless 80, IPv6 in brackets."""
    shown = f"[{address}]" if address.version == 6 else str(address)  # noqa: PLR2004
    return shown if port == DEFAULT_HTTP_PORT else f"{shown}:{port}"


def base_url(address: IPAddress, port: int) -> str:
    """The unit's HTTP address, always with the port."""
    shown = f"[{address}]" if address.version == 6 else str(address)  # noqa: PLR2004
    return f"http://{shown}:{port}"


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
    """What one survey found.

    Attributes:
        scanned: how many addresses were probed.
        found: the Wall Connectors, sorted by address.
        other: hosts that answered, but not as a Wall Connector.
        silent: hosts that refused, timed out or could not be reached.
        elapsed_s: wall-clock time of the survey.
    """

    scanned: int
    found: list[Found] = field(default_factory=list)
    other: int = 0
    silent: int = 0
    elapsed_s: float = 0.0


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


async def probe(
    address: IPAddress, port: int, timeout_s: float, source_address: str | None = None
) -> Found | Outcome:
    """One ``GET /api/1/version``, no retry; the client is always closed."""
    client = TwcClient(
        base_url(address, port),
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        max_body_bytes=MAX_BODY_BYTES,
        source_address=source_address,
    )
    try:
        # TwcClient bounds a request by both timeouts plus a margin; a survey wants less.
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
    addresses: Sequence[IPAddress],
    port: int,
    timeout_s: float,
    concurrency: int,
    *,
    source_address: str | None = None,
) -> ScanReport:
    """Probe every address, ``concurrency`` at a time, and count what answered.

    ``source_address``: the local address to send from (a second interface's), else the
    default route's.

    Raises:
        ValueError: an option out of range (see :func:`check_options`).
    """
    check_options(port, timeout_s, concurrency)
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded(address: IPAddress) -> Found | Outcome:
        async with semaphore:
            try:
                return await probe(address, port, timeout_s, source_address)
            except Exception:  # noqa: BLE001 - one host's odd answer must not end the survey
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
