"""Twin detection: the pure decision, and how the bridge wires its state and owner topics."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge.core.config import BridgeConfig
from bridge.core.twins import TwinWatch, is_live_twin, new_run_token
from bridge.runtime.app import Bridge

OWN = "own0000000000000"
OTHER = "other00000000000"


def test_run_tokens_differ_between_runs() -> None:
    assert new_run_token() != new_run_token()


@pytest.mark.parametrize(
    ("seen", "state", "twin"),
    [
        (OTHER, "online", True),  # another process holds the state topic right now
        (OTHER, "offline", False),  # a run that stopped, or crashed and its Will fired: stale
        (OTHER, None, False),  # no state at all: nobody is running
        (OTHER, "lost", False),
        (OWN, "online", False),  # our own token read back
        ("", "online", False),  # a deleted owner topic is nobody's
    ],
)
def test_is_live_twin(seen: str, state: str | None, twin: bool) -> None:
    assert is_live_twin(OWN, seen, state) is twin


def test_a_stale_token_of_a_crashed_run_is_no_twin() -> None:
    """At subscribe time: the retained state (the crashed run's Will), then its retained token."""
    watch = TwinWatch(OWN)
    watch.state_seen("offline")
    assert not watch.owner_seen(OTHER)
    # Our own online and token come back; the stale token is not seen again.
    watch.state_seen("online")
    assert not watch.owner_seen(OWN)
    assert watch.reported == set()


def test_a_newcomer_reports_the_running_twin_once() -> None:
    watch = TwinWatch(OWN)
    watch.state_seen("online")  # retained: the twin's
    assert watch.owner_seen(OTHER)
    watch.state_seen("online")
    assert not watch.owner_seen(OWN)
    # The twin republishes its token after a reconnect or a refresh: reported only once.
    assert not watch.owner_seen(OTHER)


def test_the_running_process_reports_a_newcomer_that_announces_itself() -> None:
    watch = TwinWatch(OWN)
    watch.state_seen("online")
    assert not watch.owner_seen(OWN)
    watch.state_seen("online")  # the newcomer's online, live
    assert watch.owner_seen(OTHER)
    assert watch.reported == {OTHER}


def _bridge(tmp_path: Path, **bridge_section: str) -> Bridge:
    config = BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(tmp_path), **bridge_section},
            "connectors": [{"host": "192.0.2.1", "id": "garage"}],
        }
    )
    return Bridge(config)


def test_an_instance_wires_its_own_state_topic_will_owner_and_subscriptions(
    tmp_path: Path,
) -> None:
    bridge = _bridge(tmp_path, instance="east")
    assert bridge.link.state_topic == "twc3/bridge/east/state"
    assert bridge.link.config.client_id == "twc3-bridge-east"
    assert bridge.link.subscriptions[:2] == ("twc3/bridge/east/state", "twc3/bridge/east/owner")
    assert bridge.site.bridge_state_topic == "twc3/bridge/east/state"
    owner = [m for m in bridge.outbox.pending() if m.topic == "twc3/bridge/east/owner"]
    assert [m.payload for m in owner] == [bridge.twins.own_token]
    assert all(m.retain for m in owner)


def test_without_an_instance_the_bridge_keeps_the_shared_state_topic(tmp_path: Path) -> None:
    bridge = _bridge(tmp_path)
    assert bridge.link.state_topic == "twc3/bridge/state"
    assert bridge.link.subscriptions[:2] == ("twc3/bridge/state", "twc3/bridge/owner")


async def test_the_bridge_logs_a_twin_once_in_one_escaped_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = _bridge(tmp_path, instance="east")
    caplog.set_level(logging.INFO, logger="bridge.runtime.app")
    await bridge._on_message("twc3/bridge/east/state", b"offline")
    await bridge._on_message("twc3/bridge/east/owner", b"stale-token")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await bridge._on_message("twc3/bridge/east/state", b"online")
    for _ in range(2):
        await bridge._on_message("twc3/bridge/east/owner", b"twin\x1b[31m")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "twc3/bridge/east/state" in errors[0]
    assert "[bridge] instance" in errors[0]
    assert "\x1b" not in errors[0]
    assert "\n" not in errors[0]
