"""Several bridge processes on one broker: each instance has its own state topic, twins are told."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import pytest

from bridge.sim.simulator import SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, wait_for_retained
from tests.test_fault_suite import (
    assert_clean_log,
    connector_block,
    live_capture,
    polling,
    run_bridge,
    wait_until,
)

pytestmark = pytest.mark.broker

TWIN_LINE = "another bridge process is running with this one's state topic"


def instance_body(tmp_path: Path, instance: str, unit_id: str, server: UnitServer) -> str:
    """``[bridge]`` with its own data dir and ``instance``, fast polling, one connector."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return (
        f'\n[bridge]\ndata_dir = "{data_dir}"\ninstance = "{instance}"\n'
        + polling()
        + connector_block(unit_id, server)
    )


def in_dir(directory: Path) -> Path:
    """``directory``, created: each process gets its own config and log."""
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def both_up(found: dict[str, str]) -> bool:
    return all(
        found.get(topic) == "online"
        for topic in (
            "twc3/bridge/east/state",
            "twc3/bridge/west/state",
            "twc3/alpha/availability",
            "twc3/beta/availability",
        )
    )


def availability_topics(payload: str) -> set[str]:
    return {entry["topic"] for entry in json.loads(payload).get("availability", [])}


def both_announced(found: dict[str, str]) -> bool:
    """Both units' entities and both bridge devices are announced."""
    topics = set().union(*(availability_topics(payload) for payload in found.values()))
    return {
        "twc3/alpha/availability",
        "twc3/beta/availability",
        "twc3/bridge/east/state",
        "twc3/bridge/west/state",
    } <= topics and len([t for t in found if "/twc3_bridge_twc3_" in t]) >= 2


async def test_stopping_one_instance_leaves_the_others_units_available(
    broker: Broker, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        alpha = await stack.enter_async_context(UnitServer(SimulatedUnit("SIMIN0000001", seed=1)))
        beta = await stack.enter_async_context(UnitServer(SimulatedUnit("SIMIN0000002", seed=2)))
        east = await stack.enter_async_context(
            run_bridge(
                tmp_path / "east",
                broker.port,
                instance_body(tmp_path / "east", "east", "alpha", alpha),
            )
        )
        west = await stack.enter_async_context(
            run_bridge(
                tmp_path / "west",
                broker.port,
                instance_body(tmp_path / "west", "west", "beta", beta),
            )
        )
        async with asyncio.timeout(90):
            await wait_for_retained(broker.port, both_up, pattern="twc3/#", limit_s=60)
            configs = await wait_for_retained(
                broker.port, both_announced, pattern="homeassistant/#", limit_s=60
            )
            async with live_capture(broker.port) as capture:
                east.process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(east.process.wait, 20) == 0, east.log_text()
                await wait_until(
                    lambda: capture.payloads("twc3/bridge/east/state")[-1:] == [b"offline"],
                    20,
                    "east's state offline",
                )
                after = await collect_retained(broker.port, "twc3/#")
        assert west.alive(), west.log_text()[-3000:]
    # The stopped instance said offline on its own topic; the other's stay untouched.
    assert after["twc3/bridge/east/state"] == "offline"
    assert after["twc3/bridge/west/state"] == "online"
    assert after["twc3/beta/availability"] == "online"
    assert b"offline" not in capture.payloads("twc3/bridge/west/state")
    assert b"offline" not in capture.payloads("twc3/beta/availability")
    assert "twc3/bridge/state" not in after
    # Each unit's discovery configs depend on its own instance's state topic only.
    beta_lists = [
        topics
        for topics in map(availability_topics, configs.values())
        if "twc3/beta/availability" in topics
    ]
    assert beta_lists
    assert all("twc3/bridge/west/state" in topics for topics in beta_lists)
    assert not any("twc3/bridge/east/state" in topics for topics in beta_lists)
    # Two bridge devices, one per instance, each with its own connectivity entity.
    bridge_states = [
        json.loads(payload).get("state_topic")
        for topic, payload in configs.items()
        if topic.startswith("homeassistant/binary_sensor/twc3_bridge_twc3_")
    ]
    assert sorted(bridge_states) == ["twc3/bridge/east/state", "twc3/bridge/west/state"]
    for bridge in (east, west):
        assert TWIN_LINE not in bridge.log_text()
        assert_clean_log(bridge)


async def test_two_processes_with_one_instance_name_are_reported(
    broker: Broker, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        alpha = await stack.enter_async_context(UnitServer(SimulatedUnit("SIMIN0000003", seed=3)))
        beta = await stack.enter_async_context(UnitServer(SimulatedUnit("SIMIN0000004", seed=4)))
        first = await stack.enter_async_context(
            run_bridge(
                tmp_path / "first",
                broker.port,
                instance_body(tmp_path / "first", "same", "alpha", alpha),
            )
        )
        await wait_for_retained(
            broker.port,
            lambda found: (
                found.get("twc3/bridge/same/state") == "online"
                and "twc3/bridge/same/owner" in found
            ),
            pattern="twc3/bridge/#",
            limit_s=60,
        )
        # run_bridge gives each process its own client id: only the shared state topic is wrong.
        second = await stack.enter_async_context(
            run_bridge(
                tmp_path / "second",
                broker.port,
                instance_body(tmp_path / "second", "same", "beta", beta),
            )
        )
        await wait_until(lambda: TWIN_LINE in second.log_text(), 60, "the newcomer's report")
        await wait_until(lambda: TWIN_LINE in first.log_text(), 30, "the running one's report")
        assert first.alive(), first.log_text()[-3000:]
        assert second.alive(), second.log_text()[-3000:]
    for bridge in (first, second):
        lines = [line for line in bridge.log_text().splitlines() if TWIN_LINE in line]
        assert len(lines) == 1, lines
        assert "ERROR" in lines[0]
        assert "twc3/bridge/same/state" in lines[0]
        assert_clean_log(bridge)


async def test_a_restart_after_a_crash_is_no_twin(broker: Broker, tmp_path: Path) -> None:
    """The crashed run's token stays retained, but its Will says offline: the token is stale."""
    async with UnitServer(SimulatedUnit("SIMIN0000005", seed=5)) as server:
        body = instance_body(tmp_path, "east", "alpha", server)
        async with run_bridge(in_dir(tmp_path / "crashed"), broker.port, body) as crashed:
            found = await wait_for_retained(
                broker.port,
                lambda found: (
                    found.get("twc3/bridge/east/state") == "online"
                    and "twc3/bridge/east/owner" in found
                ),
                pattern="twc3/bridge/#",
                limit_s=60,
            )
            stale_token = found["twc3/bridge/east/owner"]
            crashed.process.kill()
            await asyncio.to_thread(crashed.process.wait, 10)
        await wait_for_retained(
            broker.port,
            lambda found: found.get("twc3/bridge/east/state") == "offline",
            pattern="twc3/bridge/#",
        )
        async with run_bridge(in_dir(tmp_path / "restarted"), broker.port, body) as restarted:
            # Its own token replaced the stale one, and its unit came online after that.
            await wait_for_retained(
                broker.port,
                lambda found: (
                    found.get("twc3/bridge/east/owner", stale_token) != stale_token
                    and found.get("twc3/bridge/east/state") == "online"
                    and found.get("twc3/alpha/availability") == "online"
                ),
                pattern="twc3/#",
                limit_s=60,
            )
            assert restarted.alive(), restarted.log_text()[-3000:]
            assert TWIN_LINE not in restarted.log_text()
            assert_clean_log(restarted)
