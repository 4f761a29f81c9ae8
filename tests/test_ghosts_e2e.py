"""No ghosts: a renamed connector leaves nothing under its old id (the real bridge and broker)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from bridge.core.config import MqttConfig
from bridge.presentation.topics import TopicLayout
from bridge.runtime.ghosts import Ghost, clear_ghosts
from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, wait_for_retained
from tests.test_fault_suite import ROOT, assert_clean_log, polling, run_bridge, wait_until

HOMIE = "homie/twc3-bridge"
OLD, NEW = "alpha", "beta"


@pytest.fixture
async def server() -> AsyncIterator[UnitServer]:
    unit = SimulatedUnit("SIMGHOST0001", scenario=Scenario(auto_cycle=False))
    async with UnitServer(unit) as running:
        yield running


def body(data_dir: Path, server: UnitServer, unit_id: str, *, clean: bool = True) -> str:
    return (
        '\n[homie]\nenabled = true\nbase_topic = "homie"\ndevice_id = "twc3-bridge"\n'
        f'\n[bridge]\ndata_dir = "{data_dir}"\nclean_removed = {str(clean).lower()}\n'
        + polling()
        + f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nid = "{unit_id}"\n'
    )


def published(found: dict[str, str], unit_id: str) -> bool:
    """The unit is online, its Homie node listed and its discovery configs announced."""
    return (
        found.get(f"twc3/{unit_id}/availability") == "online"
        and unit_id in found.get(f"{HOMIE}/$nodes", "").split(",")
        and f"{HOMIE}/{unit_id}/$properties" in found
        and any(f'"twc3/{unit_id}/' in payload for payload in _configs(found).values())
    )


def _configs(found: dict[str, str]) -> dict[str, str]:
    return {
        topic: payload for topic, payload in found.items() if topic.startswith("homeassistant/")
    }


def left_of(found: dict[str, str], unit_id: str) -> list[str]:
    """Every retained trace of ``unit_id``: its topics, its Homie node, configs pointing at it."""
    return sorted(
        [t for t in found if t.startswith((f"twc3/{unit_id}/", f"{HOMIE}/{unit_id}/"))]
        + [t for t, payload in _configs(found).items() if f'"twc3/{unit_id}/' in payload]
        + ([f"{HOMIE}/$nodes"] if unit_id in found.get(f"{HOMIE}/$nodes", "").split(",") else [])
    )


async def run_until_published(
    run_dir: Path, broker: Broker, config_body: str, unit_id: str, *, logged: str = ""
) -> tuple[dict[str, str], Path, str]:
    """Run the bridge until ``unit_id`` is published and ``logged`` logged; stop it cleanly.

    Returns what was retained then, the config file and the log.
    """
    await asyncio.to_thread(run_dir.mkdir)
    async with run_bridge(run_dir, broker.port, config_body) as bridge:
        found = await wait_for_retained(broker.port, lambda f: published(f, unit_id), limit_s=60)
        await wait_until(lambda: logged in bridge.log_text(), 60, repr(logged))
        bridge.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(bridge.process.wait, 20)
        assert_clean_log(bridge)
        return found, run_dir / "bridge.toml", bridge.log_text()


def forget(config: Path, *ids: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "forget", *ids, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("TWC3_")},
        check=False,
    )


async def test_a_renamed_connector_leaves_no_ghost(
    broker: Broker, server: UnitServer, tmp_path: Path
) -> None:
    """Id alpha renamed to beta: after the next start nothing of alpha is retained."""
    data = tmp_path / "data"
    await run_until_published(tmp_path / "run1", broker, body(data, server, OLD), OLD)
    found, _, log = await run_until_published(
        tmp_path / "run2", broker, body(data, server, NEW), NEW, logged="removed unit alpha"
    )
    found = await wait_for_retained(
        broker.port, lambda f: published(f, NEW) and not left_of(f, OLD), limit_s=30
    )
    assert found[f"{HOMIE}/$nodes"] == NEW
    assert "removed unit alpha: cleared" in log
    assert "Homie node alpha" in log
    assert "alpha" not in (data / "state.json").read_text()


async def test_clean_removed_false_keeps_them_and_forget_clears_them(
    broker: Broker, server: UnitServer, tmp_path: Path
) -> None:
    """Kept with one line naming forget; forget refuses while running, clears once stopped."""
    data = tmp_path / "data"
    await run_until_published(tmp_path / "run1", broker, body(data, server, OLD), OLD)
    (tmp_path / "run2").mkdir()
    async with run_bridge(
        tmp_path / "run2", broker.port, body(data, server, NEW, clean=False)
    ) as bridge:
        found = await wait_for_retained(broker.port, lambda f: published(f, NEW), limit_s=60)
        await wait_until(lambda: "forget alpha" in bridge.log_text(), 20, "the kept line")
        assert found[f"twc3/{OLD}/availability"] == "online"
        assert f"{HOMIE}/{OLD}/$name" in found
        running = await asyncio.to_thread(forget, tmp_path / "run2" / "bridge.toml", OLD)
        assert running.returncode == 1
        assert "seems to be running" in running.stderr
        assert len(running.stderr.strip().splitlines()) == 1
        bridge.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(bridge.process.wait, 20)
        assert_clean_log(bridge)
    still = await asyncio.to_thread(forget, tmp_path / "run2" / "bridge.toml", NEW)
    assert still.returncode == 2
    assert "still configured" in still.stderr
    done = await asyncio.to_thread(forget, tmp_path / "run2" / "bridge.toml", OLD)
    assert done.returncode == 0, done.stderr
    assert "removed unit alpha: cleared" in done.stderr
    found = await wait_for_retained(broker.port, lambda f: not left_of(f, OLD), limit_s=20)
    assert found[f"{HOMIE}/$nodes"] == NEW
    assert f"twc3/{NEW}/availability" in found  # the configured unit's topics stay
    assert "alpha" not in (data / "state.json").read_text()


def serial_named_body(data_dir: Path, host: str) -> str:
    """A connector with no id: its unit is published under its serial number."""
    return (
        '\n[homie]\nenabled = true\nbase_topic = "homie"\ndevice_id = "twc3-bridge"\n'
        f'\n[bridge]\ndata_dir = "{data_dir}"\n'
        + polling()
        + f'\n[[connectors]]\nhost = "{host}"\n'
    )


async def test_a_serial_named_unit_whose_host_is_written_anew_keeps_its_topics(
    broker: Broker, server: UnitServer, tmp_path: Path
) -> None:
    """Its id looks removed until the unit tells its serial again: it is not cleared then."""
    unit_id = "simghost0001"
    data = tmp_path / "data"
    await run_until_published(
        tmp_path / "run1", broker, serial_named_body(data, f"127.0.0.1:{server.port}"), unit_id
    )
    await asyncio.to_thread((tmp_path / "run2").mkdir)
    body2 = serial_named_body(data, f"localhost:{server.port}")
    async with run_bridge(tmp_path / "run2", broker.port, body2) as bridge:
        await wait_until(
            lambda: f"unit id {unit_id} is published again" in bridge.log_text(),
            60,
            "the id taken back, not cleared",
        )
        found = await wait_for_retained(broker.port, lambda f: published(f, unit_id), limit_s=30)
        assert found[f"twc3/{unit_id}/poller/publisher"] == "twc3/bridge/state"
        assert "removed unit" not in bridge.log_text()
        assert_clean_log(bridge)


async def test_a_unit_another_running_process_publishes_is_left_alone(broker: Broker) -> None:
    """A unit moved to another instance's configuration is that instance's while it runs."""
    config = MqttConfig(host="127.0.0.1", port=broker.port)
    layout = TopicLayout("twc3")
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="other-bridge") as other:
        await other.publish("twc3/bridge/east/state", "online", qos=1, retain=True)
        for unit_id in ("moved", "gone"):
            await other.publish(f"twc3/{unit_id}/availability", "online", qos=1, retain=True)
        await other.publish("twc3/moved/poller/publisher", "twc3/bridge/east/state", retain=True)
        await other.publish("twc3/gone/poller/publisher", "twc3/bridge/state", qos=1, retain=True)
    settled = await clear_ghosts(
        config,
        layout,
        [Ghost("moved"), Ghost("gone")],
        homie_root=None,
        rewrite_nodes=False,
        identifier="ghost-test",
    )
    assert sorted(done.unit_id for done in settled) == ["gone", "moved"]
    left = await collect_retained(broker.port, "twc3/#")
    assert left.get("twc3/moved/availability") == "online"
    assert "twc3/gone/availability" not in left


async def test_forget_refuses_while_a_named_instance_runs(broker: Broker, tmp_path: Path) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="running-east") as client:
        await client.publish("twc3/bridge/east/state", "online", qos=1, retain=True)
        await client.publish("twc3/old/availability", "online", qos=1, retain=True)
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[bridge]\ndata_dir = "{tmp_path}"\ninstance = "east"\n'
        '[[connectors]]\nhost = "127.0.0.1:8780"\nid = "beta"\n'
    )
    result = await asyncio.to_thread(forget, config, "old")
    assert result.returncode == 1, result.stderr
    assert "twc3/bridge/east/state" in result.stderr
    left = await collect_retained(broker.port, "twc3/#")
    assert left.get("twc3/old/availability") == "online"
