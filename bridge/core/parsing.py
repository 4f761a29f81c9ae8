"""Tolerant decoding of Wall Connector response bodies into normalised JSON objects.

Firmware sends bodies that strict JSON parsers refuse (docs/device-api.md, 'Invalid JSON'): bare
``nan``/``inf`` tokens, a missing final ``}``, and ``-0.0``. Everything here is pure and raises only
:class:`ParseError`, whatever bytes arrive.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

EXCERPT_CHARS = 80
MAX_NESTING = 32

# A string literal (kept as it is) or a bare non-finite token where a value may start. Strings
# are matched first so that text such as "a:nan," inside an SSID is never rewritten.
_STRING_OR_NON_FINITE = re.compile(
    rb'(?P<string>"(?:[^"\\]|\\.)*")'
    rb"|(?P<lead>[:\[,]\s*)(?P<token>[-+]?(?:nan|NaN|NAN|inf|Inf|INF|infinity|Infinity|INFINITY))"
    rb"(?=\s*[,\]}]|\s*$)"
)


class ParseError(ValueError):
    """A body could not be read as the JSON object an endpoint promises."""

    def __init__(self, reason: str, raw: bytes) -> None:
        self.reason = reason
        self.excerpt = excerpt(raw)
        super().__init__(f"{reason} (body starts {self.excerpt!r})")


def excerpt(raw: bytes, limit: int = EXCERPT_CHARS) -> str:
    """Return a short printable excerpt of a body for a log line."""
    text = raw[:limit].decode("utf-8", "replace")
    printable = "".join(ch if ch.isprintable() else "?" for ch in text)
    return printable + ("…" if len(raw) > limit else "")


def value_excerpt(value: object, limit: int = EXCERPT_CHARS // 2) -> str:
    """Return a short printable excerpt of one decoded JSON value for a log line."""
    try:
        text = json.dumps(value, ensure_ascii=True)  # control characters come out escaped
    except (TypeError, ValueError):  # not JSON, or an integer too long to write
        text = f"<{type(value).__name__}>"
    printable = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return printable + ("…" if len(text) > limit else "")


def _replace_non_finite(raw: bytes) -> bytes:
    def replace(match: re.Match[bytes]) -> bytes:
        if match.group("string") is not None:
            return match.group("string")
        return match.group("lead") + b"null"

    return _STRING_OR_NON_FINITE.sub(replace, raw)


def _reject_constant(_name: str) -> None:
    # json accepts NaN/Infinity by default; they become null like the bare firmware tokens.
    return None


def _int_or_none(digits: str) -> int | None:
    # An integer with more digits than Python turns into a number (int_max_str_digits, 4300 by
    # default) is no more a reading than infinity is: it becomes null, and the body is kept.
    try:
        return int(digits)
    except ValueError:
        return None


def _loads(text: str, *, tolerant_ints: bool = False) -> Any:  # noqa: ANN401 - untyped JSON
    if tolerant_ints:  # a Python hook per integer: only on the repair path
        return json.loads(text, parse_constant=_reject_constant, parse_int=_int_or_none)
    return json.loads(text, parse_constant=_reject_constant)


def decode_body(raw: bytes) -> dict[str, Any]:
    """Decode one endpoint body into a normalised JSON object.

    Normalised means: non-finite numbers and integers too long to read become ``None``, ``-0.0``
    becomes ``0.0``, strings are valid Unicode (lone surrogates replaced), and nesting is bounded.

    Raises:
        ParseError: the body is not a JSON object even after the known repairs.
    """
    stripped = raw.strip()
    if not stripped:
        raise ParseError("empty body", raw)
    # Most bodies are valid JSON: try the C decoder on them as they are before any repair.
    value = _try_loads_utf8(stripped)
    if value is None:
        value = _repaired(stripped)
    if value is None:
        raise ParseError("not valid JSON", raw)
    if not isinstance(value, dict):
        raise ParseError(f"expected a JSON object, got {type(value).__name__}", raw)
    try:
        normalised = _normalise(value, depth=0)
    except _TooDeepError:
        raise ParseError("JSON nested too deeply", raw) from None
    if not isinstance(normalised, dict):  # pragma: no cover - _normalise keeps dicts as dicts
        raise ParseError("expected a JSON object", raw)
    return normalised


def _try_loads_utf8(raw: bytes) -> Any:  # noqa: ANN401 - JSON is untyped until normalised
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _try_loads(text)


def _repaired(stripped: bytes) -> Any:  # noqa: ANN401 - JSON is untyped until normalised
    repaired = _replace_non_finite(stripped)
    try:
        text = repaired.decode("utf-8")
    except UnicodeDecodeError:
        text = repaired.decode("utf-8", "replace")
    value = _try_loads(text, tolerant_ints=True)
    if value is None:
        # Firmware intermittently omits the final brace (HA forum 311670 p3, HA #81443).
        value = _try_loads(text + "}", tolerant_ints=True)
    return value


def _try_loads(text: str, *, tolerant_ints: bool = False) -> Any:  # noqa: ANN401 - untyped JSON
    try:
        return _loads(text, tolerant_ints=tolerant_ints)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and the int-digits limit; RecursionError deep nesting.
        return None


class _TooDeepError(Exception):
    pass


def _normalise(value: Any, depth: int) -> Any:  # noqa: ANN401 - walks untyped JSON
    # Exact type checks first: json makes only these types, and this runs for every value.
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            return None
        return 0.0 if value == 0 else value
    if kind is int or kind is bool or value is None:
        return value
    if kind is str:
        return _clean_text(value)
    if value and depth >= MAX_NESTING:  # its items would be nested deeper than the limit
        raise _TooDeepError
    if kind is list:
        return [_normalise(item, depth + 1) for item in value]
    if kind is dict:
        return {_clean_text(key): _normalise(item, depth + 1) for key, item in value.items()}
    return None  # pragma: no cover - json produces no other types


def _clean_text(text: str) -> str:
    if text.isascii():
        return text
    # Lone surrogates are legal in JSON escapes but cannot be encoded to UTF-8 for MQTT.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
