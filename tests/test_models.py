"""Typed endpoint views: every key optional, unknown keys kept, one bad field costs only itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.core.models import (
    ENDPOINTS,
    MODEL_FOR,
    Endpoint,
    Lifetime,
    ParseError,
    Version,
    Vitals,
    WifiStatus,
    parse_endpoint,
    validate_tolerantly,
)
from tests.conftest import FIXTURES

CAPTURE_FILES = sorted(FIXTURES.glob("*.json"))

# Invented bodies in the layout the docs describe (docs/device-api.md, 'Vitals fields' to 'Wi-Fi
# status fields'); no real unit's values.
VITALS_25: dict[str, Any] = {
    "contactor_closed": False,
    "vehicle_connected": True,
    "session_s": 42,
    "grid_v": 241.3,
    "grid_hz": 59.981,
    "vehicle_current_a": 0.3,
    "currentA_a": 0.1,
    "currentB_a": 0.2,
    "currentC_a": 0.1,
    "currentN_a": 0.0,
    "voltageA_v": 0.2,
    "voltageB_v": 0.0,
    "voltageC_v": 0.2,
    "relay_coil_v": 0.0,
    "pcba_temp_c": 21.4,
    "handle_temp_c": 17.9,
    "mcu_temp_c": 26.0,
    "uptime_s": 3600,
    "input_thermopile_uv": -120,
    "prox_v": 1.5,
    "pilot_high_v": 8.8,
    "pilot_low_v": -11.6,
    "session_energy_wh": 12.5,
    "config_status": 5,
    "evse_state": 4,
    "current_alerts": [],
    "evse_not_ready_reasons": [1],
}


def _body(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def _vitals(**changes: Any) -> dict[str, Any]:
    fields = dict(VITALS_25)
    fields.update(changes)
    return fields


def test_every_endpoint_has_a_model() -> None:
    """The four endpoints map to their four models."""
    assert set(ENDPOINTS) == set(MODEL_FOR)
    assert MODEL_FOR["vitals"] is Vitals
    assert MODEL_FOR["lifetime"] is Lifetime
    assert MODEL_FOR["version"] is Version
    assert MODEL_FOR["wifi_status"] is WifiStatus


def test_full_vitals_body_parses_every_known_field() -> None:
    """A 27-key 2025-style vitals body fills every typed field and flags nothing."""
    parsed = parse_endpoint("vitals", _body(VITALS_25))
    assert isinstance(parsed.model, Vitals)
    assert parsed.endpoint == "vitals"
    assert parsed.invalid_fields == ()
    assert parsed.fields == VITALS_25
    assert isinstance(parsed.model, Vitals)
    for key, value in VITALS_25.items():
        assert getattr(parsed.model, key) == value, key
    assert parsed.model.relay_k1_v is None


def test_fields_keep_the_unit_key_order() -> None:
    """ParsedBody.fields lists keys in the order the unit sent them."""
    parsed = parse_endpoint("vitals", _body(VITALS_25))
    assert isinstance(parsed.model, Vitals)
    assert list(parsed.fields) == list(VITALS_25)


def test_unknown_fields_kept_in_fields_and_model_extras() -> None:
    """Keys the model does not know are kept both in `fields` and in the model extras."""
    fields = _vitals(future_field_v=1.25, IEEE1547VfTripsCrc="0xBEEF")
    parsed = parse_endpoint("vitals", _body(fields))
    assert isinstance(parsed.model, Vitals)
    assert parsed.invalid_fields == ()
    assert parsed.fields["future_field_v"] == 1.25
    assert parsed.fields["IEEE1547VfTripsCrc"] == "0xBEEF"
    assert parsed.model.model_extra == {"future_field_v": 1.25, "IEEE1547VfTripsCrc": "0xBEEF"}
    assert parsed.model.grid_v == 241.3


@pytest.mark.parametrize(
    "key", ["__class__", "__dict__", "model_config", "model_fields", "_private", "copy", ""]
)
def test_keys_named_like_python_attributes_are_plain_extras(key: str) -> None:
    """Hostile keys that shadow Python or pydantic attributes stay extras and break nothing."""
    parsed = parse_endpoint("vitals", _body({key: 1, "grid_v": 230.0}))
    assert isinstance(parsed.model, Vitals)
    assert parsed.model.grid_v == 230.0
    assert parsed.model.model_extra == {key: 1}
    assert parsed.invalid_fields == ()


@pytest.mark.parametrize(
    ("key", "bad_value"),
    [
        ("grid_v", "not a number"),
        ("grid_v", {"value": 241.3}),
        ("contactor_closed", "maybe"),
        ("contactor_closed", [True]),
        ("session_s", 1.5),
        ("session_s", "soon"),
        ("current_alerts", 27),
        ("current_alerts", [1.5]),
        ("current_alerts", [{"id": 27}]),
        ("evse_not_ready_reasons", ["x"]),
        ("evse_not_ready_reasons", "1"),
    ],
)
def test_wrong_typed_known_field_becomes_none(key: str, bad_value: Any) -> None:
    """A known key with a wrong-typed value becomes None and is listed; the rest survive."""
    fields = _vitals(**{key: bad_value})
    parsed = parse_endpoint("vitals", _body(fields))
    assert isinstance(parsed.model, Vitals)
    assert parsed.invalid_fields == (key,)
    assert getattr(parsed.model, key) is None
    assert parsed.fields[key] == bad_value  # the raw body is kept for the JSON topic
    for other, value in VITALS_25.items():
        if other != key:
            assert getattr(parsed.model, other) == value, other


def test_several_wrong_typed_fields_are_all_listed() -> None:
    """Every offending key is listed once and only those keys are dropped."""
    fields = _vitals(grid_v="x", evse_state="y", current_alerts=7)
    parsed = parse_endpoint("vitals", _body(fields))
    assert isinstance(parsed.model, Vitals)
    assert sorted(parsed.invalid_fields) == ["current_alerts", "evse_state", "grid_v"]
    assert len(parsed.invalid_fields) == 3
    assert parsed.model.grid_v is None
    assert parsed.model.evse_state is None
    assert parsed.model.current_alerts is None
    assert parsed.model.session_s == 42


def test_validate_tolerantly_on_lifetime() -> None:
    """validate_tolerantly drops only the bad key and returns it in the second element."""
    model, invalid = validate_tolerantly(Lifetime, {"energy_wh": "lots", "charge_starts": 31})
    assert invalid == ("energy_wh",)
    assert model.energy_wh is None
    assert model.charge_starts == 31


def test_validate_tolerantly_with_every_known_field_wrong() -> None:
    """Even a body whose every known field is wrong gives an all-None model, not an error."""
    fields = dict.fromkeys(Lifetime.model_fields, "wrong")
    model, invalid = validate_tolerantly(Lifetime, fields)
    assert sorted(invalid) == sorted(Lifetime.model_fields)
    assert all(getattr(model, key) is None for key in Lifetime.model_fields)


def test_empty_object_gives_all_none_model() -> None:
    """Every key is optional: `{}` is a valid body for each endpoint."""
    for endpoint in ENDPOINTS:
        parsed = parse_endpoint(endpoint, b"{}")
        assert parsed.invalid_fields == ()
        assert all(value is None for value in parsed.model.model_dump().values())


def test_relay_coil_v_body_parses() -> None:
    """Bodies up to fw 25.x carry relay_coil_v; the relay_k* fields stay None."""
    parsed = parse_endpoint("vitals", _body(_vitals(relay_coil_v=11.8)))
    assert isinstance(parsed.model, Vitals)
    assert parsed.model.relay_coil_v == 11.8
    assert parsed.model.relay_k1_v is None
    assert parsed.model.relay_k2_v is None


def test_relay_k1_v_and_relay_k2_v_body_parses() -> None:
    """2026 firmware replaces relay_coil_v with relay_k1_v and relay_k2_v; both are typed."""
    fields = _vitals(relay_k1_v=12.0, relay_k2_v=0.0)
    del fields["relay_coil_v"]
    parsed = parse_endpoint("vitals", _body(fields))
    assert isinstance(parsed.model, Vitals)
    assert parsed.invalid_fields == ()
    assert parsed.model.relay_k1_v == 12.0
    assert parsed.model.relay_k2_v == 0.0
    assert parsed.model.relay_coil_v is None
    assert "relay_coil_v" not in parsed.fields


def test_current_alerts_numeric_ids_parse() -> None:
    """Modern firmware sends numeric alert ids."""
    parsed = parse_endpoint("vitals", _body(_vitals(current_alerts=[27, 40])))
    assert isinstance(parsed.model, Vitals)
    assert parsed.invalid_fields == ()
    assert parsed.model.current_alerts == [27, 40]


def test_current_alerts_strings_parse() -> None:
    """Old fixtures send placeholder strings; they are kept as strings."""
    parsed = parse_endpoint("vitals", _body(_vitals(current_alerts=["alert1", "alert2"])))
    assert isinstance(parsed.model, Vitals)
    assert parsed.invalid_fields == ()
    assert parsed.model.current_alerts == ["alert1", "alert2"]


def test_current_alerts_empty_list_parses() -> None:
    """The usual `[]` stays an empty list, not None."""
    parsed = parse_endpoint("vitals", _body(_vitals(current_alerts=[])))
    assert isinstance(parsed.model, Vitals)
    assert parsed.model.current_alerts == []


def test_absent_evse_not_ready_reasons_is_none() -> None:
    """Firmware before ~2025 has no evse_not_ready_reasons: the field is None, nothing flagged."""
    fields = _vitals()
    del fields["evse_not_ready_reasons"]
    parsed = parse_endpoint("vitals", _body(fields))
    assert isinstance(parsed.model, Vitals)
    assert parsed.invalid_fields == ()
    assert parsed.model.evse_not_ready_reasons is None
    assert len(parsed.fields) == 26


def test_bare_nan_in_lifetime_becomes_null() -> None:
    """Old lifetime bodies with bare nan parse; those fields are None and not flagged."""
    raw = (
        b'{"contactor_cycles":31,"contactor_cycles_loaded":nan,"alert_count":nan,'
        b'"thermal_foldbacks":0,"avg_startup_temp":nan,"charge_starts":31,"energy_wh":120345,'
        b'"connector_cycles":20,"uptime_s":1234567,"charging_time_s":76543}'
    )
    parsed = parse_endpoint("lifetime", raw)
    assert isinstance(parsed.model, Lifetime)
    assert parsed.invalid_fields == ()
    assert parsed.model.avg_startup_temp is None
    assert parsed.model.alert_count is None
    assert parsed.model.contactor_cycles_loaded is None
    assert parsed.model.energy_wh == 120345
    assert parsed.fields["avg_startup_temp"] is None


def test_bare_nan_in_vitals_becomes_null() -> None:
    """A bare nan in a vitals float field gives None for that field only."""
    raw = _body(VITALS_25).replace(b'"grid_hz":59.981', b'"grid_hz":nan')
    parsed = parse_endpoint("vitals", raw)
    assert isinstance(parsed.model, Vitals)
    assert parsed.invalid_fields == ()
    assert parsed.model.grid_hz is None
    assert parsed.model.grid_v == 241.3


def test_missing_final_brace_in_vitals_is_repaired() -> None:
    """A vitals body without its final brace parses like the whole body."""
    parsed = parse_endpoint("vitals", _body(VITALS_25)[:-1])
    assert isinstance(parsed.model, Vitals)
    assert parsed.fields == VITALS_25
    assert parsed.invalid_fields == ()


def test_negative_zero_in_vitals_becomes_zero() -> None:
    """`"pilot_low_v":-0.0` is read as 0.0 in fields and model."""
    raw = _body(VITALS_25).replace(b'"pilot_low_v":-11.6', b'"pilot_low_v":-0.0')
    parsed = parse_endpoint("vitals", raw)
    assert isinstance(parsed.model, Vitals)
    assert parsed.model.pilot_low_v == 0.0
    assert str(parsed.fields["pilot_low_v"]) == "0.0"


def test_version_without_git_branch_and_web_service() -> None:
    """A 3-key version body (fw ≤24.x) parses; the newer fields are None."""
    fields = {
        "firmware_version": "24.4.1+gTEST000000000",
        "part_number": "1529455-02-D",
        "serial_number": "TEST0000001",
    }
    parsed = parse_endpoint("version", _body(fields))
    assert isinstance(parsed.model, Version)
    assert parsed.invalid_fields == ()
    assert parsed.model.serial_number == "TEST0000001"
    assert parsed.model.git_branch is None
    assert parsed.model.web_service is None


def test_version_with_git_branch_and_web_service() -> None:
    """A 5-key version body (fw 25.x) fills git_branch and web_service."""
    fields = {
        "firmware_version": "25.34.1+gTEST000000000",
        "part_number": "1734412-02-D",
        "serial_number": "TEST0000002",
        "git_branch": "HEAD",
        "web_service": "backend.example.invalid",
    }
    parsed = parse_endpoint("version", _body(fields))
    assert isinstance(parsed.model, Version)
    assert parsed.invalid_fields == ()
    assert parsed.model.git_branch == "HEAD"
    assert parsed.model.web_service == "backend.example.invalid"


def test_version_with_git_branch_but_no_web_service() -> None:
    """web_service is not always present even on firmware that sends git_branch."""
    fields = {"firmware_version": "25.34.1", "serial_number": "TEST0000003", "git_branch": "HEAD"}
    parsed = parse_endpoint("version", _body(fields))
    assert isinstance(parsed.model, Version)
    assert parsed.model.git_branch == "HEAD"
    assert parsed.model.web_service is None
    assert parsed.model.part_number is None


def test_wifi_status_body_parses() -> None:
    """An 8-key wifi_status body fills every typed field."""
    fields = {
        "wifi_ssid": "VEVTVFNTSUQ=",
        "wifi_signal_strength": 64,
        "wifi_rssi": -58,
        "wifi_snr": 30,
        "wifi_connected": True,
        "wifi_infra_ip": "192.0.2.10",
        "internet": True,
        "wifi_mac": "02:00:00:00:00:01",
    }
    parsed = parse_endpoint("wifi_status", _body(fields))
    assert isinstance(parsed.model, WifiStatus)
    assert parsed.invalid_fields == ()
    assert parsed.model.model_dump() == fields


def test_parse_endpoint_raises_parse_error_for_html() -> None:
    """A body that is no JSON object raises ParseError from parse_endpoint."""
    with pytest.raises(ParseError):
        parse_endpoint("vitals", b"<html>500</html>")


def test_model_is_frozen() -> None:
    """Parsed models cannot be changed after the fact."""
    parsed = parse_endpoint("vitals", _body(VITALS_25))
    assert isinstance(parsed.model, Vitals)
    with pytest.raises(ValueError, match="frozen"):
        parsed.model.grid_v = 1.0  # type: ignore[misc]


def _endpoint_of(path: Path) -> Endpoint:
    for endpoint in sorted(ENDPOINTS, key=len, reverse=True):
        if path.name.startswith(endpoint + "_"):
            return endpoint
    pytest.fail(f"{path.name}: no endpoint prefix")


def test_captures_cover_every_endpoint() -> None:
    """The fixtures carry real bodies of each endpoint (an empty glob would test nothing)."""
    assert {_endpoint_of(path) for path in CAPTURE_FILES} == set(ENDPOINTS)


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=lambda path: path.stem)
def test_capture_replay_parses_without_invalid_fields(path: Path) -> None:
    """Every real captured body parses, with each typed field filled from its key."""
    endpoint = _endpoint_of(path)
    parsed = parse_endpoint(endpoint, path.read_bytes())
    assert parsed.invalid_fields == ()
    assert parsed.fields, "a capture has at least one key"
    typed = type(parsed.model).model_fields
    for key, value in parsed.fields.items():
        if key in typed and value is not None:
            assert getattr(parsed.model, key) is not None, key


# --- physical bounds -----------------------------------------------------------------------------

ABSURD_VALUES: list[tuple[Endpoint, str, Any]] = [
    ("vitals", "uptime_s", 2**64 - 1),
    ("vitals", "uptime_s", 1e20),
    ("vitals", "uptime_s", 7e10),
    ("vitals", "uptime_s", -5),
    ("vitals", "session_s", 10**300),
    ("vitals", "grid_v", 1e308),
    ("vitals", "grid_v", 10**400),
    ("vitals", "vehicle_current_a", 1e6),
    ("vitals", "currentB_a", -5_000.0),
    ("vitals", "handle_temp_c", 1e5),
    ("vitals", "mcu_temp_c", -300.0),
    ("vitals", "session_energy_wh", 1e308),
    ("vitals", "session_energy_wh", -1.0),
    ("vitals", "evse_state", 10**300),
    ("vitals", "current_alerts", [40, 2**40]),
    ("lifetime", "energy_wh", 1e308),
    ("lifetime", "charge_starts", -1),
    ("lifetime", "uptime_s", 2**64 - 1),
    ("wifi_status", "wifi_rssi", 10**30),
]


@pytest.mark.parametrize(("endpoint", "key", "value"), ABSURD_VALUES)
def test_a_value_outside_physical_sense_is_unknown_in_the_model_and_kept_raw(
    endpoint: Endpoint, key: str, value: Any
) -> None:
    """The typed view drops it (out_of_range); the raw fields keep it for its own topic."""
    parsed = parse_endpoint(endpoint, _body({key: value, "alert_count": 3}))
    assert getattr(parsed.model, key) is None
    assert parsed.out_of_range == (key,)
    assert parsed.invalid_fields == ()
    assert parsed.fields[key] == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("handle_temp_c", 255.0),  # the "read invalid" sentinel: clean_temperature handles it
        ("currentA_a", -0.4),  # idle noise
        ("pilot_low_v", -11.6),
        ("uptime_s", 0),
        ("uptime_s", 3 * 365 * 86_400),
        ("session_energy_wh", 0.0),
        ("grid_v", 0.0),
        ("evse_state", 11),
    ],
)
def test_real_readings_stay_within_the_bounds(key: str, value: Any) -> None:
    """Sentinels, noise and edge readings real units send are kept in the model."""
    parsed = parse_endpoint("vitals", _body(_vitals(**{key: value})))
    assert getattr(parsed.model, key) == value
    assert parsed.out_of_range == ()
    assert parsed.invalid_fields == ()


def test_wrong_type_and_out_of_range_are_told_apart() -> None:
    """A string in a number field is of the wrong type; a huge number is out of range."""
    parsed = parse_endpoint("vitals", _body(_vitals(grid_v="high", uptime_s=2**64)))
    assert parsed.invalid_fields == ("grid_v",)
    assert parsed.out_of_range == ("uptime_s",)
    model, dropped = validate_tolerantly(Vitals, parsed.fields)
    assert sorted(dropped) == ["grid_v", "uptime_s"]
    assert model.grid_v is None
    assert model.uptime_s is None


def test_a_non_finite_string_never_becomes_a_non_finite_float() -> None:
    """The strings "nan" and "inf" would pass as floats; the model refuses them."""
    parsed = parse_endpoint("vitals", _body(_vitals(grid_v="nan", grid_hz="-inf")))
    assert isinstance(parsed.model, Vitals)
    assert parsed.model.grid_v is None
    assert parsed.model.grid_hz is None
    assert set(parsed.invalid_fields + parsed.out_of_range) == {"grid_v", "grid_hz"}
