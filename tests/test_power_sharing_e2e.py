"""A power-sharing group through the real bridge: roles, reachability, totals, no duplicates."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, free_port, wait_for_retained

pytestmark = pytest.mark.broker


def write_config(path: Path, broker: Broker, ports: dict[str, int], data_dir: Path) -> None:
    path.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "group-e2e"\n'
        f'\n[bridge]\ndata_dir = "{data_dir}"\n'
        "\n[polling]\nvitals_s = 1\nvitals_idle_s = 1\nlifetime_s = 20\nwifi_status_s = 2\n"
        "offline_after = 2\nbackoff_max_s = 2\nconnect_timeout_s = 1\nread_timeout_s = 2\n"
        f'\n[[connectors]]\nhost = "127.0.0.1:{ports["garage"]}"\nid = "garage"\n'
        f'\n[[connectors]]\nhost = "127.0.0.1:{ports["carport2"]}"\nid = "carport2"\n'
        f'\n[[connectors]]\nhost = "127.0.0.1:{ports["carport3"]}"\nid = "carport3"\n'
        # The leader again, under another host name: the same serial must not become two devices.
        f'\n[[connectors]]\nhost = "localhost:{ports["garage"]}"\nid = "garage_alias"\n'
        '\n[[groups]]\nname = "Carport"\nleader = "garage"\n'
        'members = ["garage", "carport2", "carport3"]\n'
    )


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the bridge process, its output going to ``log``."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


async def test_leader_and_followers(broker: Broker, tmp_path: Path) -> None:
    """Roles, reachability, a late follower, group totals and one device per serial."""
    charging = Scenario(start_state="charging", auto_cycle=False)
    leader = SimulatedUnit("SIMGRP000001", seed=1, scenario=charging)
    late = SimulatedUnit("SIMGRP000002", seed=2, scenario=Scenario(auto_cycle=False))
    follower = SimulatedUnit("SIMGRP000003", seed=3, scenario=charging)
    follower.wifi_ssid = "TeslaWallConnector_SIMGRP"  # joined to the leader's access point
    follower.ip_address = "192.168.92.11"
    late_port = free_port()
    config, log = tmp_path / "bridge.toml", tmp_path / "bridge.log"
    async with UnitServer(leader) as leader_server, UnitServer(follower) as follower_server:
        ports = {
            "garage": leader_server.port,
            "carport2": late_port,
            "carport3": follower_server.port,
        }
        write_config(config, broker, ports, tmp_path / "data")
        process = start_bridge(config, log)
        try:
            async with asyncio.timeout(120):
                down = await wait_for_retained(
                    broker.port,
                    lambda f: (
                        f.get("twc3/carport2/availability") == "offline"
                        and f.get("twc3/group/carport/members_online") == "2"
                        and f.get("twc3/carport3/derived/role") == "follower"
                    ),
                    pattern="twc3/#",
                )
                assert down["twc3/carport2/derived/reachability"] == "connection refused"
                assert "twc3/carport2/derived/last_seen" not in down
                assert down["twc3/garage/derived/role"] == "leader"
                assert down["twc3/garage/availability"] == "online"
                assert down["twc3/group/carport/members_configured"] == "3"
                assert down["twc3/group/carport/leader"] == "garage"
                total = float(down["twc3/group/carport/power_w"])
                members = float(down["twc3/garage/derived/power_w"]) + float(
                    down["twc3/carport3/derived/power_w"]
                )
                assert total == pytest.approx(members, rel=0.25)
                assert total > 1000

                # The unreachable member is retried with a capped backoff, not hammered.
                await asyncio.sleep(8)
                counted = await wait_for_retained(
                    broker.port,
                    lambda f: "twc3/carport2/poller/failed_requests" in f,
                    pattern="twc3/carport2/#",
                )
                attempts = int(counted["twc3/carport2/poller/failed_requests"])
                assert 3 <= attempts <= 12

                # It appears as soon as it answers, without a restart.
                async with UnitServer(late, port=late_port):
                    up = await wait_for_retained(
                        broker.port,
                        lambda f: (
                            f.get("twc3/carport2/availability") == "online"
                            and f.get("twc3/group/carport/members_online") == "3"
                            and "twc3/carport2/derived/role" in f
                        ),
                        pattern="twc3/#",
                    )
                    assert up["twc3/carport2/derived/reachability"] == "reachable"
                    assert up["twc3/carport2/derived/role"] == "follower"
                    configs = await wait_for_retained(
                        broker.port,
                        lambda f: any("twc3_simgrp000002" in topic for topic in f),
                        pattern="homeassistant/#",
                    )
        finally:
            process.kill()
            process.wait(10)

    text = log.read_text()
    assert text.count("are the same Wall Connector (serial SIMGRP000001)") == 1
    assert not any(topic.startswith("twc3/garage_alias/") for topic in up)
    assert "homeassistant/sensor/twc3_group_carport/power_w/config" in configs
    leader_nodes = {topic.split("/")[2] for topic in configs if "simgrp000001" in topic}
    assert leader_nodes == {"twc3_simgrp000001"}
    follower_config = json.loads(
        configs["homeassistant/sensor/twc3_simgrp000003/vitals_grid_v/config"]
    )
    assert follower_config["device"]["via_device"] == "twc3_simgrp000001"
