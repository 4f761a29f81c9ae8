"""``twc3-bridge scan``: find Wall Connectors on a network and print their ``[[connectors]]``."""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from bridge.adapters.survey import Found, ScanReport, host_text, identify, survey
from bridge.core.config import DEFAULT_HTTP_PORT
from bridge.core.names import MAX_ID_LENGTH, id_problem, slugify
from bridge.core.networks import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    MAX_HOSTS,
    IPAddress,
    check_options,
    host_count,
    parse_network,
)
from bridge.tools.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

# The survey and the network checks live in the lower layers so the running bridge uses them
# too; the scan's tests and callers still find them here.
__all__ = [
    "MAX_HOSTS",
    "Found",
    "IPAddress",
    "ScanReport",
    "check_options",
    "connector_id",
    "host_count",
    "host_text",
    "identify",
    "parse_network",
    "render_block",
    "render_blocks",
    "run_scan",
    "scan",
    "summary",
    "survey",
]

_SHOWN_CHARS: Final = 64  # longest serial, part or firmware text shown in a comment
_NAME_SUFFIX_CHARS: Final = 4
_NOT_ALNUM: Final = re.compile(r"[^A-Za-z0-9]+")


# ---- pure parts ------------------------------------------------------------------------------


def _shown(text: str | None) -> str:
    """Untrusted text made safe for one comment line: printable, bounded."""
    if text is None or not text.strip():
        return "unknown"
    clean = "".join(ch if ch.isprintable() else "?" for ch in text.strip())
    return clean if len(clean) <= _SHOWN_CHARS else clean[: _SHOWN_CHARS - 1] + "…"


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (quotes, backslashes and control characters escaped)."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in {'"', "\\"}:
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:  # noqa: PLR2004 - control characters
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # noqa: PLR2004 - lone surrogates are no characters
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def connector_id(found: Found) -> str:
    """The topic id the bridge would use: the serial as a lower-case slug.

    A serial that gives no valid id (empty, reserved) falls back to ``wc_`` and the address.
    """
    slug = slugify(found.serial)
    if id_problem(slug) is None:
        return slug
    return slugify(f"wc_{found.address}")


def _unique(candidate: str, used: set[str]) -> str:
    topic_id, number = candidate, 1
    while topic_id in used:
        number += 1
        suffix = f"_{number}"
        topic_id = candidate[: MAX_ID_LENGTH - len(suffix)] + suffix
    used.add(topic_id)
    return topic_id


def _names(found: Sequence[Found]) -> list[str]:
    """Readable names: the serial's last characters, the whole serial where those collide."""
    alnum = [_NOT_ALNUM.sub("", unit.serial) for unit in found]
    suffixes = [text[-_NAME_SUFFIX_CHARS:] for text in alnum]
    counts = Counter(suffixes)
    names = []
    for unit, text, suffix in zip(found, alnum, suffixes, strict=True):
        if not suffix:
            names.append(f"Wall Connector at {unit.host}")
        elif counts[suffix] > 1:
            names.append(f"Wall Connector {text[:_SHOWN_CHARS]}")
        else:
            names.append(f"Wall Connector {suffix}")
    return names


def render_block(found: Found, *, name: str, topic_id: str) -> str:
    """One ready-to-paste ``[[connectors]]`` block, with a comment saying what answered."""
    comment = (
        f"# Wall Connector {_shown(found.serial)} (part {_shown(found.part_number)}, "
        f"firmware {_shown(found.firmware)}) at {found.host}"
    )
    return "\n".join(
        [
            comment,
            "[[connectors]]",
            f"host = {toml_string(found.host)}",
            f"name = {toml_string(name)}",
            f"id = {toml_string(topic_id)}",
        ]
    )


def render_blocks(found: Iterable[Found]) -> str:
    """Every unit's block, sorted by address, blank-line separated; ids made unique."""
    units = sorted(found, key=lambda unit: (unit.address.version, int(unit.address), unit.port))
    used: set[str] = set()
    blocks = [
        render_block(unit, name=name, topic_id=_unique(connector_id(unit), used))
        for unit, name in zip(units, _names(units), strict=True)
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
