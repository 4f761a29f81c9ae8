"""`twc3-bridge probe` output, and --redact hiding what identifies a unit or a network."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from bridge.core.models import Endpoint, ParsedBody, parse_endpoint
from bridge.tools.probe import REDACTED, probe, redact_fields, render_report, unit_topic_id

SERIAL = "TEST0000001"
SSID = "VEVTVC1TU0lE"  # base64 of an invented SSID
MAC = "02:00:5E:10:20:30"
UNIT_IP = "192.0.2.77"
HOST = "192.0.2.77:8080"
SECRETS = (SERIAL, SERIAL.lower(), SSID, MAC, UNIT_IP, HOST)

VERSION: dict[str, Any] = {
    "firmware_version": "25.34.1+gTEST000000000",
    "part_number": "1734412-02-D",
    "serial_number": SERIAL,
    "git_branch": "HEAD",
    "web_service": "backend.example.invalid",
}
WIFI: dict[str, Any] = {
    "wifi_ssid": SSID,
    "wifi_signal_strength": 64,
    "wifi_rssi": -58,
    "wifi_snr": 30,
    "wifi_connected": True,
    "wifi_infra_ip": UNIT_IP,
    "internet": True,
    "wifi_mac": MAC,
}
VITALS: dict[str, Any] = {
    "contactor_closed": False,
    "grid_v": 241.3,
    "session_energy_wh": 0.0,
    "evse_state": 1,
    "current_alerts": [],
}
LIFETIME: dict[str, Any] = {"charge_starts": 3, "energy_wh": 12000, "avg_startup_temp": None}


def _parsed(endpoint: Endpoint, fields: dict[str, Any]) -> ParsedBody:
    return parse_endpoint(endpoint, json.dumps(fields).encode())


def _results() -> dict[str, ParsedBody | str]:
    return {
        "vitals": _parsed("vitals", VITALS),
        "lifetime": _parsed("lifetime", LIFETIME),
        "version": _parsed("version", VERSION),
        "wifi_status": _parsed("wifi_status", WIFI),
    }


# --- redact_fields ------------------------------------------------------------------------------


def test_redact_fields_hides_identifying_values() -> None:
    """Serial number, SSID, MAC and IP are replaced; everything else is kept."""
    redacted = redact_fields({**VERSION, **WIFI})
    assert redacted["serial_number"] == REDACTED
    assert redacted["wifi_ssid"] == REDACTED
    assert redacted["wifi_mac"] == REDACTED
    assert redacted["wifi_infra_ip"] == REDACTED
    assert redacted["part_number"] == VERSION["part_number"]
    assert redacted["wifi_rssi"] == -58
    assert redacted["wifi_connected"] is True
    assert list(redacted) == list({**VERSION, **WIFI})


def test_redact_fields_does_not_change_the_input() -> None:
    """The body passed in is left as it was."""
    fields = dict(WIFI)
    redact_fields(fields)
    assert fields == WIFI


def test_redact_fields_keeps_missing_secrets_null() -> None:
    """A null secret field stays null rather than pretending there was a value."""
    assert redact_fields({"serial_number": None, "wifi_ssid": None}) == {
        "serial_number": None,
        "wifi_ssid": None,
    }


def test_redact_fields_scrubs_ipv4_in_other_strings() -> None:
    """An IPv4 address inside any other string value is replaced too."""
    redacted = redact_fields({"web_service": "10.1.2.3:443", "note": "gw 192.168.1.1 ok"})
    assert redacted == {"web_service": f"{REDACTED}:443", "note": f"gw {REDACTED} ok"}


def test_redact_fields_leaves_version_numbers_alone() -> None:
    """A three-part firmware version is not mistaken for an IPv4 address."""
    assert redact_fields({"firmware_version": "25.34.1"}) == {"firmware_version": "25.34.1"}


def test_redact_fields_scrubs_ipv4_inside_lists() -> None:
    """IPv4 addresses nested in list values are hidden as well."""
    redacted = redact_fields({"dns": ["192.168.1.1"], "net": {"gw": "192.168.1.254"}})
    assert "192.168.1" not in json.dumps(redacted)


# --- render_report ------------------------------------------------------------------------------


def test_render_report_with_redact_hides_serial_ssid_mac_ip() -> None:
    """With --redact no serial, SSID, MAC, unit IP or host appears anywhere in the report."""
    report = render_report(HOST, _results(), redact=True)
    for secret in SECRETS:
        assert secret not in report, secret
    assert f"Wall Connector at {REDACTED}" in report
    assert "twc3/<id>/version/serial_number = REDACTED" in report
    assert "twc3/<id>/wifi_status/wifi_mac = REDACTED" in report


def test_render_report_without_redact_shows_everything() -> None:
    """Without --redact the report shows the host, the values and the serial-based topics."""
    report = render_report(HOST, _results(), redact=False)
    for secret in SECRETS:
        assert secret in report, secret
    assert f"twc3/{SERIAL.lower()}/vitals/grid_v = 241.3" in report
    assert f"twc3/{SERIAL.lower()}/wifi_status/wifi_mac = {MAC}" in report


def test_render_report_lists_every_endpoint_and_field_topics() -> None:
    """Each endpoint gets a section with its JSON body and the plain topics it would give."""
    report = render_report(HOST, _results(), redact=True)
    for endpoint in ("vitals", "lifetime", "version", "wifi_status"):
        assert f"== /api/1/{endpoint}" in report
    assert "twc3/<id>/vitals/grid_v = 241.3" in report
    assert "twc3/<id>/vitals/contactor_closed = false" in report
    assert "twc3/<id>/vitals/session_energy_wh = 0" in report
    assert "twc3/<id>/vitals/current_alerts = []" in report
    # A null field has no topic of its own.
    assert "lifetime/avg_startup_temp =" not in report
    assert '"avg_startup_temp": null' in report


def test_render_report_shows_failures() -> None:
    """An endpoint that failed shows its reason instead of a body."""
    results = _results()
    results["lifetime"] = "timeout"
    results["version"] = "unparsable body: not valid JSON"
    report = render_report(HOST, results, redact=True)
    assert "   failed: timeout" in report
    assert "   failed: unparsable body: not valid JSON" in report
    assert "twc3/<id>/vitals/grid_v = 241.3" in report


def test_render_report_without_version_uses_placeholder_id() -> None:
    """Without a version body the topics use <id> even when not redacting."""
    results = _results()
    results["version"] = "connection refused"
    report = render_report(HOST, results, redact=False)
    assert "twc3/<id>/vitals/grid_v = 241.3" in report


def test_render_report_lists_invalid_and_untopicable_fields() -> None:
    """Wrong-typed fields and keys without a safe topic level are called out."""
    results = _results()
    results["vitals"] = _parsed("vitals", {"grid_v": "high", "#": 1, "a/b": 2})
    report = render_report(HOST, results, redact=True)
    assert "fields of unexpected type: grid_v" in report
    assert "(1 keys without a topic)" in report
    assert "twc3/<id>/vitals/a_b = 2" in report


# --- probe() end to end against a closed port ---------------------------------------------------


async def test_probe_of_unreachable_unit_reports_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """probe() against a closed loopback port prints each failure and returns exit code 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with asyncio.timeout(20):
        code = await probe(f"127.0.0.1:{port}", redact=True, timeout_s=2)
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("failed: connection refused") == 4
    assert "127.0.0.1" not in out


# --- the topics the bridge would really use, and hostile strings --------------------------------

HOSTILE_SERIAL = "AB\n\x1b[31mC"


def _hostile_results() -> dict[str, ParsedBody | str]:
    results = _results()
    results["version"] = _parsed("version", {**VERSION, "serial_number": HOSTILE_SERIAL})
    results["vitals"] = _parsed(
        "vitals",
        {**VITALS, "note\u202e": "line1\nforged\x1b[2J\x07", "bad\tkey": "x" * 1000},
    )
    return results


def test_render_report_names_topics_by_the_slug_of_the_serial() -> None:
    """The id is slugify(serial) as the bridge uses it, not the lower-cased raw serial."""
    report = render_report(HOST, _hostile_results(), redact=False)
    assert "topics: twc3/ab_31mc/... (from its serial number)" in report
    assert "twc3/ab_31mc/vitals/grid_v = 241.3" in report


def test_render_report_escapes_every_control_character() -> None:
    """Serial, field names and values with newlines, ANSI and bidi codes are shown escaped."""
    report = render_report(HOST, _hostile_results(), redact=False)
    assert "\x1b" not in report
    assert "\x07" not in report
    assert "\u202e" not in report
    assert all(line.isprintable() for line in report.splitlines())
    assert not any(line.startswith("forged") for line in report.splitlines())
    assert "twc3/ab_31mc/vitals/note_ = line1\\nforged\\x1b[2J\\x07" in report
    # A long value is cut to one readable line.
    assert "twc3/ab_31mc/vitals/bad_key = " + "x" * 200 + "…(+800)" in report


def test_render_report_uses_the_configured_id_and_base_topic() -> None:
    """A host matching a configured connector gets its id; the configured base topic is used."""
    report = render_report(
        HOST, _hostile_results(), redact=False, base_topic="home/tesla", configured_id="garage"
    )
    assert "topics: home/tesla/garage/... (the connector's configured id)" in report
    assert "home/tesla/garage/vitals/grid_v = 241.3" in report
    assert "twc3/" not in report


def test_render_report_says_when_no_id_is_usable() -> None:
    """A serial whose slug is no usable topic id: probe says to set id, as the bridge would."""
    results = _results()
    results["version"] = _parsed("version", {**VERSION, "serial_number": "\n\x1b[\u202e"})
    report = render_report(HOST, results, redact=False)
    assert "topics: none usable: its serial number gives no usable topic id" in report
    assert "set id" in report
    assert "would publish (once it has an id):" in report


@pytest.mark.parametrize(
    ("configured_id", "serial", "expected"),
    [
        ("garage", HOSTILE_SERIAL, "garage"),
        (None, "PGT 0123/4", "pgt_0123_4"),
        (None, HOSTILE_SERIAL, "ab_31mc"),
        (None, "bridge", None),
        (None, "\x1b[", None),
        (None, None, None),
    ],
)
def test_unit_topic_id_decides_like_the_bridge(
    configured_id: str | None, serial: str | None, expected: str | None
) -> None:
    """Configured id first, else a usable slug of the serial, else none."""
    assert unit_topic_id(configured_id, serial)[0] == expected
