"""Power-sharing pieces without sockets: roles, group totals, group configuration."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from bridge.adapters.twc import TwcClient
from bridge.core.config import BridgeConfig, ConfigError, load_config
from bridge.core.derived import joined_leader_ap, role
from bridge.core.groups import MemberState, group_values
from bridge.runtime.app import Bridge
from bridge.runtime.poller import ConnectorPoller


@pytest.mark.parametrize(
    ("ssid", "ip", "expected"),
    [
        ("TeslaWallConnector_ABC123", "10.0.0.5", True),
        ("HomeWiFi", "192.168.92.14", True),
        ("HomeWiFi", "192.168.1.14", False),
        (None, None, False),
        ("HomeWiFi", "not an address", False),
    ],
)
def test_joined_leader_ap(ssid: str | None, ip: str | None, expected: bool) -> None:
    """The leader's SSID prefix or its 192.168.92.0/24 network mark a follower."""
    assert joined_leader_ap(ssid, ip) is expected


def test_wifi_makes_a_follower_even_without_config() -> None:
    """A standalone unit on the leader's access point is a follower; otherwise as configured."""
    assert role("standalone", "TeslaWallConnector_X", None) == "follower"
    assert role("leader", "HomeWiFi", "192.168.1.2") == "leader"
    assert role("standalone", "HomeWiFi", "192.168.1.2") == "standalone"


def test_group_totals_count_only_online_members() -> None:
    """Offline and never-seen members add no power and are not counted online."""
    values = group_values(
        "garage",
        {
            "garage": MemberState(online=True, power_w=7000.0, current_a=30.0, charging=True),
            "carport2": MemberState(online=False, power_w=5000.0, current_a=20.0, charging=True),
            "carport3": None,
        },
    )
    assert values == {
        "power_w": 7000.0,
        "current_a": 30.0,
        "members_online": 1,
        "members_configured": 3,
        "members_charging": 1,
        "leader": "garage",
    }


def _write(tmp_path: Path, groups: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        '[[connectors]]\nhost = "192.0.2.1"\nid = "garage"\n'
        '[[connectors]]\nhost = "192.0.2.2"\nid = "carport"\nsource_address = "192.168.92.50"\n'
        + groups
    )
    return path


def test_group_config_loads(tmp_path: Path) -> None:
    """A group names its leader among its members; source_address is kept."""
    config = load_config(
        _write(
            tmp_path,
            '[[groups]]\nname = "Car Port"\nleader = "garage"\nmembers = ["garage", "carport"]\n',
        )
    )
    assert config.groups[0].group_id == "car_port"
    assert config.group_of("carport") is config.groups[0]
    assert config.connectors[1].source_address == "192.168.92.50"


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        (
            '[[groups]]\nname = "A"\nleader = "nobody"\nmembers = ["garage"]\n',
            "must be one of the members",
        ),
        (
            '[[groups]]\nname = "A"\nleader = "garage"\nmembers = ["garage", "ghost"]\n',
            "'ghost' is not",
        ),
        (
            (
                '[[groups]]\nname = "A"\nleader = "garage"\nmembers = ["garage"]\n'
                '[[groups]]\nname = "B"\nleader = "garage"\nmembers = ["garage"]\n'
            ),
            "already in group",
        ),
    ],
)
def test_group_config_errors(tmp_path: Path, groups: str, fragment: str) -> None:
    """Unknown members, a leader outside the group and double membership are config errors."""
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, groups))
    assert any(fragment in problem for problem in caught.value.problems), caught.value.problems


def test_source_address_must_be_an_ip(tmp_path: Path) -> None:
    """A source_address that is no IP address is a config error naming the key."""
    path = tmp_path / "bridge.toml"
    path.write_text('[[connectors]]\nhost = "192.0.2.1"\nsource_address = "eth1"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith("connectors[0].source_address:")


async def test_source_address_binds_the_unit_client() -> None:
    """A connector's source_address is the local address its requests come from."""
    peers: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    client = TwcClient(f"http://127.0.0.2:{port}", source_address="127.0.0.3")
    try:
        async with asyncio.timeout(10):
            assert await client.fetch("version") == b"{}"
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert peers == ["127.0.0.3"]


def test_unit_answering_at_a_new_address_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same serial at another host is one log line, and the new host is remembered."""

    def run_with(host: str) -> bool:
        """One bridge run at ``host`` that meets the unit; its state file is written at the end."""
        config = BridgeConfig.model_validate(
            {"bridge": {"data_dir": str(tmp_path)}, "connectors": [{"host": host, "id": "garage"}]}
        )
        bridge = Bridge(config)
        accepted = bridge._serial_guard(config.connectors[0])(poller, "SER123")
        assert bridge.state_file.flush()
        return accepted

    caplog.set_level(logging.INFO)
    poller = cast(
        "ConnectorPoller",
        SimpleNamespace(label="garage", address=None, status=SimpleNamespace(serial=None)),
    )
    assert run_with("192.0.2.10")
    assert run_with("192.0.2.10")
    assert run_with("192.0.2.99")
    moved = [r.getMessage() for r in caplog.records if "now answers at" in r.getMessage()]
    assert moved == [
        "Wall Connector SER123 now answers at 192.0.2.99 (was 192.0.2.10); same device and topics"
    ]
