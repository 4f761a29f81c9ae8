"""Topic levels, slugs, ids and plain payload text."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.names import (
    MAX_FIELD_LENGTH,
    MAX_ID_LENGTH,
    field_level,
    id_problem,
    slugify,
    validate_base_topic,
)
from bridge.presentation.topics import TopicLayout, compact_json, format_number, plain_payload

# --- plain_payload / format_number --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (235.1, "235.1"),
        (59.981, "59.981"),
        (0.0, "0"),
        (-0.0, "0"),
        (241.0, "241"),
        (-71.5, "-71.5"),
        (25164.699, "25164.699"),
        (1e-7, "0.0000001"),
        (-2.5e-8, "-0.000000025"),
        (1e16, "10000000000000000"),
        (1.5e300, "15" + "0" * 299),
        (0, "0"),
        (-120, "-120"),
        (5, "5"),
        (10**20, "100000000000000000000"),
        (True, "true"),
        (False, "false"),
        ("HEAD", "HEAD"),
        (" spaced ", " spaced "),
        ("a:nan,b", "a:nan,b"),
    ],
)
def test_plain_payload_formats(value: Any, expected: str) -> None:
    """Numbers print as plain decimals, booleans as true/false, strings unchanged."""
    assert plain_payload(value) == expected


@pytest.mark.parametrize("value", [None, "", math.nan, math.inf, -math.inf])
def test_plain_payload_of_unpublishable_value_is_none(value: Any) -> None:
    """Null, empty strings and non-finite numbers have no payload (an empty one would delete)."""
    assert plain_payload(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], "[]"),
        ([27, 40], "[27,40]"),
        (["alert1", "alert2"], '["alert1","alert2"]'),
        ([1.5, math.nan, [math.inf]], "[1.5,null,[null]]"),
        ({"a": 1, "b": [True, None]}, '{"a":1,"b":[true,null]}'),
        ({"x": -math.inf}, '{"x":null}'),
        ({}, "{}"),
    ],
)
def test_plain_payload_of_list_or_dict_is_compact_json(value: Any, expected: str) -> None:
    """Lists and objects print as compact JSON, with null instead of NaN/Infinity."""
    assert plain_payload(value) == expected


def test_plain_payload_never_uses_an_exponent() -> None:
    """Tiny and huge floats are written out in full, never as 1e-07."""
    for value in (1e-7, 3.3e-12, 9.99e20, -4e-5):
        text = plain_payload(value)
        assert text is not None
        assert "e" not in text.lower()
        assert float(text) == value


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_number_round_trips_without_exponent(value: float) -> None:
    """Any finite float prints as plain decimal text that reads back as the same number."""
    text = format_number(value)
    assert text is not None
    assert "e" not in text.lower()
    assert "n" not in text.lower()  # no nan/inf
    assert float(text) == value


def test_format_number_of_non_finite_is_none() -> None:
    """format_number refuses nan and infinities."""
    assert format_number(math.nan) is None
    assert format_number(math.inf) is None
    assert format_number(-math.inf) is None


def test_compact_json_keeps_unicode_and_has_no_spaces() -> None:
    """compact_json writes UTF-8 text as is and no separators' spaces."""
    assert compact_json({"s": "Garáge", "l": [1, 2]}) == '{"s":"Garáge","l":[1,2]}'


def test_compact_json_output_is_strict_json() -> None:
    """compact_json output is accepted by a parser that refuses NaN."""
    text = compact_json({"a": [math.nan, {"b": math.inf}], "c": (1, 2)})

    def refuse(name: str) -> None:
        raise AssertionError(f"non-finite constant {name} in output")

    assert json.loads(text, parse_constant=refuse) == {"a": [None, {"b": None}], "c": [1, 2]}


# --- field_level --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "grid_v",
        "currentA_a",
        "voltageC_v",
        "session_energy_wh",
        "evse_not_ready_reasons",
        "IEEE1547VfTripsCrc",
        "a_b-c",
    ],
)
def test_field_level_keeps_real_keys_unchanged(key: str) -> None:
    """Keys the unit really sends come through as they are."""
    assert field_level(key) == key


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a/b", "a_b"),
        ("a+b", "a_b"),
        ("a#b", "a_b"),
        ("x\x00y", "x_y"),
        ("tab\there\n", "tab_here_"),
        ("charge starts", "charge_starts"),
        ("current\xa0_alerts", "current__alerts"),
        ("température", "temp_rature"),
        ("$SYS", "_SYS"),
    ],
)
def test_field_level_sanitises_unsafe_characters(key: str, expected: str) -> None:
    """'/', '+', '#', control characters, spaces and non-ASCII become '_'."""
    assert field_level(key) == expected


@pytest.mark.parametrize("key", ["+", "#", "/", "", "__", "..", ".", "\x00", "/#+", "°"])
def test_field_level_with_nothing_safe_left_is_none(key: str) -> None:
    """A key with no usable character left gets no topic level at all."""
    assert field_level(key) is None


def test_field_level_bounds_a_1kb_key() -> None:
    """A 1 kB key is cut to MAX_FIELD_LENGTH characters."""
    level = field_level("k" * 1024)
    assert level == "k" * MAX_FIELD_LENGTH


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_field_level_is_always_one_safe_topic_level(key: str) -> None:
    """Whatever the key, the level is None or one short level without wildcards or '/'."""
    level = field_level(key)
    if level is None:
        return
    assert 0 < len(level) <= MAX_FIELD_LENGTH
    assert not set(level) & set("/+#\x00")
    assert level.isascii()
    assert level.isprintable()
    assert level.strip("_.")


# --- slugify ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Garage 2", "garage_2"),
        ("Car Port 2", "car_port_2"),
        ("  Garage -- Left!  ", "garage_left"),
        ("Garáge Ñorth", "garage_north"),
        ("Straße", "strae"),
        ("Ｇａｒａｇｅ", "garage"),
        ("../#", ""),
        ("车库", ""),
        ("", ""),
        ("___", ""),
        ("twc3/garage/+", "twc3_garage"),
    ],
)
def test_slugify(name: str, expected: str) -> None:
    """Names fold to lower-case ASCII with '_' between words; nothing usable gives ''."""
    assert slugify(name) == expected


def test_slugify_bounds_a_1kb_name() -> None:
    """A 1 kB name gives a slug of at most MAX_ID_LENGTH characters that is a valid id."""
    slug = slugify("Garage " * 150)
    assert 0 < len(slug) <= MAX_ID_LENGTH
    assert not slug.endswith("_")
    assert id_problem(slug) is None


def test_slugify_cut_does_not_leave_trailing_underscore() -> None:
    """Cutting at the length limit right after a separator drops the separator."""
    name = "a" * (MAX_ID_LENGTH - 1) + " b"
    assert slugify(name) == "a" * (MAX_ID_LENGTH - 1)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_slugify_gives_a_valid_id_or_empty(name: str) -> None:
    """Any name gives either '' or a slug that is a valid topic id (or a reserved word)."""
    slug = slugify(name)
    if slug:
        assert id_problem(slug) in {None, f"'{slug}' is reserved for the bridge's own topics"}


# --- id_problem ---------------------------------------------------------------------------------


@pytest.mark.parametrize("candidate", ["garage", "garage_2", "unit-1", "0abc", "a" * MAX_ID_LENGTH])
def test_id_problem_accepts_valid_ids(candidate: str) -> None:
    """Lower-case ids of a-z, 0-9, '_' and '-' up to the length limit are fine."""
    assert id_problem(candidate) is None


@pytest.mark.parametrize(
    ("candidate", "fragment"),
    [
        ("bridge", "reserved"),
        ("group", "reserved"),
        ("Garage", "may contain only"),
        ("garage/2", "may contain only"),
        ("a+b", "may contain only"),
        ("#", "may contain only"),
        ("_garage", "starting with"),
        ("-garage", "starting with"),
        ("gar age", "may contain only"),
        ("garáge", "may contain only"),
        ("", "must not be empty"),
        ("a" * (MAX_ID_LENGTH + 1), f"at most {MAX_ID_LENGTH}"),
        pytest.param(
            "garage\n",
            "may contain only",
            id="trailing-newline",
        ),
    ],
)
def test_id_problem_names_the_problem(candidate: str, fragment: str) -> None:
    """Reserved, upper-case, slash, wildcard, empty and too-long ids are each explained."""
    problem = id_problem(candidate)
    assert problem is not None
    assert fragment in problem


# --- validate_base_topic ------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["twc3", "home/twc3", "a/b/c", "Garage Chargers"])
def test_validate_base_topic_accepts_plain_topics(base: str) -> None:
    """Ordinary one- or multi-level base topics are fine."""
    assert validate_base_topic(base) is None


@pytest.mark.parametrize(
    ("base", "fragment"),
    [
        ("", "empty"),
        ("/twc3", "start or end"),
        ("twc3/", "start or end"),
        ("home//twc3", "empty levels"),
        ("twc3/+", "'+'"),
        ("twc3/#", "'#'"),
        ("twc3\x00", "control"),
        ("twc3\n", "control"),
        ("t" * 129, "128 bytes"),
        ("é" * 65, "128 bytes"),
    ],
)
def test_validate_base_topic_names_the_problem(base: str, fragment: str) -> None:
    """Empty, slash-edged, empty-level, wildcard, control and over-long bases are refused."""
    problem = validate_base_topic(base)
    assert problem is not None
    assert fragment in problem


def test_validate_base_topic_accepts_exactly_128_bytes() -> None:
    """The length limit counts UTF-8 bytes and 128 is still fine."""
    assert validate_base_topic("t" * 128) is None
    assert validate_base_topic("é" * 64) is None


def test_integers_too_long_to_write_have_no_payload() -> None:
    """Past int_max_str_digits str() raises; the payload is None (or null inside JSON) instead."""
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    huge = 10**5000
    sys.set_int_max_str_digits(previous)
    assert format_number(huge) is None
    assert plain_payload(huge) is None
    assert compact_json({"a": [huge, 1.5]}) == '{"a":[null,1.5]}'


def test_an_integer_of_hundreds_of_digits_is_written_in_full() -> None:
    """Below the limit nothing is lost: the raw topic shows the unit's value."""
    assert plain_payload(int("9" * 400)) == "9" * 400


# --- the topic layout --------------------------------------------------------------------------


def test_layout_spells_every_topic_under_the_base() -> None:
    layout = TopicLayout("home/twc")
    assert layout.bridge_state == "home/twc/bridge/state"
    assert layout.unit("garage") == "home/twc/garage"
    assert layout.availability("garage") == "home/twc/garage/availability"
    assert layout.body("garage", "vitals") == "home/twc/garage/vitals"
    assert layout.field("garage", "vitals", "grid_v") == "home/twc/garage/vitals/grid_v"
    assert layout.derived("garage", "power_w") == "home/twc/garage/derived/power_w"
    assert layout.event("garage") == "home/twc/garage/event"
    assert layout.poller("garage", "parse_errors") == "home/twc/garage/poller/parse_errors"
    assert layout.group("carport", "power_w") == "home/twc/group/carport/power_w"
    assert layout.every_unit("derived", "power_w") == "home/twc/+/derived/power_w"


def test_layout_parses_back_what_it_spells() -> None:
    layout = TopicLayout("twc3")
    assert layout.parse_unit_topic(layout.derived("garage", "status")) == (
        "garage",
        ("derived", "status"),
    )
    assert layout.parse_unit_topic("other/garage/availability") is None


def test_only_the_layout_spells_the_bridges_topics() -> None:
    """No module but presentation/topics.py writes a topic of the layout out by hand."""
    spelt = re.compile(
        r'/(availability|bridge/state|event|derived/\{|poller/\{|group/\{)["/]|base_topic\}/'
    )
    package = Path(__file__).resolve().parent.parent / "bridge"
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name not in {"topics.py", "homie.py"} and path.parent.name != "sim"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if 'f"' in line and spelt.search(line) and "homie" not in line
    ]
    assert offenders == []


# --- named instances ---------------------------------------------------------------------------


def test_an_instance_gets_its_own_state_and_owner_topics() -> None:
    layout = TopicLayout("home/twc", "garage")
    assert layout.bridge_state == "home/twc/bridge/garage/state"
    assert layout.bridge_owner == "home/twc/bridge/garage/owner"
    assert layout.every_instance_state == "home/twc/bridge/+/state"
    # Unit topics do not depend on the instance: several processes share the base topic.
    assert layout.availability("barn") == TopicLayout("home/twc").availability("barn")


def test_without_an_instance_the_state_topic_is_unchanged() -> None:
    layout = TopicLayout("twc3")
    assert layout.bridge_state == "twc3/bridge/state"
    assert layout.bridge_owner == "twc3/bridge/owner"


@pytest.mark.parametrize(
    ("topic", "instance"),
    [
        ("twc3/bridge/state", ""),
        ("twc3/bridge/garage/state", "garage"),
        ("twc3/bridge/garage/owner", None),
        ("twc3/bridge/a/b/state", None),
        ("twc3/bridge//state", None),
        ("twc3/garage/availability", None),
        ("other/bridge/garage/state", None),
    ],
)
def test_layout_parses_instance_state_topics(topic: str, instance: str | None) -> None:
    assert TopicLayout("twc3").parse_instance_state(topic) == instance
