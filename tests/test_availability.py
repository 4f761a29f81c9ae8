"""Entity availability means one thing (bridge and unit online); an invalid reading is unknown."""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import Any, Final

import pytest

from bridge.core.derived import clean_temperature
from bridge.core.outbox import Outbox
from bridge.core.unit_values import Derived
from bridge.presentation.discovery import (
    NULL_TEMPLATE,
    bridge_configs,
    device_config,
    entity_configs,
    group_configs,
)
from bridge.presentation.entities import ENTITIES, Entity
from bridge.presentation.publishing import UnitTopics, publish_derived
from tests.discovery_samples import GARAGE as INFO
from tests.discovery_samples import SITE
from tests.ha_schema import problems_in_device_config, problems_in_entity_config

BRIDGE_STATE: Final = {"topic": "twc3/bridge/state"}
UNIT_AVAILABILITY: Final = {"topic": "twc3/garage/availability"}
# Home Assistant's PAYLOAD_NONE (homeassistant/components/mqtt/const.py); openHAB's Home Assistant
# binding uses the same word as its sensors' null value (component/Sensor.java).
PAYLOAD_NONE: Final = "None"
_SIMPLE_TEMPLATE: Final = re.compile(
    r"\{\{ '(?P<then>[^']*)' if value == '(?P<when>[^']*)' else value \}\}"
)


def _render(template: str, value: str) -> str:
    """Render a value_template the way Home Assistant does, with Jinja when it is installed."""
    if importlib.util.find_spec("jinja2") is not None:
        jinja2 = importlib.import_module("jinja2")
        rendered: str = (
            jinja2.Environment(autoescape=False).from_string(template).render(value=value)
        )
        return rendered
    # jinja2 is not a dependency: read the one template shape the bridge uses.
    match = _SIMPLE_TEMPLATE.fullmatch(template)
    assert match is not None, template
    return match["then"] if value == match["when"] else value


def _unit_entity_configs() -> dict[str, dict[str, Any]]:
    return entity_configs(SITE, INFO, list(ENTITIES))


def _device_payload() -> dict[str, Any]:
    ((_, payload),) = device_config(SITE, INFO, list(ENTITIES)).items()
    return payload


def _nullable() -> list[Entity]:
    return [entity for entity in ENTITIES if entity.nullable]


def test_every_unit_entity_is_available_on_the_bridge_and_the_unit_only() -> None:
    """Per-entity payloads list the bridge state and the unit's availability, and nothing else."""
    for topic, payload in _unit_entity_configs().items():
        entries = payload["availability"]
        if payload["state_topic"].endswith("/derived/reachability"):
            assert entries == [BRIDGE_STATE], topic
        else:
            assert entries == [BRIDGE_STATE, UNIT_AVAILABILITY], topic
        assert payload["availability_mode"] == "all"
        assert all(set(entry) == {"topic"} for entry in entries), topic


def test_device_payload_shares_one_availability() -> None:
    """Device discovery: the root lists bridge and unit; only always-available rows override it."""
    payload = _device_payload()
    assert payload["availability"] == [BRIDGE_STATE, UNIT_AVAILABILITY]
    overriding = {
        key: component["availability"]
        for key, component in payload["components"].items()
        if "availability" in component
    }
    assert overriding == {"derived_reachability": [BRIDGE_STATE]}
    assert problems_in_device_config(payload) == []


def test_a_device_merged_as_openhab_does_watches_only_bridge_and_unit() -> None:
    """One openHAB tracker per Thing: it merges every entity's availability topics.

    Merged like that, a unit's entities (either discovery mode) watch exactly two topics, both
    online/offline ones, so no single value's payload can take the whole Thing offline.
    """
    merged = {
        entry["topic"]: entry.get("value_template")
        for payload in _unit_entity_configs().values()
        for entry in payload["availability"]
    }
    device = _device_payload()
    for entry in [
        *device["availability"],
        *(e for c in device["components"].values() for e in c.get("availability", [])),
    ]:
        merged[entry["topic"]] = entry.get("value_template")
    assert merged == {BRIDGE_STATE["topic"]: None, UNIT_AVAILABILITY["topic"]: None}


@pytest.mark.parametrize("mode", ["entity", "device"])
def test_bridge_and_group_entities_watch_the_bridge_state_only(mode: str) -> None:
    """Group totals depend on the bridge alone; the bridge's own entity *is* its availability."""
    for payload in group_configs(SITE, "g1", "Garage", mode).values():  # type: ignore[arg-type]
        assert payload["availability"] == [BRIDGE_STATE]
    for payload in bridge_configs(SITE, mode).values():  # type: ignore[arg-type]
        assert "availability" not in payload


def test_null_means_unavailable_is_gone() -> None:
    """One vocabulary: no availability template reads a value topic any more."""
    from bridge.presentation import discovery  # noqa: PLC0415 - only this test needs the module

    assert not hasattr(discovery, "NULL_UNAVAILABLE_TEMPLATE")
    assert "null_means_unavailable" not in Entity.__dataclass_fields__


def test_null_template_renders_none_for_null_and_keeps_numbers() -> None:
    """'null' becomes Home Assistant's 'None' (unknown); any other payload passes unchanged."""
    assert _render(NULL_TEMPLATE, "null") == PAYLOAD_NONE
    for payload in ("41.5", "-3", "0", "255", "None", "nullish"):
        assert _render(NULL_TEMPLATE, payload) == payload


def test_nullable_entities_are_derived_sensors_with_the_null_template() -> None:
    """The table's nullable rows: the derived temperatures, each mapping null to unknown."""
    assert {(e.endpoint, e.field) for e in _nullable()} == {
        ("derived", "pcba_temp_c"),
        ("derived", "handle_temp_c"),
        ("derived", "mcu_temp_c"),
    }
    configs = _unit_entity_configs()
    components = _device_payload()["components"]
    for entity in _nullable():
        # A row's own template would replace the null mapping, so nullable rows have none.
        assert entity.value_template is None, entity.field
        assert entity.component == "sensor"
        (payload,) = (p for p in configs.values() if p["unique_id"].endswith(f"_{entity.key}"))
        assert payload["value_template"] == NULL_TEMPLATE
        assert components[entity.key]["value_template"] == NULL_TEMPLATE
        assert problems_in_entity_config("sensor", payload) == []


def test_only_nullable_rows_carry_the_null_template() -> None:
    """Rows whose topic never says null get no template from the rule."""
    for payload in _unit_entity_configs().values():
        if payload.get("value_template") == NULL_TEMPLATE:
            assert "/derived/" in payload["state_topic"]
            assert payload["state_topic"].endswith("_temp_c")


def test_publishing_says_null_exactly_for_the_nullable_rows() -> None:
    """With every derived value unknown, the topics that say null are the nullable rows' topics."""
    outbox = Outbox()
    topics = UnitTopics(SITE.layout, "garage")
    derived = [entity.field for entity in ENTITIES if entity.endpoint == "derived"]
    publish_derived(outbox, topics, Derived(dict.fromkeys(derived)), now=1_700_000_000.0)
    said_null = {field for field in derived if outbox.get(topics.derived(field)) == "null"}
    assert said_null == {entity.field for entity in _nullable()}
    assert all(outbox.get(topics.derived(f)) is None for f in derived if f not in said_null)


@pytest.mark.parametrize(
    ("reading", "payload", "shown"), [(255.0, "null", "None"), (31.5, "31.5", "31.5")]
)
def test_an_invalid_reading_reaches_home_assistant_as_unknown(
    reading: float, payload: str, shown: str
) -> None:
    """The 255 °C sentinel: plain topic null, template output None (unknown); a real value stays."""
    outbox = Outbox()
    topics = UnitTopics(SITE.layout, "garage")
    derived = Derived({"handle_temp_c": clean_temperature(reading)})
    publish_derived(outbox, topics, derived, now=1_700_000_000.0)
    published = outbox.get("twc3/garage/derived/handle_temp_c")
    assert published == payload
    (config,) = (
        p
        for p in _unit_entity_configs().values()
        if p["state_topic"].endswith("/handle_temp_c") and "/derived/" in p["state_topic"]
    )
    assert _render(config["value_template"], published) == shown
