"""decode_body: the tolerant reader for the invalid JSON Wall Connectors send.

See docs/device-api.md, 'Invalid JSON'.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.core.parsing import (
    EXCERPT_CHARS,
    MAX_NESTING,
    ParseError,
    decode_body,
    excerpt,
    value_excerpt,
)

# --- bare non-finite tokens (Q2a) ---------------------------------------------------------------


def test_bare_nan_in_lifetime_becomes_null() -> None:
    """A bare `nan` value, as old lifetime bodies send, is read as None."""
    body = b'{"contactor_cycles":12,"avg_startup_temp":nan,"charge_starts":12}'
    assert decode_body(body) == {
        "contactor_cycles": 12,
        "avg_startup_temp": None,
        "charge_starts": 12,
    }


@pytest.mark.parametrize(
    "token",
    [b"nan", b"NaN", b"NAN", b"-nan", b"inf", b"-inf", b"+inf", b"Infinity", b"-Infinity", b"INF"],
)
def test_bare_non_finite_token_as_value_becomes_null(token: bytes) -> None:
    """Every spelling of a bare nan/inf token as an object value is read as None."""
    assert decode_body(b'{"a":' + token + b',"b":1.5}') == {"a": None, "b": 1.5}


def test_bare_nan_with_spaces_around_becomes_null() -> None:
    """Whitespace between the colon, the token and the next comma does not stop the repair."""
    assert decode_body(b'{"a" : nan , "b" :\tinf }') == {"a": None, "b": None}


def test_bare_nan_inside_array_becomes_null() -> None:
    """Bare nan/inf tokens as array items (first, middle, last) are read as None."""
    body = b'{"current_alerts":[nan,1,-inf, inf],"x":[NaN]}'
    assert decode_body(body) == {"current_alerts": [None, 1, None, None], "x": [None]}


def test_nan_inside_string_value_is_untouched() -> None:
    """Text that looks like a token inside a string (an SSID "a:nan,b") is kept as it is."""
    body = b'{"wifi_ssid":"a:nan,b","other":"[inf]","k":nan}'
    assert decode_body(body) == {"wifi_ssid": "a:nan,b", "other": "[inf]", "k": None}


def test_nan_inside_string_with_escaped_quote_is_untouched() -> None:
    """An escaped quote does not end the string early, so a following ':nan' stays text."""
    body = b'{"s":"x\\":nan,y","t":nan}'
    assert decode_body(body) == {"s": 'x":nan,y', "t": None}


def test_nan_inside_key_is_untouched() -> None:
    """A key containing ':nan' is a string and is not rewritten."""
    assert decode_body(b'{"a:nan":1}') == {"a:nan": 1}


def test_word_starting_with_nan_is_not_a_token() -> None:
    """`nano` is not a nan token: the body stays invalid instead of being half rewritten."""
    with pytest.raises(ParseError):
        decode_body(b'{"a":nano}')


# --- missing final brace (Q2b) ------------------------------------------------------------------


def test_missing_final_brace_is_repaired() -> None:
    """A body cut just before its final `}` is read as the whole object."""
    body = b'{"evse_state":1,"current_alerts":[],"evse_not_ready_reasons":[1]'
    assert decode_body(body) == {
        "evse_state": 1,
        "current_alerts": [],
        "evse_not_ready_reasons": [1],
    }


def test_missing_final_brace_after_bare_nan_is_repaired() -> None:
    """Both quirks at once: a trailing bare nan and no final brace."""
    assert decode_body(b'{"alert_count":7,"avg_startup_temp":nan') == {
        "alert_count": 7,
        "avg_startup_temp": None,
    }


def test_missing_final_brace_with_trailing_newline_is_repaired() -> None:
    """Trailing whitespace after the cut body does not stop the repair."""
    assert decode_body(b'{"a":1.5\r\n') == {"a": 1.5}


def test_body_cut_mid_value_is_not_repaired() -> None:
    """Only the final brace is restored: a body cut inside an array is a ParseError."""
    with pytest.raises(ParseError, match="not valid JSON"):
        decode_body(b'{"a":[1,2')


# --- negative zero (Q2c) ------------------------------------------------------------------------


def test_negative_zero_becomes_positive_zero() -> None:
    """`-0.0` values (pilot_low_v) become 0.0 with a positive sign, also inside arrays."""
    result = decode_body(b'{"pilot_low_v":-0.0,"list":[-0.0,-0.0e3],"i":-0}')
    assert result == {"pilot_low_v": 0.0, "list": [0.0, 0.0], "i": 0}
    assert math.copysign(1.0, result["pilot_low_v"]) == 1.0
    assert all(math.copysign(1.0, item) == 1.0 for item in result["list"])


def test_other_floats_keep_their_value_and_sign() -> None:
    """Normalisation leaves ordinary negative and fixed-decimal floats alone."""
    assert decode_body(b'{"t":-71.5,"e":25164.699,"z":0.000}') == {
        "t": -71.5,
        "e": 25164.699,
        "z": 0.0,
    }


def test_float_overflow_becomes_null() -> None:
    """A number too large for a float (1e400) reads as infinity and becomes None."""
    assert decode_body(b'{"a":1e400,"b":-1e400}') == {"a": None, "b": None}


# --- whitespace and text ------------------------------------------------------------------------


def test_leading_and_trailing_whitespace_is_ignored() -> None:
    """Spaces, tabs and newlines around the object are stripped."""
    assert decode_body(b' \t\r\n{"a":true}\n\n ') == {"a": True}


def test_invalid_utf8_inside_string_is_replaced() -> None:
    """Bytes that are not UTF-8 inside a string value become U+FFFD; the body still reads."""
    result = decode_body(b'{"wifi_ssid":"ab\xff\xfecd","n":1}')
    assert result == {"wifi_ssid": "ab\ufffd\ufffdcd", "n": 1}


def test_lone_surrogate_escape_is_replaced() -> None:
    """A lone-surrogate escape (legal JSON, not UTF-8 encodable) is replaced in keys and values."""
    result = decode_body(b'{"k\\udc00":"x\\ud800y"}')
    assert result == {"k?": "x?y"}
    for key, value in result.items():
        key.encode("utf-8")
        value.encode("utf-8")


def test_unicode_text_is_kept() -> None:
    """Valid non-ASCII text, raw or escaped, comes through unchanged."""
    assert decode_body('{"s":"Garáge °C","e":"\\u00e9"}'.encode()) == {"s": "Garáge °C", "e": "é"}


def test_key_order_is_kept() -> None:
    """Keys come back in the order the unit sent them."""
    assert list(decode_body(b'{"z":1,"a":2,"m":3}')) == ["z", "a", "m"]


# --- bodies that are not a JSON object: ParseError only -----------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"  \r\n\t ", "empty body"),
        (b"\x00\x01\x02\xff\xfe garbage", "not valid JSON"),
        (b"<html><body><h1>500 Internal Server Error</h1></body></html>", "not valid JSON"),
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b'"just a string"', "expected a JSON object, got str"),
        (b"42", "expected a JSON object, got int"),
        (b"\xff\xfe\xfd\xfc", "not valid JSON"),
        (b'{"a":1}}', "not valid JSON"),
        (b"{'a': 1}", "not valid JSON"),
        (b"nan", "not valid JSON"),
        (b'{"a":1,"a":', "not valid JSON"),
    ],
    ids=[
        "empty",
        "whitespace",
        "garbage",
        "html",
        "array",
        "string",
        "number",
        "invalid-utf8",
        "extra-brace",
        "single-quotes",
        "bare-nan-body",
        "cut-after-colon",
    ],
)
def test_non_object_body_raises_parse_error(body: bytes, reason: str) -> None:
    """Bodies that are no JSON object, even after repairs, raise ParseError with a reason."""
    with pytest.raises(ParseError) as caught:
        decode_body(body)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_json_null_body_raises_parse_error() -> None:
    """A `null` body is refused like any other non-object."""
    with pytest.raises(ParseError):
        decode_body(b"null")


def test_very_deep_nesting_raises_parse_error() -> None:
    """A body nested far beyond the recursion limit raises ParseError, not RecursionError."""
    with pytest.raises(ParseError):
        decode_body(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_nesting_beyond_limit_raises_parse_error() -> None:
    """An object nested one level deeper than MAX_NESTING is refused as too deep."""
    depth = MAX_NESTING + 1
    body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ParseError, match="nested too deeply"):
        decode_body(body)


def test_nesting_at_limit_is_accepted() -> None:
    """An object nested exactly MAX_NESTING levels deep still reads."""
    depth = MAX_NESTING
    body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    result = decode_body(body)
    level: Any = result["a"]
    for _ in range(depth - 1):
        assert isinstance(level, list)
        level = level[0]
    assert level == []


def test_5000_digit_integer_becomes_null_and_the_body_is_kept() -> None:
    """An integer beyond Python's int-digit limit is null like infinity; the other keys stay."""
    body = decode_body(b'{"energy_wh":' + b"9" * 5000 + b',"charge_starts":31}')
    assert body == {"energy_wh": None, "charge_starts": 31}


def test_5000_digit_integer_without_final_brace_is_repaired_too() -> None:
    """The brace repair and the long-integer repair work together."""
    assert decode_body(b'{"energy_wh":' + b"9" * 5000) == {"energy_wh": None}


def test_a_few_hundred_digit_integer_is_kept_exactly() -> None:
    """Below the int-digit limit an integer is kept as it is (the raw topic shows it)."""
    assert decode_body(b'{"n":' + b"7" * 400 + b"}") == {"n": int("7" * 400)}


# --- ParseError and excerpt ---------------------------------------------------------------------


def test_parse_error_carries_printable_excerpt() -> None:
    """ParseError keeps a short excerpt with control characters replaced."""
    with pytest.raises(ParseError) as caught:
        decode_body(b"\x00\x1b[31m<html>" + b"x" * 500)
    assert caught.value.excerpt.startswith("??[31m<html>")
    assert caught.value.excerpt.endswith("…")
    assert len(caught.value.excerpt) == EXCERPT_CHARS + 1
    assert caught.value.reason in str(caught.value)


def test_excerpt_of_short_body_is_whole_and_unmarked() -> None:
    """A body shorter than the limit is shown whole, without an ellipsis."""
    assert excerpt(b'{"a":1') == '{"a":1'


def test_excerpt_replaces_invalid_utf8_and_honours_limit() -> None:
    """excerpt() decodes with replacement and cuts at the given limit."""
    assert excerpt(b"\xffabcdef", limit=3) == "\ufffdab…"


# --- properties ---------------------------------------------------------------------------------

_TOKENS = st.sampled_from(
    ["nan", "-nan", "NaN", "inf", "-inf", "Infinity", "-0.0", "0.000", "1e400", "true", "null"]
)
_STRINGS = st.sampled_from(['"a:nan,b"', '"x\\"y"', '"\\ud800"', '"é"', '""', '"}"', '"['])
_NUMBERS = st.integers(-(10**6), 10**6).map(str) | st.floats(allow_nan=False).map(repr)
_KEYS = st.sampled_from(['"a"', '"grid_v"', '"nan"', '"a/b"', '"#"', "a", '""'])


def _object_text(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(_KEYS, st.sampled_from([":", " : ", ""]), children).map("".join)
    return st.lists(pair, max_size=4).map(lambda items: "{" + ",".join(items) + "}")


def _array_text(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(children, max_size=4).map(lambda items: "[" + ", ".join(items) + "]")


_JSONISH = st.recursive(
    _TOKENS | _STRINGS | _NUMBERS,
    lambda children: _object_text(children) | _array_text(children),
    max_leaves=8,
)


@st.composite
def _mangled_jsonish(draw: st.DrawFn) -> bytes:
    text = draw(_object_text(_JSONISH) | _JSONISH)
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, 2))
    if cut == 1 and raw:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif cut == 2:
        raw = raw.rstrip(b"}")
    return draw(st.sampled_from([b"", b"  ", b"\n"])) + raw + draw(st.sampled_from([b"", b"\r\n"]))


def _assert_dict_or_parse_error(raw: bytes) -> None:
    try:
        result = decode_body(raw)
    except ParseError:
        return
    assert isinstance(result, dict)
    # Whatever comes back must be publishable: strict JSON, UTF-8 encodable.
    json.dumps(result, allow_nan=False, ensure_ascii=False).encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_dict_or_parse_error(raw: bytes) -> None:
    """For any bytes, decode_body returns a strict-JSON dict or raises ParseError, nothing else."""
    _assert_dict_or_parse_error(raw)


@settings(max_examples=100, deadline=None)
@given(_mangled_jsonish())
def test_arbitrary_jsonish_text_gives_dict_or_parse_error(raw: bytes) -> None:
    """For JSON-like text with quirks, cuts and stray tokens: a strict-JSON dict or ParseError."""
    _assert_dict_or_parse_error(raw)


_FINITE_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def _without_negative_zero(value: Any) -> Any:
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, list):
        return [_without_negative_zero(item) for item in value]
    if isinstance(value, dict):
        return {key: _without_negative_zero(item) for key, item in value.items()}
    return value


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    return 0


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _FINITE_JSON, max_size=8), st.booleans())
def test_valid_json_object_round_trips(document: dict[str, Any], ascii_only: bool) -> None:
    """Any dict of finite JSON values reads back equal, with -0.0 turned into 0.0."""
    assume(_depth(document) <= MAX_NESTING)
    raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8")
    result = decode_body(raw)
    expected = _without_negative_zero(document)
    assert result == expected
    # == ignores the sign of zero; the serialised text does not.
    assert json.dumps(result) == json.dumps(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\nb\x1b[31m", '"a\\nb\\u001b[31m"'),
        (2**64, "18446744073709551616"),
        ([1, {"x": None}], '[1, {"x": null}]'),
        ("\x7f\u2028", '"\\u007f\\u2028"'),
    ],
)
def test_value_excerpt_is_one_printable_line(value: object, expected: str) -> None:
    """Control characters are escaped, so a logged value cannot forge or colour a line."""
    assert value_excerpt(value) == expected


def test_value_excerpt_is_bounded() -> None:
    """A long value is cut, with an ellipsis saying so."""
    text = value_excerpt("x" * 1000)
    assert len(text) <= EXCERPT_CHARS
    assert text.endswith("…")
