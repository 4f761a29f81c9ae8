"""``twc3-bridge scan``: find Wall Connectors on a network and print their ``[[connectors]]``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Sequence

from bridge.adapters.survey import Found, ScanReport, survey
from bridge.core.config import DEFAULT_HTTP_PORT
from bridge.core.names import MAX_ID_LENGTH
from bridge.core.networks import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    IPAddress,
    check_options,
    parse_network,
)
from bridge.presentation.connector_block import connector_id, render_block, unit_names
from bridge.tools.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

# ---- pure parts ------------------------------------------------------------------------------


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
