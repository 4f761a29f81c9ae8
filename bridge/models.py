"""Typed views of the four Wall Connector endpoints, tolerant of every firmware generation.

Every key is optional (keys come and go with firmware, twc3-api.md §4.4), unknown keys are kept
(``extra="allow"``), and a value of the wrong type makes only that field ``None``: one odd field
never costs the rest of the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bridge.parsing import ParseError, decode_body

Endpoint = Literal["vitals", "lifetime", "version", "wifi_status"]
ENDPOINTS: Final[tuple[Endpoint, ...]] = ("vitals", "lifetime", "version", "wifi_status")


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Vitals(_Body):
    """``/api/1/vitals``: live state of the charger (twc3-api.md §3)."""

    contactor_closed: bool | None = None
    vehicle_connected: bool | None = None
    session_s: int | None = None
    grid_v: float | None = None
    grid_hz: float | None = None
    vehicle_current_a: float | None = None
    currentA_a: float | None = None  # noqa: N815 - the unit's own key
    currentB_a: float | None = None  # noqa: N815 - the unit's own key
    currentC_a: float | None = None  # noqa: N815 - the unit's own key
    currentN_a: float | None = None  # noqa: N815 - the unit's own key
    voltageA_v: float | None = None  # noqa: N815 - the unit's own key
    voltageB_v: float | None = None  # noqa: N815 - the unit's own key
    voltageC_v: float | None = None  # noqa: N815 - the unit's own key
    relay_coil_v: float | None = None
    relay_k1_v: float | None = None
    relay_k2_v: float | None = None
    pcba_temp_c: float | None = None
    handle_temp_c: float | None = None
    mcu_temp_c: float | None = None
    uptime_s: int | None = None
    input_thermopile_uv: int | None = None
    prox_v: float | None = None
    pilot_high_v: float | None = None
    pilot_low_v: float | None = None
    session_energy_wh: float | None = None
    config_status: int | None = None
    evse_state: int | None = None
    # Numeric IDs on modern firmware, placeholder strings in old fixtures (twc3-api.md §3).
    current_alerts: list[int | str] | None = None
    evse_not_ready_reasons: list[int] | None = None


class Lifetime(_Body):
    """``/api/1/lifetime``: counters over the unit's life (twc3-api.md §4.1)."""

    contactor_cycles: int | None = None
    contactor_cycles_loaded: int | None = None
    alert_count: int | None = None
    thermal_foldbacks: int | None = None
    avg_startup_temp: float | None = None
    charge_starts: int | None = None
    energy_wh: float | None = None
    connector_cycles: int | None = None
    uptime_s: int | None = None
    charging_time_s: int | None = None


class Version(_Body):
    """``/api/1/version``: identity and firmware (twc3-api.md §4.2)."""

    firmware_version: str | None = None
    part_number: str | None = None
    serial_number: str | None = None
    git_branch: str | None = None
    web_service: str | None = None


class WifiStatus(_Body):
    """``/api/1/wifi_status``: the unit's Wi-Fi link (twc3-api.md §4.3)."""

    wifi_ssid: str | None = None
    wifi_signal_strength: int | None = None
    wifi_rssi: int | None = None
    wifi_snr: int | None = None
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
    """

    endpoint: Endpoint
    fields: dict[str, Any]
    model: AnyBody
    invalid_fields: tuple[str, ...] = ()


def validate_tolerantly(
    model_type: type[_Model], fields: dict[str, Any]
) -> tuple[_Model, tuple[str, ...]]:
    """Validate ``fields``, dropping (not failing on) known keys whose value has the wrong type."""
    candidate = dict(fields)
    invalid: list[str] = []
    # Each pass removes at least one offending key, so this ends after at most len(fields) passes.
    for _ in range(len(candidate) + 1):
        try:
            return model_type.model_validate(candidate), tuple(invalid)
        except ValidationError as error:
            offending = {
                str(detail["loc"][0]) for detail in error.errors() if detail["loc"]
            } & candidate.keys()
            if not offending:  # pragma: no cover - every field error carries its key
                break
            for key in sorted(offending):
                invalid.append(key)
                del candidate[key]
    return model_type(), tuple(invalid)  # pragma: no cover - unreachable by the loop bound


def parse_endpoint(endpoint: Endpoint, raw: bytes) -> ParsedBody:
    """Decode and type one body.

    Raises:
        ParseError: the body is not a JSON object even after repairs.
    """
    fields = decode_body(raw)
    model, invalid = validate_tolerantly(MODEL_FOR[endpoint], fields)
    return ParsedBody(endpoint=endpoint, fields=fields, model=model, invalid_fields=invalid)


__all__ = [
    "ENDPOINTS",
    "MODEL_FOR",
    "AnyBody",
    "Endpoint",
    "Lifetime",
    "ParseError",
    "ParsedBody",
    "Version",
    "Vitals",
    "WifiStatus",
    "parse_endpoint",
    "validate_tolerantly",
]
