"""Typed views of the four Wall Connector endpoints, tolerant of every firmware generation.

Every key is optional (keys come and go with firmware, docs/device-api.md), unknown keys are kept
(``extra="allow"``), and a value of the wrong type makes only that field ``None``: one odd field
never costs the rest of the body. The physical bounds of every typed field live here too: a value
outside them (an uptime of 2**64 s, a grid voltage of 1e308) is ``None`` in the model, so derived
values treat it as unknown, while the raw body (``ParsedBody.fields``) keeps it for its own topic.
Which firmware sends which keys: docs/device-api.md, 'Fields by firmware'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.core.parsing import ParseError, decode_body

Endpoint = Literal["vitals", "lifetime", "version", "wifi_status"]
ENDPOINTS: Final[tuple[Endpoint, ...]] = ("vitals", "lifetime", "version", "wifi_status")


# Physical bounds, far wider than any real reading but narrow enough that arithmetic on them
# (timestamps, power, energy sums) can never overflow. Outside them a value is unknown.
CENTURY_S: Final = 100 * 365 * 86_400 + 25 * 86_400
MAX_VOLTS: Final = 1_000.0  # pilot voltages are negative (-12 V), noise around 0 V too
MAX_AMPS: Final = 1_000.0  # small negative noise on idle phases is a real reading
MAX_HZ: Final = 1_000.0
MIN_CELSIUS: Final = -100.0
MAX_CELSIUS: Final = 300.0  # above the 255 °C "read invalid" sentinel, which clean_temperature maps
MAX_MICROVOLTS: Final = 10**9
# A century at 22 kW is under 2·10¹⁰ Wh; 10¹¹ leaves room and keeps sums exact enough.
MAX_ENERGY_WH: Final = 1e11
MAX_COUNT: Final = 10**12
CODE_RANGE: Final = (-(2**31), 2**31 - 1)  # status and alert codes are 32-bit integers
MAX_DECIBELS: Final = 1_000

Seconds = Annotated[int, Field(ge=0, le=CENTURY_S)]
Volts = Annotated[float, Field(ge=-MAX_VOLTS, le=MAX_VOLTS)]
Amps = Annotated[float, Field(ge=-MAX_AMPS, le=MAX_AMPS)]
Hertz = Annotated[float, Field(ge=0, le=MAX_HZ)]
Celsius = Annotated[float, Field(ge=MIN_CELSIUS, le=MAX_CELSIUS)]
Microvolts = Annotated[int, Field(ge=-MAX_MICROVOLTS, le=MAX_MICROVOLTS)]
WattHours = Annotated[float, Field(ge=0, le=MAX_ENERGY_WH)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Code = Annotated[int, Field(ge=CODE_RANGE[0], le=CODE_RANGE[1])]
Decibels = Annotated[int, Field(ge=-MAX_DECIBELS, le=MAX_DECIBELS)]
Percent = Annotated[int, Field(ge=0, le=100)]

# pydantic error types that mean "a number, outside its field's bounds" (an integer too large for
# a float field is reported as "float_type", and is checked for separately).
_OUT_OF_RANGE_ERRORS: Final = frozenset(
    {"greater_than_equal", "less_than_equal", "finite_number", "int_parsing_size"}
)


class _Body(BaseModel):
    # Strings such as "nan" would otherwise become non-finite floats in the model.
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)


class Vitals(_Body):
    """``/api/1/vitals``: live state of the charger (docs/device-api.md, 'Vitals fields')."""

    contactor_closed: bool | None = None
    vehicle_connected: bool | None = None
    session_s: Seconds | None = None
    grid_v: Volts | None = None
    grid_hz: Hertz | None = None
    vehicle_current_a: Amps | None = None
    currentA_a: Amps | None = None  # noqa: N815 - the unit's own key
    currentB_a: Amps | None = None  # noqa: N815 - the unit's own key
    currentC_a: Amps | None = None  # noqa: N815 - the unit's own key
    currentN_a: Amps | None = None  # noqa: N815 - the unit's own key
    voltageA_v: Volts | None = None  # noqa: N815 - the unit's own key
    voltageB_v: Volts | None = None  # noqa: N815 - the unit's own key
    voltageC_v: Volts | None = None  # noqa: N815 - the unit's own key
    relay_coil_v: Volts | None = None
    relay_k1_v: Volts | None = None
    relay_k2_v: Volts | None = None
    pcba_temp_c: Celsius | None = None
    handle_temp_c: Celsius | None = None
    mcu_temp_c: Celsius | None = None
    uptime_s: Seconds | None = None
    input_thermopile_uv: Microvolts | None = None
    prox_v: Volts | None = None
    pilot_high_v: Volts | None = None
    pilot_low_v: Volts | None = None
    session_energy_wh: WattHours | None = None
    config_status: Code | None = None
    evse_state: Code | None = None
    # Numeric IDs on modern firmware, placeholder strings in old fixtures
    # (docs/device-api.md, 'Vitals fields').
    current_alerts: list[Code | str] | None = None
    evse_not_ready_reasons: list[Code] | None = None


class Lifetime(_Body):
    """``/api/1/lifetime``: the unit's life counters (docs/device-api.md, 'Lifetime fields')."""

    contactor_cycles: Count | None = None
    contactor_cycles_loaded: Count | None = None
    alert_count: Count | None = None
    thermal_foldbacks: Count | None = None
    avg_startup_temp: Celsius | None = None
    charge_starts: Count | None = None
    energy_wh: WattHours | None = None
    connector_cycles: Count | None = None
    uptime_s: Seconds | None = None
    charging_time_s: Seconds | None = None


class Version(_Body):
    """``/api/1/version``: identity and firmware (docs/device-api.md, 'Version fields')."""

    firmware_version: str | None = None
    part_number: str | None = None
    serial_number: str | None = None
    git_branch: str | None = None
    web_service: str | None = None


class WifiStatus(_Body):
    """``/api/1/wifi_status``: the unit's Wi-Fi link (docs/device-api.md, 'Wi-Fi status fields')."""

    wifi_ssid: str | None = None
    wifi_signal_strength: Percent | None = None
    wifi_rssi: Decibels | None = None
    wifi_snr: Decibels | None = None
    wifi_connected: bool | None = None
    wifi_infra_ip: str | None = None
    internet: bool | None = None
    wifi_mac: str | None = None


AnyBody = Vitals | Lifetime | Version | WifiStatus
MODEL_FOR: Final[dict[Endpoint, type[AnyBody]]] = {
    "vitals": Vitals,
    "lifetime": Lifetime,
    "version": Version,
    "wifi_status": WifiStatus,
}

_Model = TypeVar("_Model", bound=_Body)


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """One successfully read endpoint body.

    Attributes:
        endpoint: which endpoint it came from.
        fields: the whole normalised body, unknown keys included, in the unit's key order.
        model: the typed view used for derived values.
        invalid_fields: known keys whose value had the wrong type (``None`` in ``model``).
        out_of_range: known keys whose number is outside physical sense (``None`` in ``model``;
            still in ``fields``, so still published raw).
    """

    endpoint: Endpoint
    fields: dict[str, Any]
    model: AnyBody
    invalid_fields: tuple[str, ...] = ()
    out_of_range: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Validated(Generic[_Model]):
    """A typed view of a body and the known keys left out of it, by reason."""

    model: _Model
    invalid_fields: tuple[str, ...]
    out_of_range: tuple[str, ...]


def validate_tolerantly(
    model_type: type[_Model], fields: dict[str, Any]
) -> tuple[_Model, tuple[str, ...]]:
    """Validate ``fields``, dropping (not failing on) known keys whose value is unusable.

    Returns the model and every dropped key: of the wrong type or outside the field's bounds.
    """
    result = validate_fields(model_type, fields)
    return result.model, result.invalid_fields + result.out_of_range


def validate_fields(model_type: type[_Model], fields: dict[str, Any]) -> Validated[_Model]:
    """Validate ``fields`` like :func:`validate_tolerantly`, telling the two reasons apart."""
    candidate = dict(fields)
    invalid: list[str] = []
    out_of_range: list[str] = []
    # Each pass removes at least one offending key, so this ends after at most len(fields) passes.
    for _ in range(len(candidate) + 1):
        try:
            model = model_type.model_validate(candidate)
        except ValidationError as error:
            # key -> out of range (else the wrong type); for a union such as ``int | str`` one
            # branch saying "too large" is enough, whatever the others say.
            offending: dict[str, bool] = {}
            for detail in error.errors():
                key = str(detail["loc"][0]) if detail["loc"] else None
                if key is None or key not in candidate:
                    continue
                beyond = _beyond_bounds(detail["type"], candidate[key])
                offending[key] = offending.get(key, False) or beyond
            if not offending:  # pragma: no cover - every field error carries its key
                break
            for key in sorted(offending):
                (out_of_range if offending[key] else invalid).append(key)
                del candidate[key]
        else:
            return Validated(model, tuple(invalid), tuple(out_of_range))
    return Validated(model_type(), tuple(invalid), tuple(out_of_range))  # pragma: no cover


def _beyond_bounds(error_type: str, value: object) -> bool:
    if error_type in _OUT_OF_RANGE_ERRORS:
        return True
    # An integer too large to be a float is a number, just not a sensible one.
    return error_type == "float_type" and isinstance(value, int) and not isinstance(value, bool)


def parse_endpoint(endpoint: Endpoint, raw: bytes) -> ParsedBody:
    """Decode and type one body.

    Raises:
        ParseError: the body is not a JSON object even after repairs.
    """
    fields = decode_body(raw)
    result = validate_fields(MODEL_FOR[endpoint], fields)
    return ParsedBody(
        endpoint=endpoint,
        fields=fields,
        model=result.model,
        invalid_fields=result.invalid_fields,
        out_of_range=result.out_of_range,
    )


__all__ = [
    "ENDPOINTS",
    "MODEL_FOR",
    "AnyBody",
    "Endpoint",
    "Lifetime",
    "ParseError",
    "ParsedBody",
    "Validated",
    "Version",
    "Vitals",
    "WifiStatus",
    "parse_endpoint",
    "validate_fields",
    "validate_tolerantly",
]
