"""MQTT payload text: plain values and compact JSON for the bridge's topics."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any


def format_number(value: float) -> str | None:
    """Format a number as plain decimal text (``235.1``, ``0``), or ``None`` if not finite."""
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than int_max_str_digits allows in text
            return None
    if not math.isfinite(value):
        return None
    if value.is_integer() and abs(value) < 1e15:  # noqa: PLR2004 - beyond that floats lose units
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def plain_payload(value: Any) -> str | None:  # noqa: ANN401 - any JSON value
    """Format one field value as the text of its own topic.

    Numbers in decimal, booleans ``true``/``false``, strings as they are, lists and objects as
    compact JSON. Returns ``None`` for values that must not be published on their own topic:
    null, non-finite numbers and empty strings (an empty retained payload deletes the topic).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, str):
        return value or None
    return compact_json(value)


def compact_json(value: Any) -> str:  # noqa: ANN401 - any JSON value
    """Serialise to compact JSON; non-finite floats become ``null``, never ``NaN``.

    So do integers too long to write as text (past ``int_max_str_digits``).
    """
    try:
        return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return json.dumps(_finite(value, writable=True), separators=(",", ":"), ensure_ascii=False)


def _finite(value: Any, *, writable: bool = False) -> Any:  # noqa: ANN401 - any JSON value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if writable and isinstance(value, int) and format_number(value) is None:
        return None
    if isinstance(value, list | tuple):
        return [_finite(item, writable=writable) for item in value]
    if isinstance(value, dict):
        return {str(key): _finite(item, writable=writable) for key, item in value.items()}
    return value
