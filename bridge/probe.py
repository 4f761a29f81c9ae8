"""``twc3-bridge probe``: read one unit once and print its bodies and the topics they become."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Final

from bridge.config import parse_host
from bridge.models import ENDPOINTS, ParsedBody, ParseError, parse_endpoint
from bridge.publishing import field_messages
from bridge.twc import TwcClient, TwcError

REDACTED: Final = "REDACTED"
# Fields that identify the unit or the owner's network.
_SECRET_FIELDS: Final = frozenset({"serial_number", "wifi_ssid", "wifi_mac", "wifi_infra_ip"})
_IPV4: Final = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def redact_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A copy of a body with identifying values replaced, at any depth."""
    redacted = _redact(fields)
    assert isinstance(redacted, dict)  # noqa: S101 - _redact keeps the shape of its input
    return redacted


def _redact(value: Any, key: str = "") -> Any:  # noqa: ANN401 - walks untyped JSON
    if key in _SECRET_FIELDS and value is not None:
        return REDACTED
    if isinstance(value, str):
        return _IPV4.sub(REDACTED, value)
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, dict):
        return {name: _redact(item, name) for name, item in value.items()}
    return value


def render_report(host: str, results: dict[str, ParsedBody | str], *, redact: bool) -> str:
    """The text ``probe`` prints: each endpoint's body and the field topics it would give."""
    shown_host = REDACTED if redact else host
    serial = None
    version = results.get("version")
    if isinstance(version, ParsedBody):
        serial = version.fields.get("serial_number")
    unit_id = "<id>" if redact or not isinstance(serial, str) else serial.lower()
    lines = [f"Wall Connector at {shown_host} (read-only local API)", ""]
    for endpoint in ENDPOINTS:
        result = results[endpoint]
        lines.append(f"== /api/1/{endpoint}")
        if isinstance(result, str):
            lines.append(f"   failed: {result}")
            lines.append("")
            continue
        fields = redact_fields(result.fields) if redact else result.fields
        lines.extend("   " + line for line in json.dumps(fields, indent=2).splitlines())
        if result.invalid_fields:
            lines.append(f"   fields of unexpected type: {', '.join(result.invalid_fields)}")
        lines.append("   would publish:")
        levels, skipped = field_messages(fields)
        for level, payload in levels.items():
            lines.append(f"     twc3/{unit_id}/{endpoint}/{level} = {payload}")
        if skipped:
            lines.append(f"     ({skipped} keys without a topic)")
        lines.append("")
    return "\n".join(lines)


async def probe(host: str, *, redact: bool, timeout_s: float = 15.0) -> int:
    """Read the four endpoints of ``host`` once and print them; exit code 1 if none answered."""
    address, port = parse_host(host)
    shown = f"[{address}]" if ":" in address else address
    client = TwcClient(f"http://{shown}:{port}", read_timeout_s=timeout_s)
    results: dict[str, ParsedBody | str] = {}
    try:
        for endpoint in ENDPOINTS:
            try:
                results[endpoint] = parse_endpoint(endpoint, await client.fetch(endpoint))
            except TwcError as error:
                results[endpoint] = error.reason
            except ParseError as error:
                results[endpoint] = f"unparsable body: {error.reason}"
    finally:
        await client.aclose()
    sys.stdout.write(render_report(host, results, redact=redact) + "\n")
    return 0 if any(isinstance(result, ParsedBody) for result in results.values()) else 1
