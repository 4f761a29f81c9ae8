"""The fixtures carry no real unit's identifiers; scripts/sanitise_fixture.py makes them up."""

from __future__ import annotations

import base64
import importlib.util
import ipaddress
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from bridge.core.parsing import decode_body
from tests.conftest import FIXTURES

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sanitise_fixture.py"
BODIES = sorted(FIXTURES.glob("*.json"))
ALL_TEXT = sorted(path for path in FIXTURES.rglob("*") if path.suffix in {".json", ".txt", ".log"})
MADE_UP_NETWORKS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("192.168.92.0/24"))


@pytest.fixture(scope="module")
def sanitiser() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sanitise_fixture", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _field(path: Path, key: str) -> object:
    return decode_body(path.read_bytes()).get(key)


def test_every_fixture_has_a_source_note() -> None:
    """Each body has its ``.source.txt`` naming the public repository it came from."""
    assert BODIES
    for body in BODIES:
        note = body.with_name(body.stem + ".source.txt")
        assert note.is_file(), body.name
        assert "GitHub" in note.read_text(encoding="utf-8"), note.name
    assert "GitHub" in (FIXTURES / "traces" / "README.source.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", BODIES, ids=lambda path: path.stem)
def test_bodies_carry_only_made_up_identifiers(path: Path) -> None:
    """Serials start with TEST, MACs are locally administered, addresses are documentation ones."""
    serial = _field(path, "serial_number")
    if serial is not None:
        assert isinstance(serial, str)
        assert serial.startswith("TEST") or set(serial.lower()) <= {"p", "g", "t", "x"}, serial
    mac = _field(path, "wifi_mac")
    if mac is not None:
        assert isinstance(mac, str)
        assert mac.startswith("02:00:00") or set(mac.lower()) <= {"x", ":"}, mac
    address = _field(path, "wifi_infra_ip")
    if address is not None:
        assert isinstance(address, str)
        assert any(ipaddress.ip_address(address) in net for net in MADE_UP_NETWORKS), address
    ssid = _field(path, "wifi_ssid")
    if isinstance(ssid, str) and ssid != "xxx":
        assert "ExampleNet" in ssid or base64.b64decode(ssid).startswith(b"ExampleNet"), ssid


@pytest.mark.parametrize("path", ALL_TEXT, ids=lambda path: path.name)
def test_notes_and_traces_name_no_real_address(path: Path) -> None:
    """Every IPv4 address in any fixture file is a made-up or the leader's fixed one."""
    for address in re.findall(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?!\d|\.\d)", path.read_text()):
        assert any(ipaddress.ip_address(address) in net for net in MADE_UP_NETWORKS), address


def test_sanitiser_replaces_consistently_and_keeps_placeholders(
    sanitiser: ModuleType, tmp_path: Path
) -> None:
    """One unit keeps one made-up serial, address and SSID across its body and its note."""
    source, destination = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    ssid = base64.b64encode(b"MyHome").decode()
    wifi = {"wifi_ssid": ssid, "wifi_infra_ip": "10.1.2.3", "wifi_mac": "54:F8:F0:12:34:56"}
    (source / "wifi_status_x.json").write_text(json.dumps(wifi), encoding="utf-8")
    (source / "wifi_status_x.source.txt").write_text(
        "curl http://10.1.2.3/api/1/wifi_status; SSID MyHome\r\n", encoding="utf-8"
    )
    (source / "version_x.json").write_text(
        '{"serial_number":"PGT22213075021"}\n{"serial_number":"PGTxxxxxxxxxxx"}', encoding="utf-8"
    )
    (source / "vitals_leader.json").write_text('{"ip":"192.168.92.1"}', encoding="utf-8")

    assert sanitiser.main([str(source), str(destination)]) == 0

    clean_wifi = json.loads((destination / "wifi_status_x.json").read_text(encoding="utf-8"))
    assert clean_wifi == {
        "wifi_ssid": base64.b64encode(b"ExampleNet1").decode(),
        "wifi_infra_ip": "192.0.2.10",
        "wifi_mac": "02:00:00:00:00:01",
    }
    note = (destination / "wifi_status_x.source.txt").read_bytes()
    assert note.startswith(b"curl http://192.0.2.10/api/1/wifi_status; SSID ExampleNet1\r\n")
    assert b"made-up values" in note
    assert (destination / "version_x.json").read_text(encoding="utf-8") == (
        '{"serial_number":"TEST0000000001"}\n{"serial_number":"PGTxxxxxxxxxxx"}'
    )
    assert (destination / "vitals_leader.json").read_text(encoding="utf-8") == (
        '{"ip":"192.168.92.1"}'
    )
