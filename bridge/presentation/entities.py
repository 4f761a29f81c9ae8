"""The entity table: what every published value is, for state topics and discovery alike.

One row per ``(endpoint, field)`` of a connector (:data:`ENTITIES`), per field of a power-sharing
group (:data:`GROUP_ENTITIES`) and for the bridge itself (:data:`BRIDGE_ENTITIES`), all of one
type so discovery builds them alike. The poller publishes every field of every body; this table
says how each is presented (name, device class, unit, state class, category). A connector field
the table does not know still gets an entity, built by :func:`entity_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from bridge.core.derived import EVSE_STATE_NAMES
from bridge.core.vocabulary import REACHABILITIES, ROLES, STATUSES, WIRINGS

Component = Literal["sensor", "binary_sensor"]
Category = Literal["diagnostic"] | None
# Whose value a row shows: a connector's, a power-sharing group's, or the bridge's own.
Scope = Literal["unit", "group", "bridge"]

EVSE_STATE_UNKNOWN: Final = "unknown"


@dataclass(frozen=True, slots=True)
class Entity:
    """How one value is presented to Home Assistant (and named for people)."""

    endpoint: str
    field: str
    name: str
    component: Component = "sensor"
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = None
    precision: int | None = None
    category: Category = None
    enabled: bool = True
    options: tuple[str, ...] = ()
    value_template: str | None = None
    icon: str | None = None
    # The value can be unknown while the unit answers (a sensor reading its "invalid" sentinel):
    # its topic then says ``null``, which discovery maps to unknown (discovery.NULL_TEMPLATE).
    # Other unknown values are not published at all, so their topics never say ``null``.
    nullable: bool = False
    # Available whenever the bridge runs, even while the unit itself is offline.
    always_available: bool = False
    # What a binary sensor's state topic says for on and off.
    payload_on: str = "true"
    payload_off: str = "false"
    scope: Scope = "unit"

    @property
    def key(self) -> str:
        """Unique within its device: ``<endpoint>_<field>`` on a connector, else ``<field>``."""
        return f"{self.endpoint}_{self.field}" if self.scope == "unit" else self.field

    @property
    def reads(self) -> str:
        """The field topic level whose payload this entity shows."""
        return self.field


def _electrical(
    device_class: str,
    unit: str,
    endpoint: str,
    field: str,
    name: str,
    *,
    diagnostic: bool,
    enabled: bool,
) -> Entity:
    return Entity(
        endpoint,
        field,
        name,
        device_class=device_class,
        unit=unit,
        state_class="measurement",
        precision=1,
        category="diagnostic" if diagnostic else None,
        enabled=enabled,
    )


def _voltage(
    endpoint: str, field: str, name: str, *, diagnostic: bool = True, enabled: bool = True
) -> Entity:
    return _electrical(
        "voltage", "V", endpoint, field, name, diagnostic=diagnostic, enabled=enabled
    )


def _current(
    endpoint: str, field: str, name: str, *, diagnostic: bool = True, enabled: bool = True
) -> Entity:
    return _electrical(
        "current", "A", endpoint, field, name, diagnostic=diagnostic, enabled=enabled
    )


def _temperature(
    field: str, name: str, *, diagnostic: bool = True, endpoint: str = "vitals"
) -> Entity:
    return Entity(
        endpoint,
        field,
        name,
        device_class="temperature",
        unit="°C",
        state_class="measurement",
        precision=1,
        category="diagnostic" if diagnostic else None,
        enabled=endpoint != "vitals",  # the raw readings show 255 °C when the sensor fails
        nullable=endpoint == "derived",
    )


def _counter(field: str, name: str, *, enabled: bool = True) -> Entity:
    return Entity(
        "lifetime",
        field,
        name,
        state_class="total_increasing",
        precision=0,
        category="diagnostic",
        enabled=enabled,
        icon="mdi:counter",
    )


def _diagnostic_text(endpoint: str, field: str, name: str, *, enabled: bool = True) -> Entity:
    return Entity(endpoint, field, name, category="diagnostic", enabled=enabled)


_STATE_OPTIONS: Final = (*dict.fromkeys(EVSE_STATE_NAMES.values()), EVSE_STATE_UNKNOWN)
# derived/evse_state_name says unknown_<n> for codes nobody agrees on; an enum entity must only
# ever show one of its options, so those show as "unknown".
_STATE_NAME_TEMPLATE: Final = (
    "{{ value if value in " + repr(list(_STATE_OPTIONS)) + " else '" + EVSE_STATE_UNKNOWN + "' }}"
)

ENTITIES: Final[tuple[Entity, ...]] = (
    # /api/1/vitals
    Entity("vitals", "contactor_closed", "Contactor closed", "binary_sensor", "battery_charging"),
    Entity("vitals", "vehicle_connected", "Vehicle connected", "binary_sensor", "plug"),
    Entity(
        "vitals",
        "session_s",
        "Time plugged in",
        device_class="duration",
        unit="s",
        state_class="measurement",
        precision=0,
    ),
    _voltage("vitals", "grid_v", "Grid voltage", diagnostic=False),
    Entity(
        "vitals",
        "grid_hz",
        "Grid frequency",
        device_class="frequency",
        unit="Hz",
        state_class="measurement",
        precision=2,
        category="diagnostic",
    ),
    _current("vitals", "vehicle_current_a", "Vehicle current", diagnostic=False),
    _current("vitals", "currentA_a", "Phase A current"),
    _current("vitals", "currentB_a", "Phase B current"),
    _current("vitals", "currentC_a", "Phase C current"),
    # Flickers between 0 and the full current on 2025 firmware (docs/device-api.md, 'Vitals
    # fields'): rarely useful.
    _current("vitals", "currentN_a", "Neutral current", enabled=False),
    _voltage("vitals", "voltageA_v", "Phase A voltage"),
    _voltage("vitals", "voltageB_v", "Phase B voltage"),
    _voltage("vitals", "voltageC_v", "Phase C voltage"),
    _voltage("vitals", "relay_coil_v", "Relay coil voltage", enabled=False),
    _voltage("vitals", "relay_k1_v", "Relay K1 voltage", enabled=False),
    _voltage("vitals", "relay_k2_v", "Relay K2 voltage", enabled=False),
    _temperature("pcba_temp_c", "PCB temperature (raw)"),
    _temperature("handle_temp_c", "Handle temperature (raw)"),
    _temperature("mcu_temp_c", "MCU temperature (raw)"),
    Entity(
        "vitals",
        "uptime_s",
        "Uptime",
        device_class="duration",
        unit="s",
        precision=0,
        category="diagnostic",
    ),
    Entity(
        "vitals",
        "input_thermopile_uv",
        "Input thermopile",
        device_class="voltage",
        unit="μV",  # U+03BC, the only micro sign Home Assistant accepts
        state_class="measurement",
        precision=0,
        category="diagnostic",
        enabled=False,
    ),
    _voltage("vitals", "prox_v", "Proximity pilot voltage", enabled=False),
    _voltage("vitals", "pilot_high_v", "Control pilot high voltage", enabled=False),
    _voltage("vitals", "pilot_low_v", "Control pilot low voltage", enabled=False),
    Entity(
        "vitals",
        "session_energy_wh",
        "Session energy (Wh)",
        device_class="energy",
        unit="Wh",
        # Resets to 0 at each plug-in; total_increasing treats that as a new meter cycle.
        state_class="total_increasing",
        precision=0,
        category="diagnostic",
        enabled=False,  # derived/session_energy_kwh shows the same in kWh
    ),
    _diagnostic_text("vitals", "config_status", "Config status", enabled=False),
    Entity("vitals", "evse_state", "State code", category="diagnostic", icon="mdi:numeric"),
    _diagnostic_text("vitals", "current_alerts", "Alert codes"),
    _diagnostic_text("vitals", "evse_not_ready_reasons", "Not-ready reasons"),
    # /api/1/lifetime
    _counter("contactor_cycles", "Contactor cycles"),
    _counter("contactor_cycles_loaded", "Contactor cycles under load"),
    _counter("alert_count", "Alert count"),
    _counter("thermal_foldbacks", "Thermal foldbacks"),
    Entity(
        "lifetime",
        "avg_startup_temp",
        "Average start-up temperature",
        device_class="temperature",
        unit="°C",
        state_class="measurement",
        precision=1,
        category="diagnostic",
        enabled=False,
    ),
    _counter("charge_starts", "Charge starts"),
    Entity(
        "lifetime",
        "energy_wh",
        "Unit lifetime energy (raw)",
        device_class="energy",
        unit="Wh",
        state_class="total_increasing",
        precision=0,
        category="diagnostic",
        # The unit's counter jumps while nothing charges (docs/device-api.md, 'Phantom energy
        # jumps'): not for the dashboard.
        enabled=False,
    ),
    _counter("connector_cycles", "Connector cycles"),
    Entity(
        "lifetime",
        "uptime_s",
        "Lifetime powered time",
        device_class="duration",
        unit="s",
        state_class="total_increasing",
        precision=0,
        category="diagnostic",
        enabled=False,
    ),
    Entity(
        "lifetime",
        "charging_time_s",
        "Lifetime charging time",
        device_class="duration",
        unit="s",
        state_class="total_increasing",
        precision=0,
        category="diagnostic",
    ),
    # /api/1/version
    _diagnostic_text("version", "firmware_version", "Firmware"),
    _diagnostic_text("version", "part_number", "Part number"),
    _diagnostic_text("version", "serial_number", "Serial number"),
    _diagnostic_text("version", "git_branch", "Firmware branch", enabled=False),
    _diagnostic_text("version", "web_service", "Tesla web service", enabled=False),
    # /api/1/wifi_status
    _diagnostic_text("wifi_status", "wifi_ssid", "Wi-Fi SSID (base64)", enabled=False),
    Entity(
        "wifi_status",
        "wifi_signal_strength",
        "Wi-Fi signal",
        unit="%",
        state_class="measurement",
        precision=0,
        category="diagnostic",
        icon="mdi:wifi",
    ),
    Entity(
        "wifi_status",
        "wifi_rssi",
        "Wi-Fi RSSI",
        device_class="signal_strength",
        unit="dBm",
        state_class="measurement",
        precision=0,
        category="diagnostic",
    ),
    Entity(
        "wifi_status",
        "wifi_snr",
        "Wi-Fi SNR",
        device_class="signal_strength",
        unit="dB",
        state_class="measurement",
        precision=0,
        category="diagnostic",
        enabled=False,
    ),
    Entity(
        "wifi_status",
        "wifi_connected",
        "Wi-Fi connected",
        "binary_sensor",
        "connectivity",
        category="diagnostic",
    ),
    _diagnostic_text("wifi_status", "wifi_infra_ip", "IP address", enabled=False),
    Entity(
        "wifi_status",
        "internet",
        "Internet",
        "binary_sensor",
        "connectivity",
        category="diagnostic",
    ),
    _diagnostic_text("wifi_status", "wifi_mac", "Wi-Fi MAC address", enabled=False),
    # derived/…: computed by the bridge (bridge/core/derived.py)
    Entity(
        "derived",
        "power_w",
        "Power",
        device_class="power",
        unit="W",
        state_class="measurement",
        precision=0,
    ),
    _current("derived", "current_a", "Charging current", diagnostic=False),
    Entity(
        "derived",
        "phase_mode",
        "Phase mode",
        device_class="enum",
        options=WIRINGS,  # the wiring in use; "auto" is only a setting
        category="diagnostic",
    ),
    Entity(
        "derived",
        "status",
        "Status",
        device_class="enum",
        options=STATUSES,
        icon="mdi:ev-station",
    ),
    Entity(
        "derived",
        "evse_state_name",
        "State",
        device_class="enum",
        options=_STATE_OPTIONS,
        value_template=_STATE_NAME_TEMPLATE,
        category="diagnostic",
    ),
    Entity("derived", "charging", "Charging", "binary_sensor", "battery_charging"),
    Entity("derived", "plugged_in", "Plugged in", "binary_sensor", "plug"),
    Entity(
        "derived",
        "energy_wh",
        "Energy",
        device_class="energy",
        unit="Wh",
        # Built by the bridge from session increases: never decreases, never jumps
        # (docs/device-api.md, 'Phantom energy jumps').
        state_class="total_increasing",
        precision=0,
    ),
    Entity(
        "derived",
        "lifetime_energy_wh",
        "Unit lifetime energy (guarded)",
        device_class="energy",
        unit="Wh",
        state_class="total_increasing",
        precision=0,
        category="diagnostic",
    ),
    Entity(
        "derived",
        "rejected_energy_samples",
        "Rejected energy samples",
        state_class="total_increasing",
        precision=0,
        category="diagnostic",
        icon="mdi:counter",
    ),
    Entity(
        "derived",
        "session_energy_kwh",
        "Session energy",
        device_class="energy",
        unit="kWh",
        state_class="total_increasing",
        precision=2,
    ),
    Entity(
        "derived",
        "session_duration_s",
        "Session duration",
        device_class="duration",
        unit="s",
        state_class="measurement",
        precision=0,
    ),
    Entity("derived", "alerts", "Alerts", icon="mdi:alert-circle-outline"),
    _diagnostic_text("derived", "wifi_ssid", "Wi-Fi network"),
    Entity("derived", "last_boot", "Last boot", device_class="timestamp", category="diagnostic"),
    Entity(
        "derived",
        "role",
        "Power-sharing role",
        device_class="enum",
        options=ROLES,
        category="diagnostic",
    ),
    Entity(
        "derived",
        "reachability",
        "Reachability",
        device_class="enum",
        options=REACHABILITIES,
        category="diagnostic",
        # Shown even while the unit is offline: that is when it matters.
        always_available=True,
    ),
    Entity("derived", "last_seen", "Last seen", device_class="timestamp", category="diagnostic"),
    _temperature("pcba_temp_c", "PCB temperature", endpoint="derived"),
    _temperature("handle_temp_c", "Handle temperature", diagnostic=False, endpoint="derived"),
    _temperature("mcu_temp_c", "MCU temperature", endpoint="derived"),
)

# twc3/group/<id>/<field>: the totals bridge/core/groups.py computes for a power-sharing group.
GROUP_ENTITIES: Final[tuple[Entity, ...]] = (
    Entity(
        "group",
        "power_w",
        "Power",
        device_class="power",
        unit="W",
        state_class="measurement",
        precision=0,
        scope="group",
    ),
    Entity(
        "group",
        "current_a",
        "Current",
        device_class="current",
        unit="A",
        state_class="measurement",
        precision=1,
        scope="group",
    ),
    Entity(
        "group",
        "members_online",
        "Members online",
        state_class="measurement",
        icon="mdi:ev-station",
        scope="group",
    ),
    Entity(
        "group",
        "members_configured",
        "Members configured",
        category="diagnostic",
        icon="mdi:ev-station",
        scope="group",
    ),
    Entity(
        "group",
        "members_charging",
        "Members charging",
        state_class="measurement",
        icon="mdi:ev-plug-type2",
        scope="group",
    ),
)

# twc3/bridge/state: the bridge's own online/offline (its MQTT Will), and its search counters.
BRIDGE_ENTITIES: Final[tuple[Entity, ...]] = (
    Entity(
        "bridge",
        "state",
        "Connection state",
        "binary_sensor",
        "connectivity",
        category="diagnostic",
        payload_on="online",
        payload_off="offline",
        scope="bridge",
    ),
    # <bridge root>/discovery/<name>: the search counters, announced while [discovery] searches.
    Entity(
        "discovery",
        "searches",
        "Searches",
        state_class="total_increasing",
        category="diagnostic",
        icon="mdi:magnify",
        scope="bridge",
    ),
    Entity(
        "discovery",
        "addresses_asked",
        "Addresses asked",
        state_class="total_increasing",
        category="diagnostic",
        icon="mdi:ip-network",
        scope="bridge",
    ),
    Entity(
        "discovery",
        "units_found",
        "Units found",
        state_class="total_increasing",
        category="diagnostic",
        icon="mdi:ev-station",
        scope="bridge",
    ),
)

_BY_FIELD: Final[dict[tuple[str, str], Entity]] = {(e.endpoint, e.field): e for e in ENTITIES}


def entity_for(endpoint: str, field: str) -> Entity:
    """The table's entity for a field, or a plain disabled diagnostic sensor for unknown ones."""
    known = _BY_FIELD.get((endpoint, field))
    if known is not None:
        return known
    return Entity(endpoint, field, _readable(field), category="diagnostic", enabled=False)


def entities_for_fields(endpoint: str, fields: list[str]) -> list[Entity]:
    """Every entity to announce for the fields a body contains, in body order."""
    return [entity_for(endpoint, field) for field in fields]


def _readable(field: str) -> str:
    words = field.replace("-", "_").replace(".", "_").split("_")
    text = " ".join(word for word in words if word)
    return (text[:1].upper() + text[1:])[:64] or field[:64]
