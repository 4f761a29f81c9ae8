"""Fault suite, MQTT side: a broker that refuses a message, duplicate client ids, stalls, URLs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.core.config import CONFIG_ENV, PASSWORD_ENV
from bridge.sim.simulator import SimulatedUnit, UnitServer
from tests.conftest import Broker, require_mosquitto
from tests.test_fault_suite import (
    ROOT,
    Bridge,
    connector_block,
    live_capture,
    polling,
    run_bridge,
    start_process,
    wait_until,
)

BIG_FIELD = "firmware_note"
BIG_VALUE_CHARS = 60_000  # the unit's body stays under the bridge's 64 KiB body limit


class BigFieldUnit(SimulatedUnit):
    """A unit whose vitals carry one ~60 kB string field."""

    def vitals(self) -> dict[str, Any]:
        """The normal vitals plus the long field."""
        body = dict(super().vitals())
        body[BIG_FIELD] = "n" * BIG_VALUE_CHARS
        return body


@pytest.fixture
def small_packet_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto that closes the connection of a client sending a packet over 16 KiB."""
    instance = Broker(require_mosquitto(), tmp_path, extra_config="max_packet_size 16384\n")
    instance.start()
    yield instance
    instance.stop()


def connected_lines(bridge: Bridge) -> list[str]:
    return [line for line in bridge.log_text().splitlines() if "MQTT: connected to" in line]


def refusal_warnings(bridge: Bridge) -> list[str]:
    return [
        line
        for line in bridge.log_text().splitlines()
        if "WARNING" in line and "MQTT: not publishing" in line
    ]


async def _refused_message_run(
    broker: Broker, tmp_path: Path, mqtt_lines: str, *, never_dropped: bool
) -> Bridge:
    """Run the bridge against a big-field unit and a normal one for ~20 s; return it stopped."""
    units = {"big": BigFieldUnit("SIMFSMQ00001", seed=81), "calm": SimulatedUnit("SIMFSMQ00002")}
    async with contextlib.AsyncExitStack() as stack:
        servers = {k: await stack.enter_async_context(UnitServer(u)) for k, u in units.items()}
        capture = await stack.enter_async_context(live_capture(broker.port))
        body = mqtt_lines + polling() + "".join(connector_block(k, s) for k, s in servers.items())
        bridge = await stack.enter_async_context(run_bridge(tmp_path, broker.port, body))
        async with asyncio.timeout(60):
            await wait_until(lambda: len(refusal_warnings(bridge)) >= 2, 30, "refusal warnings")
            settled = time.monotonic()
            seen = {
                topic: len(capture.payloads(topic))
                for topic in ("twc3/big/vitals/uptime_s", "twc3/calm/vitals/uptime_s")
            }
            connections_then = len(connected_lines(bridge))
            await asyncio.sleep(15)
        assert bridge.alive(), bridge.log_text()[-3000:]
        # Both units keep flowing, the big one's other fields too.
        for topic, before in seen.items():
            fresh = {p.decode() for p in capture.payloads(topic)[before:]}
            assert len(fresh) >= 5, (topic, fresh, bridge.log_text()[-3000:])
        # The link stayed up once the culprits were found: no reconnect for 15 s, no Will.
        assert len(connected_lines(bridge)) == connections_then, bridge.log_text()[-3000:]
        calm_window = [(name, p) for at, name, p in capture.messages if at >= settled]
        for topic in ("twc3/bridge/state", "twc3/big/availability", "twc3/calm/availability"):
            assert (topic, b"offline") not in calm_window, topic
            if never_dropped:  # not even the broker's Will of a dropped connection
                assert b"offline" not in capture.payloads(topic), topic
        # The big values never reached the broker; everything else of the unit did.
        assert all(len(p) < 16_384 for _, _, p in capture.messages)
        assert capture.payloads("twc3/big/vitals/uptime_s")
        assert time.monotonic() - settled >= 15
    bridge.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(bridge.process.wait, 15)
    return bridge


def _one_warning_per_big_topic(bridge: Bridge) -> None:
    warnings = refusal_warnings(bridge)
    topics = sorted(
        re.findall(r"not publishing (\S+) \((\d+) bytes\)", line)[0][0] for line in warnings
    )
    # The field's own topic and the vitals JSON body that carries it: one warning each.
    assert topics == ["twc3/big/vitals", f"twc3/big/vitals/{BIG_FIELD}"], warnings
    assert "Traceback" not in bridge.log_text()


@pytest.mark.broker
async def test_mqtt5_broker_limit_refuses_the_big_value_before_sending(
    small_packet_broker: Broker, tmp_path: Path
) -> None:
    """MQTT 5: the CONNACK's maximum packet size is learned; nothing too big is ever sent."""
    bridge = await _refused_message_run(small_packet_broker, tmp_path, "", never_dropped=True)
    lines = connected_lines(bridge)
    assert len(lines) == 1, lines  # never dropped
    assert "(MQTT 5, broker's maximum packet size 16384 bytes)" in lines[0], lines
    _one_warning_per_big_topic(bridge)
    assert all("maximum packet size (16384 bytes)" in line for line in refusal_warnings(bridge))


@pytest.mark.broker
async def test_mqtt311_broker_drops_twice_then_the_message_is_dropped(
    small_packet_broker: Broker, tmp_path: Path
) -> None:
    """MQTT 3.1.1 (no stated limit): each big topic costs two drops, then the link is calm."""
    bridge = await _refused_message_run(
        small_packet_broker, tmp_path, 'protocol = "3.1.1"\n', never_dropped=False
    )
    lines = connected_lines(bridge)
    # Two drops per big topic (suspect, then convicted when sent alone), then it stays up.
    assert len(lines) == 5, lines
    assert all("(MQTT 3.1.1)" in line for line in lines), lines
    _one_warning_per_big_topic(bridge)
    assert all(
        "closed the connection twice right after it" in line for line in refusal_warnings(bridge)
    )
    assert "same client_id" not in bridge.log_text()


def _write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.broker
async def test_two_bridges_with_one_client_id_back_off_and_say_so(
    broker: Broker, tmp_path: Path
) -> None:
    """Same client_id twice: each reconnect kicks the other; they back off and report it once."""
    client_id = f"twin-{os.getpid()}"
    bridges: list[Bridge] = []
    try:
        for name in ("one", "two"):
            folder = tmp_path / name
            folder.mkdir()
            config = _write_config(
                folder / "bridge.toml",
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "{client_id}"\n'
                "reconnect_max_s = 60\n"
                f'[bridge]\ndata_dir = "{folder / "data"}"\n'
                '[[connectors]]\nhost = "127.0.0.1:9"\nid = "nowhere"\n',
            )
            process = start_process(config, folder / "bridge.log")
            bridges.append(Bridge(process, folder / "bridge.log", time.monotonic()))
            await asyncio.sleep(0.5)
        await asyncio.sleep(30)
        for bridge in bridges:
            assert bridge.alive(), bridge.log_text()[-3000:]
    finally:
        for bridge in bridges:
            if bridge.alive():
                bridge.process.kill()
                bridge.process.wait(timeout=10)
    counts = [len(connected_lines(bridge)) for bridge in bridges]
    # Without backoff they kicked each other about once a second (~30 each in 30 s).
    assert sum(counts) <= 14, counts
    reports = [
        [line for line in bridge.log_text().splitlines() if "same client_id" in line]
        for bridge in bridges
    ]
    assert all(len(lines) == 1 for lines in reports), reports
    # mosquitto 2.0.11 closes the old connection without MQTT 5's "Session taken over"
    # DISCONNECT, so the report comes from three short connections in a row.
    for lines in reports:
        assert repr(client_id) in lines[0], lines


def _check_config(tmp_path: Path, mqtt_lines: str) -> subprocess.CompletedProcess[str]:
    config = _write_config(
        tmp_path / "bridge.toml", "[mqtt]\n" + mqtt_lines + '[[connectors]]\nhost = "127.0.0.1"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in {CONFIG_ENV, PASSWORD_ENV}}
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    ("mqtt_lines", "summary"),
    [
        ('host = "mqtt://h:1884"\n', "broker h:1884, "),
        ('host = "h:1884"\n', "broker h:1884, "),
        ('host = "mqtts://h"\n', "broker h:8883 (TLS), "),
        ('host = "mqtts://h:9000"\n', "broker h:9000 (TLS), "),
    ],
)
def test_check_config_accepts_broker_urls(tmp_path: Path, mqtt_lines: str, summary: str) -> None:
    result = _check_config(tmp_path, mqtt_lines)
    assert result.returncode == 0, result.stderr
    assert summary in result.stdout, result.stdout


@pytest.mark.parametrize(
    "mqtt_lines",
    [
        'host = "mqtt://h:1883/twc3"\n',
        'host = "http://h"\n',
        'host = "mqtt://h:1884"\nport = 1883\n',
        'host = "h:1884"\nport = 1885\n',
    ],
)
def test_check_config_refuses_other_urls_in_one_line(tmp_path: Path, mqtt_lines: str) -> None:
    result = _check_config(tmp_path, mqtt_lines)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    problems = result.stderr.splitlines()[1:]
    assert len(problems) == 1, result.stderr
    assert problems[0].strip().startswith("mqtt: host "), result.stderr


@pytest.mark.broker
async def test_no_stray_future_after_a_stalled_broker_and_sigterm(
    broker: Broker, tmp_path: Path
) -> None:
    """A broker that stalls (SIGSTOP) past two connect timeouts, wakes up, then SIGTERM.

    aiomqtt left timed-out attempts' sockets open: the woken broker answered them, and their
    "Unexpected disconnection" was logged as "Future exception was never retrieved".
    """
    unit = SimulatedUnit("SIMFSMQ00003", seed=83)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(UnitServer(unit))
        capture = await stack.enter_async_context(live_capture(broker.port))
        body = polling() + connector_block("solo", server)
        bridge = await stack.enter_async_context(run_bridge(tmp_path, broker.port, body))
        assert broker.process is not None
        async with asyncio.timeout(90):
            await wait_until(
                lambda: len(capture.payloads("twc3/solo/vitals/uptime_s")) >= 2, 20, "vitals"
            )
            broker.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(25)  # the barrier and the next attempt time out (10 s each)
            finally:
                broker.process.send_signal(signal.SIGCONT)
            await wait_until(lambda: len(connected_lines(bridge)) >= 2, 30, "reconnected")
            await asyncio.sleep(3)
            bridge.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(bridge.process.wait, 15)
    log = bridge.log_text()
    assert code == 0, log[-3000:]
    assert "never retrieved" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert len(connected_lines(bridge)) == 2, log[-3000:]
