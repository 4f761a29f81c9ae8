"""``twc3-bridge probe``: read one unit once and print its bodies and the topics they become."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Final

from bridge.adapters.twc import TwcClient, TwcError
from bridge.core.config import MqttConfig, parse_host
from bridge.core.logtext import escaped
from bridge.core.models import ENDPOINTS, ParsedBody, ParseError, Version, parse_endpoint
from bridge.core.names import id_problem, slugify
from bridge.presentation.publishing import field_messages
from bridge.presentation.topics import TopicLayout

REDACTED: Final = "REDACTED"
DEFAULT_BASE_TOPIC: Final = MqttConfig().base_topic
# A field's value is shown up to this long: enough to recognise it, not a 60 kB screenful.
MAX_PAYLOAD_CHARS: Final = 200
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


def unit_topic_id(configured_id: str | None, serial: str | None) -> tuple[str | None, str]:
    """The id the bridge would name the unit's topics by (or ``None``), and why that one.

    As the bridge decides: a configured ``id`` (or a slug of ``name``) first, else the slug of
    the serial number, if that is a usable topic level.
    """
    if configured_id is not None:
        return configured_id, "the connector's configured id"
    if not serial:
        return None, "no serial number to name its topics by: set id in its [[connectors]] entry"
    candidate = slugify(serial)
    problem = id_problem(candidate)
    if problem:
        return None, f"its serial number gives no usable topic id ({problem}): set id"
    return candidate, "from its serial number"


def render_report(
    host: str,
    results: dict[str, ParsedBody | str],
    *,
    redact: bool,
    base_topic: str = DEFAULT_BASE_TOPIC,
    configured_id: str | None = None,
) -> str:
    """The text ``probe`` prints: each endpoint's body and the field topics it would give.

    Every line is escaped (:func:`bridge.core.logtext.escaped`): a body's strings can hold newlines
    and terminal escape sequences, and none of them reaches the terminal raw.
    """
    shown_host = REDACTED if redact else host
    serial = None
    version = results.get("version")
    if isinstance(version, ParsedBody) and isinstance(version.model, Version):
        serial = version.model.serial_number
    unit_id, why = unit_topic_id(configured_id, serial)
    if unit_id is not None and redact and configured_id is None:
        unit_id = "<id>"  # derived from the serial number, which --redact hides
    layout = TopicLayout(base_topic)
    shown_id = unit_id or "<id>"
    root = layout.unit(shown_id)
    lines = [
        f"Wall Connector at {shown_host} (read-only local API)",
        f"topics: {root}/... ({why})" if unit_id else f"topics: none usable: {why}",
        "",
    ]
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
        lines.append("   would publish:" if unit_id else "   would publish (once it has an id):")
        levels, skipped = field_messages(fields)
        for level, payload in levels.items():
            topic = layout.field(shown_id, endpoint, level)
            lines.append(f"     {topic} = {escaped(payload, MAX_PAYLOAD_CHARS)}")
        if skipped:
            lines.append(f"     ({skipped} keys without a topic)")
        lines.append("")
    return "\n".join(escaped(line, None) for line in lines)


async def probe(
    host: str,
    *,
    redact: bool,
    timeout_s: float = 15.0,
    base_topic: str = DEFAULT_BASE_TOPIC,
    configured_id: str | None = None,
) -> int:
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
    report = render_report(
        host, results, redact=redact, base_topic=base_topic, configured_id=configured_id
    )
    sys.stdout.write(report + "\n")
    return 0 if any(isinstance(result, ParsedBody) for result in results.values()) else 1
