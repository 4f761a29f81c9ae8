"""MqttLink publishing in chunks on a real mosquitto, through the fast and the plain publisher."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest

from bridge.adapters.mqtt import (
    CONFIRM_EVERY_MESSAGES,
    CONFIRM_EVERY_S,
    MAX_BATCH,
    MqttLink,
    WillKeeper,
    make_client,
)
from bridge.adapters.mqtt_fastpath import (
    FastPublisher,
    PlainPublisher,
    Publisher,
    PublisherChoice,
    PublisherSetting,
    paho_client,
)
from bridge.core.config import MqttConfig
from bridge.core.outbox import Message, Outbox
from tests.conftest import Broker, collect_retained, subscriber, wait_for_retained

STATE_TOPIC = "test/bridge/state"
# What each ``[mqtt] publisher`` setting must give on the installed aiomqtt and paho.
EXPECTED_PUBLISHER = {"auto": "fast", "plain": "plain"}


@pytest.fixture(params=["auto", "plain"], ids=["fast", "plain"])
def setting(request: pytest.FixtureRequest) -> PublisherSetting:
    """Every link test runs with the fast publisher and with the plain one."""
    value: PublisherSetting = request.param
    return value


def link_for(port: int, outbox: Outbox, setting: PublisherSetting) -> MqttLink:
    config = MqttConfig(
        host="127.0.0.1",
        port=port,
        client_id=f"test-link-{time.monotonic_ns()}",
        reconnect_max_s=0.5,
        publisher=setting,
    )
    return MqttLink(config, outbox, state_topic=STATE_TOPIC)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``link`` until the block ends; it must connect within 10 s and stop within 15 s."""
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        async with asyncio.timeout(10):
            await link.connected.wait()
        assert link.publisher is not None
        assert link.publisher.name == EXPECTED_PUBLISHER[link.config.publisher]
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def eventually(condition: Callable[[], bool], limit_s: float) -> None:
    """Poll ``condition`` until it holds; ``TimeoutError`` after ``limit_s``."""
    async with asyncio.timeout(limit_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def drained(outbox: Outbox, limit_s: float = 30.0) -> None:
    await eventually(lambda: not outbox.pending(), limit_s)


class Barriers:
    """Counts the chunks published with a barrier (either publisher); can act just before one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.before: Callable[[int], None] | None = None
        self.nodelay: set[int] = set()  # TCP_NODELAY of the link's socket at each barrier
        for kind in (FastPublisher, PlainPublisher):
            self._count(monkeypatch, kind)

    def _count(
        self, monkeypatch: pytest.MonkeyPatch, kind: type[FastPublisher | PlainPublisher]
    ) -> None:
        real = kind.publish_chunk

        async def publish_chunk(publisher: Publisher, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("confirm", True):
                self.calls += 1
                # Read through paho (the test's instrument): set through aiomqtt's public API.
                sock = paho_client(publisher.client).socket()
                if isinstance(sock, socket.socket):
                    self.nodelay.add(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                if self.before is not None:
                    self.before(self.calls)
            await real(publisher, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(kind, "publish_chunk", publish_chunk)


def burst(count: int) -> dict[str, str]:
    """``count`` retained topics with short payloads, 25 fields per unit."""
    return {f"test/unit{i // 25:04d}/field{i % 25:02d}": f"{i}.5" for i in range(count)}


@pytest.mark.broker
async def test_burst_of_retained_topics_reaches_the_broker_in_chunks(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, setting: PublisherSetting
) -> None:
    outbox = Outbox()
    link = link_for(broker.port, outbox, setting)
    link._clock = lambda: 0.0  # frozen: only the message count asks for barriers
    expected = burst(2 * CONFIRM_EVERY_MESSAGES + MAX_BATCH)
    async with running(link):
        await drained(outbox)
        barriers = Barriers(monkeypatch)
        for topic, payload in expected.items():
            outbox.put(topic, payload)
        await drained(outbox, limit_s=120)  # the plain publisher: ~2-6k messages/s
        assert outbox.pending() == []
        assert link.last_delivery == 0.0
        # One awaited publish per CONFIRM_EVERY_MESSAGES, not one per chunk or per message.
        assert barriers.calls == 2
        # Nagle off: otherwise each barrier waits for the broker's delayed ACK (~40 ms).
        assert barriers.nodelay == {1}
        # The last chunk is handed over unconfirmed: it may still be on its way to the broker.
        want = {**expected, STATE_TOPIC: "online"}
        found = await wait_for_retained(
            broker.port, lambda seen: seen == want, pattern="test/#", limit_s=30
        )
        assert link.connections == 1
    assert found == want


@pytest.mark.broker
async def test_deletions_and_events_keep_their_order(
    broker: Broker, setting: PublisherSetting
) -> None:
    outbox = Outbox()
    link = link_for(broker.port, outbox, setting)
    events = [f"event-{n}" for n in range(700)]  # 1 + 1 + 700 messages: the events span 2 chunks
    async with running(link):
        for name in ("a", "b", "c"):
            outbox.put(f"test/keep/{name}", f"{name}-1")
        await drained(outbox)
        async with subscriber(broker.port, "test/keep/#") as client:
            messages = aiter(client.messages)
            received: list[tuple[str, str, bool]] = []
            async with asyncio.timeout(10):
                while len(received) < 3:  # the retained a, b, c delivered on subscribing
                    message = await anext(messages)
                    assert isinstance(message.payload, bytes)
                    received.append((str(message.topic), message.payload.decode(), message.retain))
            assert sorted(received) == [
                (f"test/keep/{name}", f"{name}-1", True) for name in ("a", "b", "c")
            ]
            outbox.delete("test/keep/a")
            outbox.put("test/keep/b", "b-2")
            for payload in events:
                outbox.event("test/keep/events", payload)
            received = []
            async with asyncio.timeout(15):
                while len(received) < 2 + len(events):
                    message = await anext(messages)
                    assert isinstance(message.payload, bytes)
                    received.append((str(message.topic), message.payload.decode(), message.retain))
            with contextlib.suppress(TimeoutError):  # nothing more arrives: no duplicates
                async with asyncio.timeout(0.5):
                    extra = await anext(messages)
                    pytest.fail(f"unexpected extra message on {extra.topic}: {extra.payload!r}")
        await drained(outbox)
        assert outbox.pending() == []
        found = await collect_retained(broker.port, "test/keep/#")
    assert received == [
        ("test/keep/a", "", False),
        ("test/keep/b", "b-2", False),
        *(("test/keep/events", payload, False) for payload in events),
    ]
    assert found == {"test/keep/b": "b-2", "test/keep/c": "c-1"}


@pytest.mark.broker
async def test_broker_killed_mid_burst_unconfirmed_events_stay_pending_then_all_is_republished(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, setting: PublisherSetting
) -> None:
    outbox = Outbox()
    link = link_for(broker.port, outbox, setting)
    link._clock = lambda: 0.0  # frozen: no barrier comes from the time since the last one
    expected = burst(10 * MAX_BATCH)
    events = [f"event-{n}" for n in range(20)]
    async with running(link):
        await drained(outbox)
        barriers = Barriers(monkeypatch)

        def kill_before_the_events_barrier(call: int) -> None:
            if call == 1:
                broker.stop()

        barriers.before = kill_before_the_events_barrier
        for topic, payload in expected.items():
            outbox.put(topic, payload)
        for payload in events:
            outbox.event("test/events", payload)
        # All is handed over without a barrier; then, idle with events unconfirmed, the link
        # publishes ``online`` as their barrier, and the broker dies just before it.
        await eventually(lambda: not link.connected.is_set(), 15)
        assert barriers.calls == 1
        # The retained values were handed over (a reconnect republishes them all anyway); the
        # events' barrier was lost, so none of them counts as sent: all are pending again.
        assert outbox.pending() == [
            Message(STATE_TOPIC, "online"),
            *(Message("test/events", payload, retain=False) for payload in events),
        ]
        broker.start()  # same port, empty: persistence is off
        want = {**expected, STATE_TOPIC: "online"}
        found = await wait_for_retained(
            broker.port, lambda seen: seen == want, pattern="test/#", limit_s=30
        )
        await drained(outbox)
        assert link.connections == 2
    assert found == want


@pytest.mark.broker
async def test_small_chunks_share_a_barrier_but_time_forces_one(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, setting: PublisherSetting
) -> None:
    """A poll's few retained values or events cost no round trip; a second's wait does."""
    outbox = Outbox()
    link = link_for(broker.port, outbox, setting)
    clock = [0.0]
    link._clock = lambda: clock[0]
    async with running(link):
        await drained(outbox)
        clock[0] = 1000.0
        barriers = Barriers(monkeypatch)
        outbox.put("test/a", "1")  # the last barrier was at 0.0, long ago
        await drained(outbox)
        assert barriers.calls == 1
        for value in range(2, 12):
            outbox.put("test/a", str(value))
            await drained(outbox)
        assert barriers.calls == 1  # ten chunks within a second: handed over, not awaited
        outbox.event("test/events", "plugged_in")
        await drained(outbox)
        assert outbox.unconfirmed_events == 1  # handed over, not awaited
        outbox.put("test/a", "12")
        await drained(outbox)
        assert (barriers.calls, outbox.unconfirmed_events) == (1, 1)
        # Idle with an event unconfirmed: ``online`` again is its barrier, within a second.
        await eventually(lambda: outbox.unconfirmed_events == 0, 3 * CONFIRM_EVERY_S)
        assert barriers.calls == 2
        clock[0] += CONFIRM_EVERY_S
        outbox.put("test/a", "last")
        await drained(outbox)
        assert barriers.calls == 3
        assert link.last_delivery == clock[0]
        found = await collect_retained(broker.port, "test/a")
    assert found == {"test/a": "last"}


async def test_a_message_the_client_refuses_raises_mqtt_error_before_the_barrier(
    monkeypatch: pytest.MonkeyPatch, setting: PublisherSetting
) -> None:
    """The result of each publish is checked: an unconnected client cannot queue QoS 0."""
    client = make_client(MqttConfig(host="127.0.0.1"), "test-refused")
    publisher = PublisherChoice(setting).for_client(client)
    assert publisher.name == EXPECTED_PUBLISHER[setting]
    awaited: list[tuple[str, int]] = []
    real = aiomqtt.Client.publish

    async def publish(self: aiomqtt.Client, topic: str, *args: Any, **kwargs: Any) -> None:
        awaited.append((topic, kwargs.get("qos", 0)))
        await real(self, topic, *args, **kwargs)

    monkeypatch.setattr(aiomqtt.Client, "publish", publish)
    chunk = [Message("test/x", "1"), Message("test/y", "2"), Message("test/z", "3")]
    with pytest.raises(aiomqtt.MqttError, match="not currently connected"):
        await publisher.publish_chunk(chunk)
    assert ("test/z", 1) not in awaited  # the barrier was never tried


@pytest.mark.broker
async def test_burst_arrives_framed_or_through_awaited_publishes(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, setting: PublisherSetting
) -> None:
    """The same retained values reach the broker either way.

    Fast: retained values are framed by us, so paho's publish runs only for the awaited
    publishes (barriers and ``offline``). Plain: every message is an awaited publish.
    """
    paho_publishes = 0
    real_paho_publish = paho.Client.publish

    def counting_paho_publish(self: paho.Client, *args: Any, **kwargs: Any) -> paho.MQTTMessageInfo:
        nonlocal paho_publishes
        paho_publishes += 1
        return real_paho_publish(self, *args, **kwargs)

    awaited = 0
    real_publish = aiomqtt.Client.publish

    async def counting_publish(self: aiomqtt.Client, *args: Any, **kwargs: Any) -> None:
        nonlocal awaited
        awaited += 1
        await real_publish(self, *args, **kwargs)

    monkeypatch.setattr(paho.Client, "publish", counting_paho_publish)
    monkeypatch.setattr(aiomqtt.Client, "publish", counting_publish)
    expected = burst(1200)
    outbox = Outbox()
    for topic, payload in expected.items():
        outbox.put(topic, payload)
    link = link_for(broker.port, outbox, setting)
    async with running(link):
        await drained(outbox)
    messages = len(expected) + 1  # and the state topic's online
    assert paho_publishes == awaited
    if setting == "plain":
        assert awaited == messages + 1  # and offline at the exit
    else:
        assert 2 <= awaited < 10  # a barrier or two, and offline
    found = await collect_retained(broker.port, "test/+/+")
    assert {t: v for t, v in found.items() if t != STATE_TOPIC} == expected


@pytest.mark.broker
async def test_topics_under_a_qos1_prefix_are_delivered_at_qos1(
    broker: Broker, setting: PublisherSetting
) -> None:
    """Homie requires QoS 1: its prefix goes out at QoS 1, the bridge's own topics at QoS 0."""
    outbox = Outbox()
    config = MqttConfig(
        host="127.0.0.1", port=broker.port, client_id="test-link-qos", publisher=setting
    )
    link = MqttLink(config, outbox, state_topic=STATE_TOPIC, qos1_prefixes=("test/homie/",))
    async with running(link), subscriber(broker.port, "test/+/x") as client:
        outbox.put("test/homie/x", "1")
        outbox.put("test/plain/x", "2")
        received: dict[str, int] = {}
        messages = aiter(client.messages)
        async with asyncio.timeout(10):
            while len(received) < 2:
                message = await anext(messages)
                received[str(message.topic)] = message.qos
    assert received == {"test/homie/x": 1, "test/plain/x": 0}


class _SlowAckClient:
    """The Will connection's client: ``publish`` waits for its PUBACK while the test acts."""

    def __init__(self, while_acking: Callable[[], None]) -> None:
        self.published: list[tuple[str, str]] = []
        self._while_acking = while_acking

    @property
    def messages(self) -> AsyncIterator[object]:
        async def never() -> AsyncIterator[object]:
            await asyncio.Event().wait()
            yield None  # pragma: no cover - never reached

        return never()

    async def publish(self, topic: str, payload: str, **_options: object) -> None:
        self.published.append((topic, payload))
        while_acking, self._while_acking = self._while_acking, lambda: None
        while_acking()
        await asyncio.sleep(0)


async def test_a_drop_reconnect_drop_while_lost_is_acked_says_lost_again() -> None:
    """The short connection in between may have put ``ready`` again: ``lost`` follows it."""
    restored: list[int] = []
    keeper = WillKeeper(
        MqttConfig(host="127.0.0.1"),
        topic="homie/dev/$state",
        payload="lost",
        restore=lambda: restored.append(1),
    )

    def reconnect_and_drop() -> None:
        keeper.link_connected()
        keeper.link_lost()

    client = _SlowAckClient(reconnect_and_drop)
    keeper.link_connected()
    keeper.link_lost()
    stop = asyncio.Event()
    hold = asyncio.create_task(keeper._hold(client, stop))  # type: ignore[arg-type]
    for _ in range(50):
        await asyncio.sleep(0)
    stop.set()
    assert await hold is True
    assert client.published == [("homie/dev/$state", "lost")] * 2
