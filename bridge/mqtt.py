"""The MQTT side: connect, reconnect with backoff, drain the outbox, publish ``offline`` on exit.

This is the only module that imports aiomqtt (and paho, underneath it), so a move to aiomqtt 3
touches one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, NamedTuple

import aiomqtt
import paho.mqtt.client as paho

from bridge.backoff import Backoff
from bridge.config import MqttConfig
from bridge.outbox import Message, Outbox

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S: Final = 10.0
# Messages handed to paho per chunk before one awaited QoS 1 publish confirms them all. It bounds
# what sits in paho's send queue (and what a broker outage can leave unconfirmed) to one chunk.
MAX_BATCH: Final = 500
# Retained values handed to paho are confirmed by a barrier at least this often, and after this many
# messages (which bounds paho's queue to a few MB); a lost connection loses nothing unconfirmed: all
# is republished on reconnect. Confirming every chunk capped a busy bridge at ~500 messages per
# broker round trip (8k msg/s with 1000 units: the PUBACK waits its turn in a busy event loop).
CONFIRM_EVERY_S: Final = 1.0
CONFIRM_EVERY_MESSAGES: Final = 20 * MAX_BATCH
SHUTDOWN_PUBLISH_TIMEOUT_S: Final = 3.0
ONLINE: Final = "online"
OFFLINE: Final = "offline"

IncomingHandler = Callable[[str, bytes], Awaitable[None]]


class _ShutdownRequestedError(Exception):
    """Raised inside the task group to leave it cleanly once ``offline`` is published."""


def _tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    tls = config.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.insecure:
        context.check_hostname = False
    return context


def make_client(
    config: MqttConfig,
    identifier: str,
    will: tuple[str, str] | None = None,
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> aiomqtt.Client:
    """An aiomqtt client with the configured broker, credentials and TLS (and a retained Will).

    Raises:
        ssl.SSLError, OSError, ValueError: the TLS files cannot be used.
    """
    password = config.password.get_secret_value() if config.password else None
    tls_context = _tls_context(config)
    return aiomqtt.Client(
        config.host,
        config.port,
        username=config.username,
        password=password,
        identifier=identifier,
        keepalive=config.keepalive_s,
        will=aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None,
        tls_context=tls_context,
        tls_insecure=bool(config.tls and config.tls.insecure) if tls_context else None,
        timeout=timeout_s,
    )


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client inside ``client``, for publishing without awaiting each message.

    aiomqtt 2 has no non-awaiting publish: each awaited ``publish`` costs an event-loop round trip
    (~6k msg/s at QoS 1), too slow for a thousand units. aiomqtt keeps its paho client in the
    private ``_client`` attribute (pinned ``aiomqtt>=2.5,<3``; tests/test_mqtt_link.py checks it),
    and it registers a socket writer with paho, so a packet handed over here is queued and written
    by the event loop. This is the only place that reaches into aiomqtt.
    """
    inner = client._client  # noqa: SLF001 - aiomqtt 2 offers no non-awaiting publish
    if not isinstance(inner, paho.Client):  # pragma: no cover - only if aiomqtt changes
        raise TypeError(f"aiomqtt.Client._client is {type(inner).__name__}, not a paho client")
    return inner


_MQTT_PUBLISH: Final = 0x30
_MAX_REMAINING_LENGTH: Final = 268_435_455  # MQTT's four-byte remaining-length limit
_MAX_TOPIC_BYTES: Final = 65_535


def frame_publish(topic: str, payload: str, *, retain: bool) -> bytes | None:
    """One MQTT 3.1.1 QoS 0 PUBLISH packet, byte for byte what paho would send.

    Returns ``None`` for anything paho should check and frame itself (an empty or wildcard
    topic, sizes beyond MQTT's limits); the bridge's own topics never are.
    """
    topic_bytes = topic.encode("utf-8")
    payload_bytes = payload.encode("utf-8")
    remaining = 2 + len(topic_bytes) + len(payload_bytes)
    if (
        not topic_bytes
        or len(topic_bytes) > _MAX_TOPIC_BYTES
        or remaining > _MAX_REMAINING_LENGTH
        or "+" in topic
        or "#" in topic
        or "\x00" in topic
    ):
        return None
    header = bytearray((_MQTT_PUBLISH | (1 if retain else 0),))
    while True:
        remaining, digit = divmod(remaining, 128)
        header.append(digit | 0x80 if remaining else digit)
        if not remaining:
            break
    header += len(topic_bytes).to_bytes(2, "big")
    return bytes(header) + topic_bytes + payload_bytes


def raw_publish_queue(inner: paho.Client) -> Callable[[bytes], None] | None:
    """A function queueing ready-framed QoS 0 PUBLISH packets on paho's send queue, or ``None``.

    paho's ``publish`` costs ~30-40 µs per message (a lock and condition per message info, a
    socket send per packet); framing a chunk here and queueing it as one block costs ~2 µs per
    message and one send. It uses paho's private ``_packet_queue`` (paho-mqtt pinned ``<3``;
    tests/test_mqtt_link.py compares our frames with paho's own and fails if this hook goes), and
    only on MQTT 3.1.x connections, whose PUBLISH has no properties. ``None`` means: use publish.
    """
    queue = getattr(inner, "_packet_queue", None)
    protocol = getattr(inner, "_protocol", None)
    if queue is None or protocol not in (paho.MQTTv31, paho.MQTTv311):
        return None

    def queue_raw(block: bytes) -> None:
        if inner.socket() is None:
            raise aiomqtt.MqttCodeError(paho.MQTT_ERR_NO_CONN, "Could not publish message")
        # Message id 0: no QoS 0 publish has one, so aiomqtt's on_publish finds nothing to wake.
        rc = queue(paho.PUBLISH, block, 0, 0, paho.MQTTMessageInfo(0))
        if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
            raise aiomqtt.MqttCodeError(rc, "Could not publish message")

    return queue_raw


async def publish_chunk(
    client: aiomqtt.Client,
    chunk: Sequence[Message],
    *,
    confirm: bool = True,
    qos1_prefixes: tuple[str, ...] = (),
) -> None:
    """Publish ``chunk`` in order; with ``confirm``, return once the broker has all of it.

    Raises:
        aiomqtt.MqttError: paho refused a message, or the barrier was not acknowledged in time.
    """
    rest, last = (chunk[:-1], chunk[-1]) if confirm else (chunk, None)
    inner = paho_client(client)
    queue_raw = raw_publish_queue(inner)
    framed: list[bytes] = []
    for message in rest:
        qos = 0 if message.retain and not message.topic.startswith(qos1_prefixes) else 1
        if qos == 0 and queue_raw is not None:
            packet = frame_publish(message.topic, message.payload, retain=True)
            if packet is not None:
                framed.append(packet)
                continue
        if framed and queue_raw is not None:  # what was framed goes first: order is kept
            queue_raw(b"".join(framed))
            framed = []
        info = inner.publish(
            message.topic,
            message.payload.encode("utf-8"),
            qos=qos,
            retain=message.retain,
        )
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
    if framed and queue_raw is not None:
        queue_raw(b"".join(framed))
    if last is not None:
        await client.publish(
            last.topic,
            last.payload.encode("utf-8"),
            qos=1,
            retain=last.retain,
            timeout=PUBLISH_TIMEOUT_S,
        )


def _send_without_delay(client: aiomqtt.Client) -> None:
    """Switch off Nagle's algorithm on the connected socket (TCP_NODELAY).

    A chunk's many small packets leave the socket unacknowledged; with Nagle on, the barrier
    publish at its end then waits for the broker's delayed ACK (~40 ms on Linux) every chunk.
    """
    sock = paho_client(client).socket()
    if isinstance(sock, socket.socket):  # also ssl.SSLSocket; not a WebSocket wrapper
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def describe_mqtt_error(error: BaseException) -> str:
    """A one-line reason for a broker problem, without secrets."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())[:200]


class MqttLink:
    """Keeps one broker connection alive and publishes everything the outbox holds.

    The outbox is published in chunks of up to ``MAX_BATCH`` messages, handed to paho without
    waiting: retained state (and deletions) at QoS 0, events at QoS 1. Now and then the last
    message of a chunk is instead an awaited QoS 1 publish, a barrier: MQTT keeps order on one
    connection, so its PUBACK means the broker has everything before it. A barrier comes every
    ``CONFIRM_EVERY_MESSAGES`` (which bounds paho's queue) and at least every ``CONFIRM_EVERY_S``
    (which feeds ``last_delivery``). Retained state is marked sent when handed over: if the
    connection drops first, the reconnect republishes every retained topic anyway
    (``republish_all``), so nothing is lost, and a poll costs no round trip to the broker.
    Events are handed over at once too, but count as sent only once a later barrier is confirmed
    (at-least-once: after a drop they go again, so one may arrive twice); with nothing else to
    send, the ``online`` state is published again within ``CONFIRM_EVERY_S`` as their barrier.
    Awaiting a barrier for every chunk holding events stalled the drain (~10 round trips a second
    of 50-250 ms each while 1000 units plugged in), which held values back for up to 0.8 s.
    """

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        state_topic: str,
        subscriptions: tuple[str, ...] = (),
        on_message: IncomingHandler | None = None,
        on_connect: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        republish_first: str | None = None,
        shutdown_messages: tuple[tuple[str, str], ...] = (),
        clock: Callable[[], float] = time.monotonic,
        qos1_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self._clock = clock
        # Retained topics under these go out at QoS 1 too (Homie requires it).
        self._qos1_prefixes = qos1_prefixes
        self.outbox = outbox
        self.state_topic = state_topic
        # Retained (topic, payload) pairs published on a clean exit, before ``offline``.
        self.shutdown_messages = shutdown_messages
        self.subscriptions = subscriptions
        self._republish_first = republish_first
        self._on_message = on_message
        self._on_connect = on_connect
        self._backoff = backoff or Backoff(
            initial=min(1.0, config.reconnect_max_s), maximum=config.reconnect_max_s
        )
        self.connected = asyncio.Event()
        self.connections = 0
        # Monotonic time of the last batch that reached the broker (for the health check).
        self.last_delivery: float | None = None

    def _client(self) -> aiomqtt.Client:
        return make_client(self.config, self.config.client_id, (self.state_topic, OFFLINE))

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set, then publish ``offline`` and disconnect."""
        failing_since_logged = False
        while not stop.is_set():
            try:
                client = self._client()
            except (ssl.SSLError, OSError, ValueError) as error:
                logger.error("MQTT: cannot set up the client: %s", describe_mqtt_error(error))  # noqa: TRY400 - one line, no traceback
                await self._wait(stop, self._backoff.next_delay())
                continue
            try:
                async with client:
                    self._backoff.reset()
                    self.connections += 1
                    logger.info(
                        "MQTT: connected to %s:%d%s",
                        self.config.host,
                        self.config.port,
                        " again" if self.connections > 1 else "",
                    )
                    failing_since_logged = False
                    await self._serve(client, stop)
                    return
            except* aiomqtt.MqttError as group:
                reason = describe_mqtt_error(group.exceptions[0])
            except* (OSError, ssl.SSLError) as group:
                reason = describe_mqtt_error(group.exceptions[0])
            self.connected.clear()
            self.outbox.requeue_unconfirmed_events()
            delay = self._backoff.next_delay()
            if not failing_since_logged:
                failing_since_logged = True
                verb = "lost" if self.connections else "cannot connect to"
                logger.warning(
                    "MQTT: %s %s:%d: %s; retrying with backoff up to %.0f s",
                    verb,
                    self.config.host,
                    self.config.port,
                    reason,
                    self.config.reconnect_max_s,
                )
            else:
                logger.debug("MQTT: still unavailable (%s); next try in %.1f s", reason, delay)
            await self._wait(stop, delay)

    @staticmethod
    async def _wait(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        _send_without_delay(client)
        self.outbox.put(self.state_topic, ONLINE, always=True)
        self.outbox.republish_all(first_prefix=self._republish_first)
        for topic in self.subscriptions:
            await client.subscribe(topic, qos=1)
        if self._on_connect is not None:
            self._on_connect()
        self.connected.set()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._listen(client), name="mqtt-listen")
                group.create_task(self._drain(client, stop), name="mqtt-drain")
        except* _ShutdownRequestedError:
            logger.debug("MQTT: leaving the connection for shutdown")

    async def _listen(self, client: aiomqtt.Client) -> None:
        # Iterating also notices a dropped connection: aiomqtt raises MqttError here.
        async for message in client.messages:
            if self._on_message is None:
                continue
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                await self._on_message(str(message.topic), payload)
            except Exception:
                logger.exception("MQTT: handling a message on %s failed", message.topic)

    async def _drain(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        unconfirmed = 0
        confirmed_at = float("-inf")  # the first chunk after connecting is confirmed
        confirm_next = False
        while True:
            # One chunk at a time: only a chunk's worth of messages (and rendered configs) exists.
            while chunk := self.outbox.pending(MAX_BATCH):
                unconfirmed += len(chunk)
                confirm = (
                    confirm_next
                    or unconfirmed >= CONFIRM_EVERY_MESSAGES
                    or self._clock() - confirmed_at >= CONFIRM_EVERY_S
                )
                await publish_chunk(
                    client, chunk, confirm=confirm, qos1_prefixes=self._qos1_prefixes
                )
                for message in chunk:
                    if message.retain:
                        self.outbox.mark_sent(message)
                    else:
                        self.outbox.mark_handed(message)
                if confirm:
                    self.outbox.confirm_handed_events()
                    unconfirmed = 0
                    confirm_next = False
                    confirmed_at = self.last_delivery = self._clock()
                else:
                    await asyncio.sleep(0)  # let the pollers run between unconfirmed chunks
            # Unconfirmed events get their barrier from the next chunk, or from ``online``.
            idle_limit_s = CONFIRM_EVERY_S if self.outbox.unconfirmed_events else None
            if not await self._wait_for_work(stop, idle_limit_s):
                self.outbox.put(self.state_topic, ONLINE, always=True)
                confirm_next = True
            if stop.is_set():
                await self._say_goodbye(client)
                raise _ShutdownRequestedError

    async def _wait_for_work(self, stop: asyncio.Event, limit_s: float | None) -> bool:
        """Wait until the outbox has something or ``stop`` is set: False after ``limit_s``."""
        wait_outbox = asyncio.ensure_future(self.outbox.wait())
        wait_stop = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {wait_outbox, wait_stop}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wait_outbox.cancel()
            wait_stop.cancel()
        return bool(done)

    async def _say_goodbye(self, client: aiomqtt.Client) -> None:
        # A clean DISCONNECT suppresses the Will, so say offline ourselves.
        self.outbox.put(self.state_topic, OFFLINE, always=True)
        try:
            async with asyncio.timeout(SHUTDOWN_PUBLISH_TIMEOUT_S):
                for topic, payload in self.shutdown_messages:
                    self.outbox.put(topic, payload, always=True)
                    await client.publish(topic, payload, qos=1, retain=True)
                await client.publish(self.state_topic, OFFLINE, qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError) as error:
            reason = describe_mqtt_error(error)
            logger.warning("MQTT: could not publish offline on shutdown: %s", reason)
        else:
            logger.info("MQTT: published %s=offline; disconnecting", self.state_topic)


async def delete_retained(config: MqttConfig, topics: Sequence[str], identifier: str) -> None:
    """Remove ``topics`` from the broker (an empty retained payload each), confirmed in chunks.

    Raises:
        MqttUnavailableError: the broker cannot be reached or dropped the connection.
    """
    messages = [Message(topic, "") for topic in topics]
    try:
        async with make_client(config, identifier) as client:
            _send_without_delay(client)
            for start in range(0, len(messages), MAX_BATCH):
                await publish_chunk(client, messages[start : start + MAX_BATCH])
    except (aiomqtt.MqttError, OSError) as error:
        raise MqttUnavailableError(describe_mqtt_error(error)) from None


class MqttUnavailableError(Exception):
    """The broker cannot be reached, refused us, or the connection dropped (one-line message)."""


class ReceivedMessage(NamedTuple):
    """One message a :class:`Subscription` received."""

    topic: str
    payload: bytes
    retained: bool


class Subscription:
    """Messages of a read-only client, one at a time; safe to wrap in ``asyncio.timeout``."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client

    async def next(self) -> ReceivedMessage:
        """The next message; raises :class:`MqttUnavailableError` when the connection drops."""
        try:
            message = await anext(aiter(self._client.messages))
        except aiomqtt.MqttError as error:
            raise MqttUnavailableError(describe_mqtt_error(error)) from None
        payload = message.payload if isinstance(message.payload, bytes) else b""
        return ReceivedMessage(str(message.topic), payload, bool(message.retain))


@contextlib.asynccontextmanager
async def subscribe(
    config: MqttConfig,
    patterns: Sequence[str],
    *,
    identifier: str,
    connect_timeout_s: float = 5.0,
) -> AsyncIterator[Subscription]:
    """Connect with ``config``'s broker, credentials and TLS (no Will), subscribe to ``patterns``.

    ``identifier`` must differ from the bridge's ``client_id``, or the broker would disconnect the
    bridge. Connection problems raise :class:`MqttUnavailableError` with a one-line reason.
    """
    try:
        client = make_client(config, identifier, timeout_s=connect_timeout_s)
    except (ssl.SSLError, OSError, ValueError) as error:
        raise MqttUnavailableError(f"cannot set up TLS: {describe_mqtt_error(error)}") from None
    try:
        async with client:
            for pattern in patterns:
                await client.subscribe(pattern, qos=1)
            yield Subscription(client)
    except aiomqtt.MqttError as error:
        raise MqttUnavailableError(describe_mqtt_error(error)) from None


class WillKeeper:
    """A second, idle broker connection whose only job is one more Will.

    A connection carries one Will, and the main one's is ``<base>/bridge/state`` = ``offline``.
    Homie wants ``$state`` = ``lost`` when the bridge dies, so this connection (client id
    ``<client_id>-will``) holds that Will. It publishes nothing itself: after a reconnect it calls
    ``on_connect`` (the bridge re-puts the current ``$state``, which the Will may have replaced).
    A clean exit disconnects it normally, which discards its Will.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        topic: str,
        payload: str,
        on_connect: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.topic = topic
        self.payload = payload
        self.identifier = f"{config.client_id}-will"
        self._on_connect = on_connect
        self._backoff = backoff or Backoff(
            initial=min(1.0, config.reconnect_max_s), maximum=config.reconnect_max_s
        )
        self.connected = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        return make_client(self.config, self.identifier, (self.topic, self.payload))

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the connection until ``stop`` is set; reconnect with backoff when it drops."""
        while not stop.is_set():
            try:
                async with self._client() as client:
                    self._backoff.reset()
                    self.connected.set()
                    if self._on_connect is not None:
                        self._on_connect()
                    if await self._until_stop_or_drop(client, stop):
                        return  # leaving ``async with`` disconnects cleanly: no Will
            except* aiomqtt.MqttError as group:
                reason = describe_mqtt_error(group.exceptions[0])
            except* (OSError, ssl.SSLError, ValueError) as group:
                reason = describe_mqtt_error(group.exceptions[0])
            self.connected.clear()
            delay = self._backoff.next_delay()
            logger.debug("MQTT: Will connection down (%s); next try in %.1f s", reason, delay)
            await MqttLink._wait(stop, delay)  # noqa: SLF001 - the same wait, one module

    @staticmethod
    async def _until_stop_or_drop(client: aiomqtt.Client, stop: asyncio.Event) -> bool:
        async def drained() -> None:
            # Iterating notices a dropped connection: aiomqtt raises MqttError here.
            async for _ in client.messages:
                pass

        listen = asyncio.ensure_future(drained())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({listen, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listen.cancel()
            stopped.cancel()
        if stop.is_set():
            return True
        if listen.done() and not listen.cancelled() and listen.exception() is not None:
            raise listen.exception()  # type: ignore[misc]
        return False
