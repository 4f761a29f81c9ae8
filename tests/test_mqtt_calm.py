"""The MQTT link's pure rules: size limits, suspect messages, backoff reset, protocol choice."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import pytest

from bridge.adapters.mqtt import (
    STABLE_AFTER_S,
    ConnectionWatch,
    MessageGuard,
    MqttLink,
    ProtocolChoice,
    refused_the_protocol,
)
from bridge.adapters.mqtt_fastpath import BrokerSays, PublisherSetting
from bridge.core.config import MqttConfig
from bridge.core.outbox import Outbox
from tests.conftest import free_port

# --- sizes ---------------------------------------------------------------------------------------


def test_the_smaller_of_the_configured_and_the_broker_limit_applies() -> None:
    guard = MessageGuard(256 * 1024)
    assert guard.limit == 256 * 1024
    guard.broker_limit = 16_384
    assert guard.limit == 16_384
    assert guard.refusal("t", 16_384) is None
    reason = guard.refusal("t", 16_385)
    assert reason is not None
    assert "maximum packet size" in reason
    guard.broker_limit = 1 << 28
    assert guard.limit == 256 * 1024
    reason = guard.refusal("t", 256 * 1024 + 1)
    assert reason is not None
    assert "max_message_bytes" in reason


def test_a_refused_topic_is_warned_about_once() -> None:
    guard = MessageGuard(1024)
    assert guard.first_refusal("twc3/a/vitals")
    assert not guard.first_refusal("twc3/a/vitals")
    assert guard.first_refusal("twc3/b/vitals")


# --- suspects ------------------------------------------------------------------------------------


def test_the_largest_message_since_the_barrier_becomes_the_suspect() -> None:
    guard = MessageGuard(1 << 20)
    guard.handed("t/small", 100, now=10.0)
    guard.handed("t/big", 60_000, now=10.1)
    guard.handed("t/medium", 5_000, now=10.2)
    assert guard.dropped(now=10.3) is None  # the first drop only makes it a suspect
    assert guard.suspect == ("t/big", 60_000)
    assert guard.watched("t/big")
    assert guard.isolate_at([("t/a", 1), ("t/big", 60_000), ("t/c", 1)]) == 1


def test_a_second_drop_right_after_the_suspect_convicts_it() -> None:
    guard = MessageGuard(1 << 20)
    guard.handed("t/big", 60_000, now=10.0)
    assert guard.dropped(now=10.1) is None
    guard.handed("t/other", 2_000, now=12.0)
    guard.confirmed()  # what came before the suspect reached the broker
    guard.handed("t/big", 60_000, now=12.1)  # then the suspect alone
    assert guard.dropped(now=12.2) == ("t/big", 60_000)
    assert guard.suspect is None
    # The broker's limit lies between 2000 (confirmed) and 60000 (convicted).
    assert guard.limit == 59_999
    assert guard.refusal("t/big", 60_000) is not None
    assert guard.refusal("t/big", 59_990) is not None  # the same field, a few bytes shorter
    assert guard.refusal("t/big", 1_500) is None  # no larger than what the broker took
    assert guard.refusal("t/other", 70_000) is not None
    assert guard.refusal("t/other", 30_000) is None  # unknown: it may become a suspect itself


def test_a_confirmed_suspect_is_acquitted() -> None:
    guard = MessageGuard(1 << 20)
    guard.handed("t/big", 60_000, now=10.0)
    guard.dropped(now=10.1)
    guard.handed("t/big", 60_000, now=12.0)
    guard.confirmed()
    assert guard.suspect is None
    guard.handed("t/big", 60_000, now=20.0)
    assert guard.dropped(now=20.1) is None  # a suspect again, not convicted
    assert guard.refusal("t/big", 60_000) is None


def test_a_drop_long_after_the_last_hand_over_blames_nothing() -> None:
    guard = MessageGuard(1 << 20)
    guard.handed("t/big", 60_000, now=10.0)
    guard.dropped(now=10.1)
    guard.handed("t/big", 60_000, now=20.0)
    assert guard.dropped(now=20.0 + guard.blame_window_s + 1) is None
    assert guard.suspect is None  # an idle drop breaks the "twice in a row"


def test_a_different_largest_message_restarts_the_count() -> None:
    guard = MessageGuard(1 << 20)
    guard.handed("t/a", 50_000, now=1.0)
    guard.dropped(now=1.1)
    guard.handed("t/b", 40_000, now=3.0)
    assert guard.dropped(now=3.1) is None
    assert guard.suspect == ("t/b", 40_000)


# --- connection lengths --------------------------------------------------------------------------


def test_only_a_connection_that_lasted_resets_the_backoff() -> None:
    watch = ConnectionWatch()
    watch.connected(now=0.0)
    assert not watch.dropped(now=STABLE_AFTER_S - 1).reset_backoff
    watch.connected(now=100.0)
    assert watch.dropped(now=100.0 + STABLE_AFTER_S).reset_backoff


def test_short_connections_in_a_row_are_reported_once() -> None:
    watch = ConnectionWatch(short_to_report=3)
    reports = []
    for start in range(0, 100, 10):
        watch.connected(now=float(start))
        reports.append(watch.dropped(now=start + 1.0).report)
    assert reports == [False, False, True] + [False] * 7
    # A connection that lasted ends the episode: the next run of short ones is reported again.
    watch.connected(now=200.0)
    assert not watch.dropped(now=200.0 + STABLE_AFTER_S).report
    for start in (300, 310):
        watch.connected(now=float(start))
        assert not watch.dropped(now=start + 1.0).report
    watch.connected(now=320.0)
    assert watch.dropped(now=321.0).report


def test_a_broker_that_was_away_in_between_is_no_duplicate_client() -> None:
    """Restarts of the broker also end connections early, but then an attempt finds no broker."""
    watch = ConnectionWatch(short_to_report=3)
    for start in range(0, 100, 10):
        watch.connected(now=float(start))
        assert not watch.dropped(now=start + 2.0).report
        watch.attempt_failed()


def test_session_taken_over_is_reported_at_once() -> None:
    watch = ConnectionWatch()
    watch.connected(now=0.0)
    assert watch.dropped(now=2.0, taken_over=True).report
    watch.connected(now=5.0)
    assert not watch.dropped(now=6.0, taken_over=True).report


def test_drops_a_refused_message_explains_do_not_count() -> None:
    watch = ConnectionWatch(short_to_report=3)
    for start, explained in ((0, False), (10, False), (20, True), (30, False), (40, False)):
        watch.connected(now=float(start))
        assert not watch.dropped(now=start + 1.0, explained=explained).report


# --- protocol choice -----------------------------------------------------------------------------


def test_auto_tries_mqtt5_then_3_1_1_and_fixed_settings_stay() -> None:
    auto = ProtocolChoice("auto")
    assert auto.mqtt5
    assert auto.refused()
    assert not auto.mqtt5
    for setting, mqtt5 in (("5", True), ("3.1.1", False)):
        fixed = ProtocolChoice(setting)
        assert fixed.mqtt5 is mqtt5
        assert not fixed.refused()
        assert fixed.mqtt5 is mqtt5


def test_what_counts_as_refusing_the_protocol() -> None:
    from aiomqtt.exceptions import MqttConnectError  # noqa: PLC0415 - aiomqtt's error type, as raised
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.reasoncodes import ReasonCode  # noqa: PLC0415

    unsupported = ReasonCode(PacketTypes.CONNACK, aName="Unsupported protocol version")
    assert refused_the_protocol(MqttConnectError(unsupported), BrokerSays())
    assert refused_the_protocol(MqttConnectError(1), BrokerSays())
    not_authorized = ReasonCode(PacketTypes.CONNACK, aName="Not authorized")
    assert not refused_the_protocol(MqttConnectError(not_authorized), BrokerSays())
    assert not refused_the_protocol(aiomqtt.MqttError("Connection refused"), BrokerSays())
    closed = BrokerSays(closed_before_connack=True)
    assert refused_the_protocol(aiomqtt.MqttError("Operation timed out"), closed)


# --- a broker that speaks only MQTT 3.1.1 --------------------------------------------------------


async def _old_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers an MQTT 5 CONNECT like a 3.1.1-only broker (return code 1), accepts 3.1.1."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        await reader.readexactly(1)
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = await reader.readexactly(length)
        level = body[6]  # after the protocol name "MQTT" (2 + 4 bytes)
        if level != 4:  # MQTT 3.1.1's protocol level
            writer.write(b"\x20\x02\x00\x01")
            await writer.drain()
            writer.close()
            return
        writer.write(b"\x20\x02\x00\x00")
        await writer.drain()
        while await reader.read(4096):
            pass
    writer.close()


@pytest.mark.system
@pytest.mark.parametrize("setting", ["auto", "plain"], ids=["fast", "plain"])
async def test_a_broker_that_refuses_mqtt5_gets_3_1_1(setting: PublisherSetting) -> None:
    port = free_port()
    server = await asyncio.start_server(_old_broker, "127.0.0.1", port)
    config = MqttConfig(
        host="127.0.0.1", port=port, client_id="test-old", reconnect_max_s=0.5, publisher=setting
    )
    link = MqttLink(config, Outbox(), state_topic="test/state")
    stop = asyncio.Event()
    async with server:
        task = asyncio.create_task(link.run(stop))
        try:
            async with asyncio.timeout(10):
                await link.connected.wait()
            assert not link.protocol.mqtt5
        finally:
            stop.set()
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(10):
                    await task
    assert link.connections == 1


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT packet: its first byte and its body."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return first, await reader.readexactly(length)


async def _taking_over_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts an MQTT 5 CONNECT, then sends DISCONNECT "Session taken over" (0x8E) in 0.2 s.

    Until then it acknowledges QoS 1 publishes, as a broker does before another client takes
    the client id.
    """
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        await _read_packet(reader)  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK: success, no properties
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                while True:
                    first, body = await _read_packet(reader)
                    if first >> 4 == 3 and (first >> 1) & 3 == 1:  # PUBLISH at QoS 1
                        topic_length = int.from_bytes(body[:2], "big")
                        packet_id = body[2 + topic_length : 4 + topic_length]
                        writer.write(b"\x40\x02" + packet_id)  # PUBACK: success
        writer.write(b"\xe0\x02\x8e\x00")  # DISCONNECT: Session taken over, no properties
        await writer.drain()
    writer.close()


@pytest.mark.parametrize("setting", ["auto", "plain"], ids=["fast", "plain"])
async def test_session_taken_over_is_reported_with_the_client_id(
    caplog: pytest.LogCaptureFixture, setting: PublisherSetting
) -> None:
    """Fast: the DISCONNECT's reason is reported at once; plain: the third short connection.

    aiomqtt's public API does not pass the reason on, so the plain publisher cannot hear it.
    """
    port = free_port()
    server = await asyncio.start_server(_taking_over_broker, "127.0.0.1", port)
    config = MqttConfig(
        host="127.0.0.1", port=port, client_id="twin-id", reconnect_max_s=5, publisher=setting
    )
    link = MqttLink(config, Outbox(), state_topic="test/state")
    stop = asyncio.Event()
    async with server:
        task = asyncio.create_task(link.run(stop))
        try:
            async with asyncio.timeout(10):
                while "same client_id" not in caplog.text:  # noqa: ASYNC110 - polling the log
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(10):
                    await task
    reports = [r.getMessage() for r in caplog.records if "same client_id" in r.getMessage()]
    assert len(reports) == 1, reports
    assert "'twin-id'" in reports[0]
    if setting == "plain":
        assert "3 connections in a row" in reports[0]
        assert link.connections == 3
    else:
        assert "Session taken over" in reports[0]
        assert link.connections == 1  # reported at the first drop, not after three
