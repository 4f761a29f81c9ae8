"""The Node-RED and openHAB examples use topics the real bridge actually publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.presentation.entities import BRIDGE_ENTITIES, ENTITIES, Entity
from bridge.presentation.topics import TopicLayout
from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, subscriber, wait_for_retained

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FLOW = EXAMPLES / "node-red" / "flow.json"
THINGS = EXAMPLES / "openhab" / "twc3.things"
ITEMS = EXAMPLES / "openhab" / "twc3.items"

# Node types that live outside a flow tab: no ``z``, no ``wires``.
CONFIG_TYPES = {"tab", "mqtt-broker"}
THING_UID = "mqtt:topic:wc_garage"


def flow_nodes() -> list[dict[str, Any]]:
    """The nodes of the example flow."""
    nodes = json.loads(FLOW.read_text(encoding="utf-8"))
    assert isinstance(nodes, list)
    return nodes


def flow_topic_filters() -> list[str]:
    """The topic filter of every ``mqtt in`` node of the example flow."""
    return [node["topic"] for node in flow_nodes() if node["type"] == "mqtt in"]


def openhab_channels() -> list[tuple[str, str, str]]:
    """(type, id, parameters) of every channel in the example Thing."""
    pattern = re.compile(r"^\s*Type\s+(\w+)\s*:\s*(\w+)\s+\"[^\"]*\"\s*\[(.*)\]\s*$", re.MULTILINE)
    return [(m[1], m[2], m[3]) for m in pattern.finditer(THINGS.read_text(encoding="utf-8"))]


def openhab_topics() -> list[str]:
    """Every stateTopic and availabilityTopic of the example Thing."""
    text = THINGS.read_text(encoding="utf-8")
    return re.findall(r'(?:stateTopic|availabilityTopic)="([^"]+)"', text)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching with ``+`` (one level) and ``#`` (the rest, also none)."""
    levels, parts = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return index == len(levels) - 1
        if index >= len(parts) or (level != "+" and level != parts[index]):
            return False
    return len(levels) == len(parts)


def test_topic_matching_follows_mqtt_rules() -> None:
    """The wildcard matcher the checks below rely on behaves like a broker."""
    assert topic_matches("twc3/+/event", "twc3/garage/event")
    assert not topic_matches("twc3/+/event", "twc3/garage/event/x")
    assert not topic_matches("twc3/+/derived/power_w", "twc3/garage/derived/power")
    assert topic_matches("twc3/#", "twc3")
    assert topic_matches("twc3/#", "twc3/garage/vitals/grid_v")
    assert not topic_matches("twc3/garage", "twc3/garage/availability")


def test_node_red_flow_is_importable_shape() -> None:
    """The flow is a node list with one tab, a localhost broker and auto-detect MQTT inputs."""
    nodes = flow_nodes()
    ids = [node["id"] for node in nodes]
    assert len(ids) == len(set(ids))
    assert all(isinstance(node.get("type"), str) and node["type"] for node in nodes)
    tabs = [node for node in nodes if node["type"] == "tab"]
    brokers = [node for node in nodes if node["type"] == "mqtt-broker"]
    assert len(tabs) == 1
    assert len(brokers) == 1
    assert (brokers[0]["broker"], str(brokers[0]["port"])) == ("localhost", "1883")
    for node in nodes:
        if node["type"] in CONFIG_TYPES:
            continue
        assert node["z"] == tabs[0]["id"], node["id"]
        assert isinstance(node["wires"], list), node["id"]
        for port in node["wires"]:
            assert all(target in ids for target in port), node["id"]
    assert not any(node["type"].startswith("ui_") for node in nodes)
    inputs = [node for node in nodes if node["type"] == "mqtt in"]
    assert {node["datatype"] for node in inputs} == {"auto-detect"}
    assert all(node["broker"] == brokers[0]["id"] for node in inputs)
    assert set(flow_topic_filters()) == {
        "twc3/+/derived/power_w",
        "twc3/+/derived/status",
        "twc3/+/derived/energy_wh",
        "twc3/+/event",
    }


def run_function(func: str, msg: dict[str, Any], workdir: Path) -> Any:
    """Run one function node body in ``node`` with ``msg``; return what it returned."""
    script = workdir / "run.js"
    script.write_text(
        "function body(msg, node, context, flow, global, env, RED) {\n"
        + func
        + "\n}\n"
        + f"const result = body({json.dumps(msg)}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}});\n"
        + "process.stdout.write(JSON.stringify(result === undefined ? null : result));\n",
        encoding="utf-8",
    )
    check = subprocess.run(
        ["node", "--check", str(script)], check=False, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    done = subprocess.run(
        ["node", str(script)], check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.system
def test_node_red_functions_parse_and_shape_messages(tmp_path: Path) -> None:
    """Each function body parses in node and turns a bridge message into the documented output."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    nodes = {node["id"]: node for node in flow_nodes()}
    by_topic: dict[str, str] = {}
    for node in nodes.values():
        if node["type"] == "mqtt in":
            (target,) = node["wires"][0]
            assert nodes[target]["type"] == "function"
            by_topic[node["topic"]] = nodes[target]["func"]
    assert len(by_topic) == 4

    power = run_function(
        by_topic["twc3/+/derived/power_w"],
        {"topic": "twc3/garage/derived/power_w", "payload": 11040.5},
        tmp_path,
    )
    assert (power["topic"], power["payload"]) == ("garage", 11040.5)
    status = run_function(
        by_topic["twc3/+/derived/status"],
        {"topic": "twc3/garage/derived/status", "payload": "charging"},
        tmp_path,
    )
    assert (status["topic"], status["payload"], status["status"]) == ("garage", 2, "charging")
    energy = run_function(
        by_topic["twc3/+/derived/energy_wh"],
        {"topic": "twc3/garage/derived/energy_wh", "payload": 123456},
        tmp_path,
    )
    assert (energy["topic"], energy["payload"]) == ("garage", 123.456)
    event = run_function(
        by_topic["twc3/+/event"],
        {
            "topic": "twc3/garage/event",
            "payload": {"type": "charging_started", "timestamp": "2026-01-01T00:00:00Z"},
        },
        tmp_path,
    )
    assert event["payload"] == "garage: charging started"
    assert event["title"] == "Wall Connector garage"
    ended = run_function(
        by_topic["twc3/+/event"],
        {
            "topic": "twc3/garage/event",
            "payload": json.dumps(
                {"type": "session_ended", "unit": "garage", "energy_wh": 7530, "duration_s": 3600}
            ),
        },
        tmp_path,
    )
    assert ended["payload"] == "garage: session ended, 7.53 kWh in 60 min"
    junk = run_function(
        by_topic["twc3/+/derived/power_w"],
        {"topic": "twc3/garage/derived/power_w", "payload": "n/a"},
        tmp_path,
    )
    assert junk is None


def test_openhab_files_are_consistent() -> None:
    """Thing availability and switch payloads match the bridge; every item links a real channel."""
    text = THINGS.read_text(encoding="utf-8")
    assert 'availabilityTopic="twc3/garage/availability"' in text
    assert 'payloadAvailable="online"' in text
    assert 'payloadNotAvailable="offline"' in text
    assert f"Thing {THING_UID} " in text
    channels = openhab_channels()
    assert len(channels) >= 9
    for kind, channel_id, params in channels:
        assert 'stateTopic="' in params, channel_id
        if kind == "switch":
            assert 'on="true"' in params, channel_id
            assert 'off="false"' in params, channel_id
    channel_ids = {channel_id for _, channel_id, _ in channels}
    links = re.findall(
        r'^(\S+)\s+\w+.*channel="([^"]+)"', ITEMS.read_text(encoding="utf-8"), flags=re.MULTILINE
    )
    assert len(links) == len(channels)
    for _, link in links:
        assert link.startswith(f"{THING_UID}:"), link
        assert link.removeprefix(f"{THING_UID}:") in channel_ids, link
    item_types = {item_type for item_type, _ in links}
    assert {
        "Number:Power",
        "Number:Energy",
        "Number:ElectricCurrent",
        "Number:ElectricPotential",
        "Number:Temperature",
        "Number:Frequency",
        "Number:Time",
        "Switch",
        "String",
        "DateTime",
    } <= item_types


# The openHAB dimension of each unit the entity table uses on the example's channels.
DIMENSIONS = {
    "W": "Power",
    "A": "ElectricCurrent",
    "V": "ElectricPotential",
    "Wh": "Energy",
    "kWh": "Energy",
    "°C": "Temperature",
    "Hz": "Frequency",
    "s": "Time",
}


def openhab_item_types() -> dict[str, str]:
    """``{channel id: item type}`` of the example items."""
    links = re.findall(
        r'^(\S+)\s+\w+.*channel="([^"]+)"', ITEMS.read_text(encoding="utf-8"), flags=re.MULTILINE
    )
    return {link.removeprefix(f"{THING_UID}:"): item_type for item_type, link in links}


def entities_by_topic() -> dict[str, Entity]:
    """Every topic of the entity table for the example's connector, spelt by TopicLayout."""
    layout = TopicLayout("twc3")
    topics = {layout.field("garage", e.endpoint, e.reads): e for e in ENTITIES}
    bridge_state, *_search_counters = BRIDGE_ENTITIES
    topics[layout.bridge_state] = bridge_state
    return topics


def test_openhab_channels_are_typed_like_the_entity_table() -> None:
    """Each channel and its item have the type the entity of its topic says.

    Numbers carry the entity's unit and a Number:<dimension> item, timestamps are datetime
    channels with DateTime items, enums are string channels allowing exactly the entity's options,
    binary sensors are switches with the entity's payloads. Every topic is one TopicLayout spells.
    """
    layout = TopicLayout("twc3")
    assert set(re.findall(r'availabilityTopic="([^"]+)"', THINGS.read_text(encoding="utf-8"))) == {
        layout.availability("garage")
    }
    by_topic = entities_by_topic()
    items = openhab_item_types()
    for kind, channel_id, raw in openhab_channels():
        params = dict(re.findall(r'(\w+)="([^"]*)"', raw))
        topic = params["stateTopic"]
        assert topic in by_topic, f"{channel_id}: {topic} is no topic of the entity table"
        entity, item = by_topic[topic], items[channel_id]
        if kind == "number":
            assert entity.unit is not None, channel_id
            assert params.get("unit") == entity.unit, channel_id
            assert item == f"Number:{DIMENSIONS[entity.unit]}", channel_id
        elif kind == "datetime":
            assert entity.device_class == "timestamp", channel_id
            assert item == "DateTime", channel_id
        elif kind == "switch":
            assert entity.component == "binary_sensor", channel_id
            assert (params["on"], params["off"]) == (entity.payload_on, entity.payload_off)
            assert item == "Switch", channel_id
        else:
            assert kind == "string", channel_id
            allowed = params["allowedStates"].split(",")
            if entity.scope == "bridge":  # the bridge state, shown as its two words
                assert allowed == [entity.payload_on, entity.payload_off], channel_id
            else:
                assert entity.device_class == "enum", channel_id
                assert sorted(allowed) == sorted(entity.options), channel_id
            assert item == "String", channel_id


def test_every_timestamp_and_enum_of_the_example_is_typed() -> None:
    """No timestamp or enum topic of the table sits on a plain number or text channel."""
    by_topic = entities_by_topic()
    for kind, channel_id, raw in openhab_channels():
        entity = by_topic[dict(re.findall(r'(\w+)="([^"]*)"', raw))["stateTopic"]]
        expected = {"timestamp": "datetime", "enum": "string"}.get(entity.device_class or "")
        assert expected is None or kind == expected, channel_id


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """The real ``twc3-bridge run`` process, logging to ``log``."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.broker
async def test_example_topics_are_published_by_the_bridge(broker: Broker, tmp_path: Path) -> None:
    """Every flow filter matches a real published topic; every openHAB topic is really retained."""
    unit = SimulatedUnit(
        "SIMEXA000001",
        wiring="eu_three_phase",
        seed=11,
        scenario=Scenario(start_state="charging", auto_cycle=False),
    )
    wanted = set(openhab_topics())
    assert wanted, "no topics found in the openHAB example"
    config, log = tmp_path / "bridge.toml", tmp_path / "bridge.log"
    async with UnitServer(unit) as server:
        config.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'client_id = "examples-{os.getpid()}"\n'
            "\n[polling]\nvitals_s = 1\nvitals_idle_s = 1\nlifetime_s = 2\nwifi_status_s = 2\n"
            f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nid = "garage"\n'
        )
        process = start_bridge(config, log)
        try:
            async with asyncio.timeout(90):
                # Wait for a charging unit only: a missing openHAB topic then fails below,
                # quickly and with a clear message, not as a timeout here.
                await wait_for_retained(
                    broker.port,
                    lambda found: float(found.get("twc3/garage/derived/power_w", "0")) > 1000,
                    pattern="twc3/#",
                    limit_s=60,
                )
                live: set[str] = set()
                async with subscriber(broker.port, "twc3/#") as client:
                    await asyncio.sleep(0.5)  # let the retained flood arrive first
                    unit.stop_charging()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(15):
                            async for message in client.messages:
                                live.add(str(message.topic))
                                if str(message.topic) == "twc3/garage/event":
                                    break
                retained = await collect_retained(broker.port, "twc3/#")
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(process.wait, 15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)

    bridge_log = log.read_text(errors="replace")
    assert "twc3/garage/event" in live, f"no event after stop_charging; log: {bridge_log[-2000:]}"
    published = set(retained) | live
    for topic_filter in flow_topic_filters():
        assert any(topic_matches(topic_filter, topic) for topic in published), (
            f"Node-RED filter {topic_filter!r} matches nothing the bridge published: "
            f"{sorted(published)}"
        )
    missing = sorted(wanted - set(retained))
    assert not missing, f"openHAB topics not retained by the bridge: {missing}"
    assert retained["twc3/garage/availability"] == "online"
    assert retained["twc3/garage/derived/plugged_in"] in {"true", "false"}
    assert retained["twc3/garage/derived/charging"] in {"true", "false"}
