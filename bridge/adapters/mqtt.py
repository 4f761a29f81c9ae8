"""The MQTT side: connect, reconnect with backoff, drain the outbox, publish ``offline`` on exit.

This module uses aiomqtt's public API only. How a chunk reaches the broker (and what the broker
says about a connection) goes through a :class:`~bridge.adapters.mqtt_fastpath.Publisher`: every
use of aiomqtt's and paho's internals lives in :mod:`bridge.adapters.mqtt_fastpath`, with a plain
public-API publisher beside the fast one, so a move to aiomqtt 3 touches that module only.
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
from aiomqtt.exceptions import MqttConnectError

from bridge.adapters.mqtt_fastpath import (
    PUBLISH_TIMEOUT_S,
    BrokerSays,
    Publisher,
    PublisherChoice,
)
from bridge.core.backoff import Backoff
from bridge.core.config import MqttConfig
from bridge.core.outbox import Message, Outbox

logger = logging.getLogger(__name__)

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
# A connection that lasted this long was a success: only then does the reconnect backoff restart.
STABLE_AFTER_S: Final = 30.0
# A SUBACK code from here on refuses the subscription (0x80 in MQTT 3.1.1, 0x80-0xA2 in MQTT 5).
SUBSCRIBE_REFUSED: Final = 0x80
# This many connections in a row closed before STABLE_AFTER_S: reported as a likely duplicate id.
SHORT_CONNECTIONS_TO_REPORT: Final = 3
# A drop this soon after a message was handed over (and before a barrier confirmed it) may be
# the broker refusing that message.
BLAME_WINDOW_S: Final = 5.0
# CONNACK reason codes that mean "not this protocol version" (3.1.1's 1 is read as 0x84 by paho).
_PROTOCOL_REFUSALS: Final = frozenset({0x01, 0x81, 0x82, 0x84})
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
    *,
    mqtt5: bool | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client with the configured broker, credentials and TLS (and a retained Will).

    ``mqtt5`` None: MQTT 5 only when ``[mqtt] protocol = "5"`` (short-lived helper connections).

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
        # Nagle off: a chunk's many small packets leave the socket unacknowledged, and the
        # barrier at its end would wait for the broker's delayed ACK (~40 ms on Linux) each time.
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        protocol=aiomqtt.ProtocolVersion.V5
        if (config.protocol == "5" if mqtt5 is None else mqtt5)
        else aiomqtt.ProtocolVersion.V311,
    )


@contextlib.asynccontextmanager
async def connection(client: aiomqtt.Client, publisher: Publisher) -> AsyncIterator[aiomqtt.Client]:
    """``async with client``, but an attempt that fails (or is cancelled) is abandoned."""
    try:
        await client.__aenter__()
    except BaseException:
        publisher.abandon()
        raise
    try:
        yield client
    except BaseException as error:
        await client.__aexit__(type(error), error, error.__traceback__)
        raise
    await client.__aexit__(None, None, None)


def refused_the_protocol(error: BaseException, says: BrokerSays) -> bool:
    """Whether a failed attempt looks like a broker that does not speak the version we asked."""
    if isinstance(error, MqttConnectError):
        code = getattr(error.rc, "value", error.rc)
        return code in _PROTOCOL_REFUSALS
    return says.closed_before_connack


def publish_packet_bytes(topic: str, payload: str, *, mqtt5: bool) -> int:
    """The size of a PUBLISH of ``payload`` on ``topic`` at QoS 1, the larger of QoS 0 and 1."""
    remaining = 2 + len(topic.encode("utf-8")) + 2 + len(payload.encode("utf-8"))
    remaining += 1 if mqtt5 else 0
    length_bytes = 1 + (remaining >= 128) + (remaining >= 16_384) + (remaining >= 2_097_152)  # noqa: PLR2004 - MQTT's variable-length integer steps
    return 1 + length_bytes + remaining


def describe_mqtt_error(error: BaseException) -> str:
    """A one-line reason for a broker problem, without secrets."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())[:200]


class Handed(NamedTuple):
    """The largest message handed to the broker since the last confirmed barrier."""

    topic: str
    size: int
    at: float


class MessageGuard:
    """Which messages the broker will not take (pure: sizes and times are passed in).

    A message over the limit (``[mqtt] max_message_bytes``, or the broker's smaller Maximum
    Packet Size from an MQTT 5 CONNACK) is refused before sending. A broker that states no limit
    (3.1.1) just closes the connection on a packet too large for it: the largest message handed
    since the last confirmed barrier, shortly before the drop, becomes the suspect; the next
    connection sends it alone after a confirmed barrier, so a second drop right after it convicts
    it (a confirmed barrier acquits it). The broker's limit then lies between the largest message
    it confirmed and the convicted one: nothing that large is sent again, and on a convicted topic
    (whose size varies a little from poll to poll) nothing larger than what it confirmed.
    """

    def __init__(self, max_message_bytes: int, *, blame_window_s: float = BLAME_WINDOW_S) -> None:
        self.max_message_bytes = max_message_bytes
        self.blame_window_s = blame_window_s
        self.broker_limit: int | None = None
        self.suspect: tuple[str, int] | None = None
        self._convicted: set[str] = set()
        self._smallest_convicted: int | None = None
        self._largest_confirmed = 0
        self._warned: set[str] = set()
        self._largest: Handed | None = None

    @property
    def limit(self) -> int:
        """The largest packet the bridge sends now."""
        limit = self.max_message_bytes
        if self.broker_limit is not None:
            limit = min(limit, self.broker_limit)
        if self._smallest_convicted is not None:
            limit = min(limit, self._smallest_convicted - 1)
        return limit

    def watched(self, topic: str) -> bool:
        """Whether messages on ``topic`` need an exact size check (suspect or convicted)."""
        return topic in self._convicted or (self.suspect is not None and self.suspect[0] == topic)

    def refusal(self, topic: str, size: int) -> str | None:
        """Why a ``size``-byte packet on ``topic`` must not be sent, or ``None`` to send it."""
        convicted = "the broker closed the connection twice right after it"
        if topic in self._convicted and size > self._largest_confirmed:
            return convicted
        if size <= self.limit:
            return None
        if self._smallest_convicted is not None and size >= self._smallest_convicted:
            return f"{convicted} (at {self._smallest_convicted} bytes)"
        if self.broker_limit is not None and self.broker_limit < self.max_message_bytes:
            return f"larger than the broker's maximum packet size ({self.limit} bytes)"
        return f"larger than [mqtt] max_message_bytes ({self.limit} bytes)"

    def first_refusal(self, topic: str) -> bool:
        """True the first time ``topic`` is refused: warn once per topic, not once per poll."""
        if topic in self._warned:
            return False
        self._warned.add(topic)
        return True

    def handed(self, topic: str, size: int, now: float) -> None:
        """A message went to the broker, not confirmed yet."""
        if self._largest is None or size > self._largest.size:
            self._largest = Handed(topic, size, now)

    def confirmed(self) -> None:
        """A barrier was confirmed: everything handed before it reached the broker."""
        if self._largest is not None:
            self._largest_confirmed = max(self._largest_confirmed, self._largest.size)
            if self.suspect == self._largest[:2]:
                self.suspect = None  # it reached the broker: not the culprit
        self._largest = None

    def dropped(self, now: float) -> tuple[str, int] | None:
        """The connection dropped: the message convicted by it, if any."""
        largest, self._largest = self._largest, None
        if largest is None or now - largest.at > self.blame_window_s:
            self.suspect = None  # an idle drop: nothing to blame, and no longer "in a row"
            return None
        blamed = (largest.topic, largest.size)
        if blamed != self.suspect:
            self.suspect = blamed
            return None
        self.suspect = None
        self._convicted.add(largest.topic)
        self._smallest_convicted = min(largest.size, self._smallest_convicted or largest.size)
        return blamed

    def isolate_at(self, sizes: Sequence[tuple[str, int]]) -> int | None:
        """Where the suspect is among ``(topic, size)`` pairs about to be sent, if there."""
        if self.suspect is None:
            return None
        for index, pair in enumerate(sizes):
            if pair == self.suspect:
                return index
        return None


class DropVerdict(NamedTuple):
    """What a dropped connection means for the backoff and the log."""

    reset_backoff: bool
    report: bool


class ConnectionWatch:
    """Resets the backoff only after a connection that lasted, and spots a duplicate client id.

    Pure: times are passed in. A connection that lasted ``stable_after_s`` resets the backoff when
    it ends; shorter ones keep backing off towards the cap. ``short_to_report`` of them in a row
    (or an MQTT 5 "Session taken over") are reported once, until a connection lasts again.
    """

    def __init__(
        self,
        stable_after_s: float = STABLE_AFTER_S,
        short_to_report: int = SHORT_CONNECTIONS_TO_REPORT,
    ) -> None:
        self.stable_after_s = stable_after_s
        self.short_to_report = short_to_report
        self.short_in_a_row = 0
        self._since: float | None = None
        self._reported = False

    def connected(self, now: float) -> None:
        """A connection was accepted."""
        self._since = now

    def attempt_failed(self) -> None:
        """An attempt found no broker: an outage or restart, not a fight over the client id.

        Another client with our id never keeps us out: each attempt succeeds and is then kicked.
        """
        self.short_in_a_row = 0

    def dropped(
        self, now: float, *, taken_over: bool = False, explained: bool = False
    ) -> DropVerdict:
        """The connection ended; ``explained``: a refused message accounts for it."""
        since, self._since = self._since, None
        stable = since is not None and now - since >= self.stable_after_s
        if stable:
            self.short_in_a_row = 0
            self._reported = False
        elif explained:
            self.short_in_a_row = 0
        else:
            self.short_in_a_row += 1
        report = not self._reported and (taken_over or self.short_in_a_row >= self.short_to_report)
        self._reported = self._reported or report
        return DropVerdict(reset_backoff=stable, report=report)


class ProtocolChoice:
    """MQTT 5 or 3.1.1 for the next attempt: ``auto`` tries 5, and 3.1.1 when the broker refuses."""

    def __init__(self, setting: str) -> None:
        self.auto = setting == "auto"
        self.mqtt5 = setting != "3.1.1"

    def refused(self) -> bool:
        """The broker refused the version asked: switch (auto only); True when it switched."""
        if not self.auto:
            return False
        self.mqtt5 = not self.mqtt5
        return True

    @property
    def name(self) -> str:
        """The version the next attempt uses."""
        return "5" if self.mqtt5 else "3.1.1"


def report_short_connections(
    identifier: str, says: BrokerSays, watch: ConnectionWatch, cap_s: float
) -> None:
    """The one warning for a broker that keeps closing fresh connections."""
    if says.taken_over:
        logger.warning(
            "MQTT: the broker gave client_id %r to another connection (%s): another bridge or "
            "client uses the same client_id; give each a unique [mqtt] client_id "
            "(backing off up to %.0f s)",
            identifier,
            says.disconnect_reason,
            cap_s,
        )
        return
    logger.warning(
        "MQTT: the broker closed %d connections in a row within %.0f s: likely another client "
        "with the same client_id %r, or the broker refuses this client (backing off up to %.0f s)",
        watch.short_in_a_row,
        watch.stable_after_s,
        identifier,
        cap_s,
    )


class OutboxSignal:
    """Lets a task wait for the outbox: the outbox is a pure structure, this is its asyncio side."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._event = asyncio.Event()
        outbox.notify_on_change(self._event.set)

    async def wait(self) -> None:
        """Return once something is pending in the outbox."""
        while not self._outbox.has_pending():
            self._event.clear()
            await self._event.wait()


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
        on_connection_lost: Callable[[], None] | None = None,
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
        self._outbox_signal = OutboxSignal(outbox)
        self.state_topic = state_topic
        # Retained (topic, payload) pairs published on a clean exit, before ``offline``.
        self.shutdown_messages = shutdown_messages
        self.subscriptions = subscriptions
        self._republish_first = republish_first
        self._on_message = on_message
        self._on_connect = on_connect
        # Called when an established connection drops (not on a clean exit, not a failed attempt).
        self._on_connection_lost = on_connection_lost
        self._backoff = backoff or Backoff(
            initial=min(1.0, config.reconnect_max_s), maximum=config.reconnect_max_s
        )
        self.connected = asyncio.Event()
        self.connections = 0
        # Monotonic time of the last batch that reached the broker (for the health check).
        self.last_delivery: float | None = None
        self.guard = MessageGuard(config.max_message_bytes)
        self.watch = ConnectionWatch()
        self.protocol = ProtocolChoice(config.protocol)
        self.publishers = PublisherChoice(config.publisher)
        # The publisher of the current (or last) connection attempt.
        self.publisher: Publisher | None = None

    def _new_client(self) -> aiomqtt.Client:
        return make_client(
            self.config,
            self.config.client_id,
            (self.state_topic, OFFLINE),
            mqtt5=self.protocol.mqtt5,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set, then publish ``offline`` and disconnect."""
        failing_since_logged = False
        while not stop.is_set():
            try:
                client = self._new_client()
            except (ssl.SSLError, OSError, ValueError) as error:
                logger.error("MQTT: cannot set up the client: %s", describe_mqtt_error(error))  # noqa: TRY400 - one line, no traceback
                await self._wait(stop, self._backoff.next_delay())
                continue
            self.publisher = publisher = self.publishers.for_client(client)
            says = publisher.says
            mqtt5 = self.protocol.mqtt5  # what this client asked for
            was_connected = False
            try:
                async with connection(client, publisher):
                    was_connected = True
                    self.watch.connected(self._clock())
                    self.guard.broker_limit = says.maximum_packet_size
                    self.connections += 1
                    logger.info(
                        "MQTT: connected to %s:%d%s (MQTT %s%s)",
                        self.config.host,
                        self.config.port,
                        " again" if self.connections > 1 else "",
                        self.protocol.name,
                        f", broker's maximum packet size {says.maximum_packet_size} bytes"
                        if says.maximum_packet_size is not None
                        else "",
                    )
                    failing_since_logged = False
                    await self._serve(client, publisher, stop, mqtt5=mqtt5)
                    return
            except* aiomqtt.MqttError as group:
                failure: BaseException = group.exceptions[0]
            except* (OSError, ssl.SSLError) as group:
                failure = group.exceptions[0]
            reason = describe_mqtt_error(failure)
            self.connected.clear()
            self.outbox.requeue_unconfirmed_events()
            if was_connected:
                if self._on_connection_lost is not None:
                    self._on_connection_lost()
                self._judge_drop(says)
            else:
                self.watch.attempt_failed()
            if (
                not was_connected
                and refused_the_protocol(failure, says)
                and self.protocol.refused()
            ):
                logger.info(
                    "MQTT: the broker did not accept the protocol version (%s); trying MQTT %s",
                    reason,
                    self.protocol.name,
                )
                # Still after the backoff delay: a server refusing both must not spin.
                await self._wait(stop, self._backoff.next_delay())
                continue
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

    def _judge_drop(self, says: BrokerSays) -> None:
        now = self._clock()
        convicted = self.guard.dropped(now)
        if convicted is not None:
            logger.debug("MQTT: %s (%d bytes) convicted of closing the connection", *convicted)
        verdict = self.watch.dropped(now, taken_over=says.taken_over, explained=bool(convicted))
        if verdict.reset_backoff:
            self._backoff.reset()
        if verdict.report:
            report_short_connections(
                self.config.client_id, says, self.watch, self.config.reconnect_max_s
            )

    @staticmethod
    async def _wait(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()

    async def _serve(
        self, client: aiomqtt.Client, publisher: Publisher, stop: asyncio.Event, *, mqtt5: bool
    ) -> None:
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
                group.create_task(
                    self._drain(client, publisher, stop, mqtt5=mqtt5), name="mqtt-drain"
                )
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

    async def _drain(
        self, client: aiomqtt.Client, publisher: Publisher, stop: asyncio.Event, *, mqtt5: bool
    ) -> None:
        unconfirmed = 0
        confirmed_at = float("-inf")  # the first chunk after connecting is confirmed
        confirm_next = False
        while True:
            # One chunk at a time: only a chunk's worth of messages (and rendered configs) exists.
            while chunk := self.outbox.pending(MAX_BATCH):
                chunk, alone = self._screen(chunk, mqtt5=mqtt5)
                if not chunk:
                    continue  # all refused, and forgotten by the outbox
                unconfirmed += len(chunk)
                confirm = (
                    alone
                    or confirm_next
                    or unconfirmed >= CONFIRM_EVERY_MESSAGES
                    or self._clock() - confirmed_at >= CONFIRM_EVERY_S
                )
                # Noted before the barrier is awaited: a drop raises out of it.
                largest = max(chunk, key=lambda message: len(message.payload))
                size = publish_packet_bytes(largest.topic, largest.payload, mqtt5=mqtt5)
                self.guard.handed(largest.topic, size, self._clock())
                await publisher.publish_chunk(
                    chunk, confirm=confirm, qos1_prefixes=self._qos1_prefixes
                )
                for message in chunk:
                    if message.retain:
                        self.outbox.mark_sent(message)
                    else:
                        self.outbox.mark_handed(message)
                if confirm:
                    self.guard.confirmed()
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

    def _screen(self, chunk: list[Message], *, mqtt5: bool) -> tuple[list[Message], bool]:
        """``chunk`` without what the broker will not take (forgotten, warned once per topic).

        When the suspect of the last drop is in it, the chunk is cut so that it goes alone after
        a confirmed barrier: returns the part to send now and whether it must be confirmed.
        """
        guard = self.guard
        limit = guard.limit
        sendable: list[Message] = []
        for message in chunk:
            # A str character is at most 4 UTF-8 bytes: most messages need no exact size.
            rough = 4 * (len(message.topic) + len(message.payload)) + 16
            if rough <= limit and not guard.watched(message.topic):
                sendable.append(message)
                continue
            size = publish_packet_bytes(message.topic, message.payload, mqtt5=mqtt5)
            reason = guard.refusal(message.topic, size)
            if reason is None:
                sendable.append(message)
                continue
            self.outbox.discard(message)
            log = logger.warning if guard.first_refusal(message.topic) else logger.debug
            log("MQTT: not publishing %s (%d bytes): %s", message.topic, size, reason)
        if guard.suspect is None:
            return sendable, False
        at = guard.isolate_at(
            [
                (m.topic, publish_packet_bytes(m.topic, m.payload, mqtt5=mqtt5))
                if m.topic == guard.suspect[0]
                else (m.topic, -1)
                for m in sendable
            ]
        )
        if at is None:
            return sendable, False
        # What comes before the suspect is confirmed first; then the suspect alone.
        return (sendable[:at] if at else sendable[:1]), True

    async def _wait_for_work(self, stop: asyncio.Event, limit_s: float | None) -> bool:
        """Wait until the outbox has something or ``stop`` is set: False after ``limit_s``."""
        wait_outbox = asyncio.ensure_future(self._outbox_signal.wait())
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


# Shared by the short-lived helper connections below, so a missing fast path is logged once.
_ONE_SHOT_PUBLISHERS: Final = {"auto": PublisherChoice("auto"), "plain": PublisherChoice("plain")}


async def delete_retained(config: MqttConfig, topics: Sequence[str], identifier: str) -> None:
    """Remove ``topics`` from the broker (an empty retained payload each), confirmed in chunks.

    Raises:
        MqttUnavailableError: the broker cannot be reached or dropped the connection.
    """
    await publish_retained(config, [(topic, "") for topic in topics], identifier)


async def publish_retained(
    config: MqttConfig,
    pairs: Sequence[tuple[str, str]],
    identifier: str,
    qos1_prefixes: tuple[str, ...] = (),
) -> None:
    """Publish retained ``(topic, payload)`` pairs in order (``""`` deletes), confirmed in chunks.

    Raises:
        MqttUnavailableError: the broker cannot be reached or dropped the connection.
    """
    messages = [Message(topic, payload) for topic, payload in pairs]
    client = make_client(config, identifier)
    publisher = _ONE_SHOT_PUBLISHERS[config.publisher].for_client(client)
    try:
        async with connection(client, publisher):
            for start in range(0, len(messages), MAX_BATCH):
                await publisher.publish_chunk(
                    messages[start : start + MAX_BATCH], qos1_prefixes=qos1_prefixes
                )
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
        self._connection = client

    async def next(self) -> ReceivedMessage:
        """The next message; raises :class:`MqttUnavailableError` when the connection drops."""
        try:
            message = await anext(aiter(self._connection.messages))
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
    publisher = _ONE_SHOT_PUBLISHERS[config.publisher].for_client(client)
    try:
        async with connection(client, publisher):
            for pattern in patterns:
                granted = await client.subscribe(pattern, qos=1)
                if _refused(granted):
                    # An ACL that denies reading: what is retained there cannot be seen.
                    raise MqttUnavailableError(f"the broker refused a subscription to {pattern}")
            yield Subscription(client)
    except aiomqtt.MqttError as error:
        raise MqttUnavailableError(describe_mqtt_error(error)) from None


def _refused(granted: object) -> bool:
    """Whether a SUBACK says no: 0x80 or more (MQTT 3.1.1 and 5 alike)."""
    codes = granted if isinstance(granted, tuple | list) else (granted,)
    for code in codes:
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= SUBSCRIBE_REFUSED:
            return True
    return False


class WillKeeper:
    """A second broker connection that keeps Homie's ``$state`` honest about the main one.

    A connection carries one Will, and the main one's is ``<base>/bridge/state`` = ``offline``.
    Homie wants ``$state`` = ``lost`` whenever the connection that carries the device's data is
    gone, so this connection (client id ``<client_id>-will``) holds that Will, and the
    :class:`MqttLink` tells it when its own connection drops (:meth:`link_lost`) and comes back
    (:meth:`link_connected`):

    - the process dies or the network goes: the broker publishes both Wills;
    - only the main connection drops: this one publishes ``lost`` (retained, QoS 1, awaited)
      at once, and again after its own reconnect while the main one is still down;
    - only this connection drops: its Will says ``lost``, and after its reconnect ``restore``
      (the bridge re-puts the current ``$state``) corrects it over the main connection;
    - the main connection comes back: it republishes ``$state`` with everything else, and
      ``restore`` runs once more after any ``lost`` of ours, so ours can never arrive last;
    - a clean exit: the main connection says ``disconnected``, this one disconnects normally,
      which discards its Will.

    Carrying the Homie Will on the main connection instead would only move the problem to the
    bridge state (Home Assistant's availability), which has more consumers.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        topic: str,
        payload: str,
        restore: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.topic = topic
        self.payload = payload
        self.identifier = f"{config.client_id}-will"
        self._restore = restore
        self._backoff = backoff or Backoff(
            initial=min(1.0, config.reconnect_max_s), maximum=config.reconnect_max_s
        )
        self.connected = asyncio.Event()
        self.watch = ConnectionWatch()
        self.protocol = ProtocolChoice(config.protocol)
        self.publishers = PublisherChoice(config.publisher)
        self._clock = clock
        # The main connection was up once and is down now (before its first connection it is
        # not "lost": the retained ``$state`` of the last run stays).
        self._link_down = False
        # Counts the main connection's connects: a ``lost`` said for an earlier one is stale.
        self._link_generation = 0
        self._link_changed = asyncio.Event()

    def link_connected(self) -> None:
        """The main connection is up (again)."""
        self._link_down = False
        self._link_generation += 1
        self._link_changed.set()

    def link_lost(self) -> None:
        """The main connection dropped: ``$state`` must say ``lost`` until it is back."""
        self._link_down = True
        self._link_changed.set()

    def _new_client(self) -> aiomqtt.Client:
        return make_client(
            self.config, self.identifier, (self.topic, self.payload), mqtt5=self.protocol.mqtt5
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the connection until ``stop`` is set; reconnect with backoff when it drops."""
        while not stop.is_set():
            says = BrokerSays()
            was_connected = False
            try:
                client = self._new_client()
                publisher = self.publishers.for_client(client)
                says = publisher.says
                async with connection(client, publisher):
                    was_connected = True
                    self.watch.connected(self._clock())
                    self.connected.set()
                    if await self._hold(client, stop):
                        return  # leaving ``async with`` disconnects cleanly: no Will
            except* aiomqtt.MqttError as group:
                error: BaseException = group.exceptions[0]
            except* (OSError, ssl.SSLError, ValueError) as group:
                error = group.exceptions[0]
            reason = describe_mqtt_error(error)
            self.connected.clear()
            if was_connected:
                verdict = self.watch.dropped(self._clock(), taken_over=says.taken_over)
                if verdict.reset_backoff:
                    self._backoff.reset()
                if verdict.report:
                    report_short_connections(
                        self.identifier, says, self.watch, self.config.reconnect_max_s
                    )
            else:
                self.watch.attempt_failed()
                if refused_the_protocol(error, says):
                    self.protocol.refused()  # the next try, after the backoff delay
            delay = self._backoff.next_delay()
            logger.debug("MQTT: Will connection down (%s); next try in %.1f s", reason, delay)
            await MqttLink._wait(stop, delay)  # noqa: SLF001 - the same wait, one module

    async def _hold(self, client: aiomqtt.Client, stop: asyncio.Event) -> bool:
        """Follow the main connection until ``stop`` (True) or a drop (False or raises)."""

        async def drained() -> None:
            # Iterating notices a dropped connection: aiomqtt raises MqttError here.
            async for _ in client.messages:
                pass

        listen = asyncio.ensure_future(drained())
        stopped = asyncio.ensure_future(stop.wait())
        # A new connection: the Will of the last one may have replaced the real ``$state``.
        restore = True
        # The main connection whose loss was said; a quick reconnect and drop while saying it
        # (the short connection may have put ``ready`` again) needs ``lost`` said once more.
        lost_said_for: int | None = None
        try:
            while not stop.is_set() and not listen.done():
                self._link_changed.clear()
                if self._link_down:
                    if lost_said_for != self._link_generation:
                        lost_said_for = self._link_generation
                        await self._say_lost(client)
                        restore = True
                else:
                    lost_said_for = None
                    if restore and self._restore is not None:
                        self._restore()
                    restore = False
                changed = asyncio.ensure_future(self._link_changed.wait())
                try:
                    await asyncio.wait(
                        {listen, stopped, changed}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    changed.cancel()
        finally:
            listen.cancel()
            stopped.cancel()
        if stop.is_set():
            return True
        if listen.done() and not listen.cancelled() and listen.exception() is not None:
            raise listen.exception()  # type: ignore[misc]
        return False

    async def _say_lost(self, client: aiomqtt.Client) -> None:
        # Awaited (PUBACK): only then may the main connection's ``$state`` follow it.
        await client.publish(self.topic, self.payload, qos=1, retain=True)
        logger.info(
            "MQTT: main connection lost; published %s=%s on the Will connection",
            self.topic,
            self.payload,
        )
