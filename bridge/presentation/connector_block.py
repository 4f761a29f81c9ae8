"""The ready-to-paste ``[[connectors]]`` block for a unit found on a network, device text made safe.

Printed by ``twc3-bridge scan`` and logged by the running bridge for a unit it finds but does not
add. Every value in a block comes from the device, so it is written as an escaped TOML string and
the comment line shows only printable characters.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Sequence
from typing import Final, Protocol

from bridge.core.names import id_problem, slugify

_SHOWN_CHARS: Final = 64  # longest serial, part or firmware text shown in a comment
_NAME_SUFFIX_CHARS: Final = 4
_NOT_ALNUM: Final = re.compile(r"[^A-Za-z0-9]+")


class FoundUnit(Protocol):
    """What a block is made of: a Wall Connector that answered ``/api/1/version`` somewhere."""

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Where it answered."""
        ...

    @property
    def serial(self) -> str:
        """Its serial number, as sent (stripped)."""
        ...

    @property
    def part_number(self) -> str | None:
        """Its part number, if it sent one as text."""
        ...

    @property
    def firmware(self) -> str | None:
        """Its firmware version, if it sent one as text."""
        ...

    @property
    def host(self) -> str:
        """The ``host`` value for the configuration file."""
        ...


def shown(text: str | None) -> str:
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


def connector_id(found: FoundUnit) -> str:
    """The topic id the bridge would use: the serial as a lower-case slug.

    A serial that gives no valid id (empty, reserved) falls back to ``wc_`` and the address.
    """
    slug = slugify(found.serial)
    if id_problem(slug) is None:
        return slug
    return slugify(f"wc_{found.address}")


def unit_names(found: Sequence[FoundUnit]) -> list[str]:
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


def render_block(found: FoundUnit, *, name: str, topic_id: str) -> str:
    """One ready-to-paste ``[[connectors]]`` block, with a comment saying what answered."""
    comment = (
        f"# Wall Connector {shown(found.serial)} (part {shown(found.part_number)}, "
        f"firmware {shown(found.firmware)}) at {found.host}"
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
