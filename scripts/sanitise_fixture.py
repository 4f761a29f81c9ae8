"""Copy device captures into the test fixtures with serials, MACs, IPs and SSIDs made up.

Usage: python scripts/sanitise_fixture.py SOURCE_DIR DEST_DIR

Copies every file under SOURCE_DIR to the same relative path under DEST_DIR. One run maps every
distinct identifier to one made-up value, so a unit keeps the same made-up serial and addresses
across all the files (bodies, traces and their ``.source.txt`` notes alike).
Placeholders the original authors already used ("xxx", "PGTxxxxxxxxxxx") are left as they are.
Made-up values come from ranges that can never belong to a real unit: serials start with TEST,
addresses are in 192.0.2.0/24 (RFC 5737), MACs are locally administered (02:00:00:...).
The leader's own access-point network (192.168.92.0/24) is the same on every unit and carries
meaning for the bridge, so it is kept. A body that changed gets a line saying so in its note.
"""

# ruff: noqa: INP001 - a script run by path, not a module of a package

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import sys
from pathlib import Path

IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?!\d|\.\d)")
MAC = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}(?![0-9A-Fa-f:])")
SERIAL = re.compile(r'"serial_number"\s*:\s*"([^"]*)"')
SSID = re.compile(r'"wifi_ssid"\s*:\s*"([^"]*)"')
KEPT_NETWORKS = (
    ipaddress.ip_network("192.168.92.0/24"),  # every leader's own access point
    ipaddress.ip_network("192.0.2.0/24"),  # already a documentation address
    ipaddress.ip_network("127.0.0.0/8"),
)
NOTE_SUFFIX = ".source.txt"


def _placeholder(value: str) -> bool:
    """An identifier the author already masked (x's after an optional short prefix)."""
    return not value or set(value.lower().removeprefix("pgt")) <= {"x"}


def _decoded_ssid(value: str) -> str | None:
    """The SSID a base64 ``wifi_ssid`` stands for, or None for a plain-text one."""
    try:
        text = base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return text if text.isprintable() else None


class Replacements:
    """Original identifier → made-up one, numbered per kind in order of first appearance."""

    def __init__(self) -> None:
        self.made_up: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def _next(self, kind: str) -> int:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return self._counts[kind]

    def add_serial(self, serial: str) -> None:
        """TEST and digits, as long as the original (the simulator's SIM… serials look alike)."""
        if not _placeholder(serial) and serial not in self.made_up:
            self.made_up[serial] = f"TEST{self._next('serial'):0{max(len(serial) - 4, 6)}d}"

    def add_ssid(self, ssid: str) -> None:
        """ExampleNetN, base64-encoded where the original was (as real units send it)."""
        if _placeholder(ssid) or ssid in self.made_up:
            return
        name = f"ExampleNet{self._next('ssid')}"
        decoded = _decoded_ssid(ssid)
        if decoded is None:
            self.made_up[ssid] = name
        else:  # the notes may quote the decoded name too
            self.made_up[decoded] = name
            self.made_up[ssid] = base64.b64encode(name.encode()).decode()

    def add_address(self, address: str) -> None:
        """A documentation address, unless the original carries meaning or is one already."""
        ip = ipaddress.ip_address(address)
        if address not in self.made_up and not any(ip in net for net in KEPT_NETWORKS):
            self.made_up[address] = f"192.0.2.{9 + self._next('ip')}"

    def add_mac(self, mac: str) -> None:
        """A locally administered address in the original's letter case."""
        if mac not in self.made_up:
            made_up = f"02:00:00:00:00:{self._next('mac'):02X}"
            self.made_up[mac] = made_up.lower() if mac.islower() else made_up


def build_replacements(texts: list[str]) -> dict[str, str]:
    """Every identifier in ``texts`` with the made-up value that replaces it."""
    replacements = Replacements()
    for text in texts:
        for serial in SERIAL.findall(text):
            replacements.add_serial(serial)
        for ssid in SSID.findall(text):
            replacements.add_ssid(ssid)
        for address in IPV4.findall(text):
            replacements.add_address(address)
        for mac in MAC.findall(text):
            replacements.add_mac(mac)
    return replacements.made_up


def sanitise(text: str, replacements: dict[str, str]) -> str:
    """``text`` with every known identifier replaced, longest first (no partial overlaps)."""
    if not replacements:
        return text
    pattern = re.compile("|".join(re.escape(key) for key in sorted(replacements, key=len)[::-1]))
    return pattern.sub(lambda match: replacements[match.group(0)], text)


def main(argv: list[str]) -> int:
    """Sanitise every file under ``argv[0]`` into the folder ``argv[1]``."""
    if len(argv) != 2:  # noqa: PLR2004 - a source and a destination folder
        sys.stderr.write(__doc__ or "")
        return 2
    source, destination = Path(argv[0]), Path(argv[1])
    # Bytes decoded as they are, so CRLF line ends and trailing blanks stay as the author sent them.
    texts = {
        path.relative_to(source): path.read_bytes().decode()
        for path in sorted(source.rglob("*"))
        if path.is_file()
    }
    replacements = build_replacements(list(texts.values()))
    changed_bodies = []
    for relative, text in texts.items():
        clean = sanitise(text, replacements)
        if clean != text and not relative.name.endswith(NOTE_SUFFIX):
            changed_bodies.append(relative)
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        (destination / relative).write_bytes(clean.encode())
    for relative in changed_bodies:
        note = destination / relative.with_name(relative.stem + NOTE_SUFFIX)
        if note.exists():
            with note.open("a", encoding="utf-8") as file:
                file.write(
                    "In this copy, serial numbers, MAC and IP addresses and Wi-Fi SSIDs are"
                    " replaced with made-up values (scripts/sanitise_fixture.py).\n"
                )
    sys.stdout.write(f"{len(texts)} files, {len(replacements)} identifiers replaced\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
