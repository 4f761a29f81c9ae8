"""How chunks reach the broker: the one module that touches aiomqtt's and paho's internals.

:class:`Publisher` is what the MQTT link (:mod:`bridge.adapters.mqtt`) needs from a connection:
publish a chunk (optionally confirmed by a barrier), what the broker said (CONNACK's Maximum
Packet Size, a DISCONNECT's reason) and "abandon this failed attempt". Two implementations:

* :class:`FastPublisher` reaches past the public APIs, all in this module: aiomqtt's paho client
  (its private ``_client``), paho's ``_packet_queue`` (pre-framed QoS 0 PUBLISH packets, MQTT
  3.1.1 and 5, byte for byte paho's own), paho's ``_sock_close`` (drop a failed attempt's socket
  for good), and the paho ``on_connect`` / ``on_disconnect`` callbacks aiomqtt installs (wrapped
  to read the broker's facts, which aiomqtt 2 drops).
* :class:`PlainPublisher` uses aiomqtt's public ``publish``, awaited per message. It cannot read
  the broker's facts or abandon an attempt: those stay unknown, and the link falls back on its
  other rules (``[mqtt] max_message_bytes``, the "dropped twice right after it" rule).

:class:`PublisherChoice` picks the fast one for each connection only when :func:`fast_path_missing`
finds every internal it needs (and our frames still equal paho's); otherwise it warns once and
uses the plain one. tests/test_mqtt_fastpath.py fails when the internals change.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Literal, Protocol

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bridge.core.outbox import Message

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S: Final = 10.0
# MQTT 5 DISCONNECT reason: another connection took this client id's session.
SESSION_TAKEN_OVER: Final = 0x8E
_MQTT_PUBLISH: Final = 0x30
_MAX_REMAINING_LENGTH: Final = 268_435_455  # MQTT's four-byte remaining-length limit
_MAX_TOPIC_BYTES: Final = 65_535
_PAHO_V2_CONNECT_ARGS: Final = 5  # client, userdata, flags, reason, properties

# The private names this module uses (and tests/test_mqtt_fastpath.py keeps out of other modules).
LIBRARY_INTERNALS: Final = ("_client", "_packet_queue", "_sock", "_sock_close", "_send_publish")
_PACKET_QUEUE_PARAMETERS: Final = ("command", "packet", "mid", "qos", "info")

PublisherSetting = Literal["auto", "plain"]


@dataclass
class BrokerSays:
    """What the broker told about one connection (MQTT 5 only; 3.1.1 has no such fields).

    A :class:`PlainPublisher` cannot hear it: every field keeps its "unknown" default.
    """

    maximum_packet_size: int | None = None
    connack_seen: bool = False
    closed_before_connack: bool = False
    disconnect_reason: str | None = None
    taken_over: bool = False


class Publisher(Protocol):
    """What the MQTT link needs from one connection attempt's client, beyond connecting."""

    name: str
    client: aiomqtt.Client  # the connection it publishes through
    says: BrokerSays

    async def publish_chunk(
        self, chunk: Sequence[Message], *, confirm: bool = True, qos1_prefixes: tuple[str, ...] = ()
    ) -> None:
        """Publish ``chunk`` in order; with ``confirm``, return once the broker has all of it.

        Retained messages go at QoS 0 (QoS 1 under ``qos1_prefixes``), events at QoS 1.

        Raises:
            aiomqtt.MqttError: a message was refused, or the barrier was not acknowledged in time.
        """
        ...

    def abandon(self) -> None:
        """Close a connection attempt that failed, so that no late CONNACK can revive it."""
        ...


def _qos(message: Message, qos1_prefixes: tuple[str, ...]) -> int:
    return 0 if message.retain and not message.topic.startswith(qos1_prefixes) else 1


async def _publish_barrier(client: aiomqtt.Client, message: Message) -> None:
    """An awaited QoS 1 publish: its PUBACK means the broker has everything sent before it."""
    await client.publish(
        message.topic,
        message.payload.encode("utf-8"),
        qos=1,
        retain=message.retain,
        timeout=PUBLISH_TIMEOUT_S,
    )


class PlainPublisher:
    """aiomqtt's public API only: each message an awaited ``publish`` (~6k msg/s)."""

    name = "plain"

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.says = BrokerSays()  # aiomqtt 2 does not pass these facts on: unknown

    async def publish_chunk(
        self, chunk: Sequence[Message], *, confirm: bool = True, qos1_prefixes: tuple[str, ...] = ()
    ) -> None:
        """See :meth:`Publisher.publish_chunk`."""
        rest, last = (chunk[:-1], chunk[-1]) if confirm else (chunk, None)
        for message in rest:
            await self.client.publish(
                message.topic,
                message.payload.encode("utf-8"),
                qos=_qos(message, qos1_prefixes),
                retain=message.retain,
                timeout=PUBLISH_TIMEOUT_S,
            )
        if last is not None:
            await _publish_barrier(self.client, last)

    def abandon(self) -> None:
        """Nothing the public API offers: aiomqtt keeps a timed-out attempt's socket open."""


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client inside ``client`` (aiomqtt 2 keeps it in the private ``_client``).

    Raises:
        TypeError: aiomqtt no longer holds a paho client there.
    """
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        raise TypeError(f"aiomqtt.Client._client is {type(inner).__name__}, not a paho client")
    return inner


def frame_publish(topic: str, payload: str, *, retain: bool, mqtt5: bool = False) -> bytes | None:
    """One QoS 0 PUBLISH packet (MQTT 3.1.1, or 5 with no properties), byte for byte paho's.

    Returns ``None`` for anything paho should check and frame itself (an empty or wildcard
    topic, sizes beyond MQTT's limits); the bridge's own topics never are.
    """
    topic_bytes = topic.encode("utf-8")
    payload_bytes = payload.encode("utf-8")
    remaining = 2 + len(topic_bytes) + len(payload_bytes) + (1 if mqtt5 else 0)
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
    # MQTT 5: a properties length of 0 follows the topic (QoS 0 has no packet identifier).
    return bytes(header) + topic_bytes + (b"\x00" if mqtt5 else b"") + payload_bytes


def paho_frame(topic: str, payload: str, *, retain: bool, mqtt5: bool = False) -> bytes:
    """The bytes paho itself queues for a QoS 0 publish (on a throwaway, unconnected client).

    Raises:
        AttributeError, TypeError, ValueError: paho's internals are not what the fast path needs.
    """
    inner = paho.Client(
        CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311
    )
    queued: list[bytes] = []

    def capture(_command: int, packet: bytes, *_args: object) -> int:
        queued.append(bytes(packet))
        return paho.MQTT_ERR_SUCCESS

    inner._sock = object()  # type: ignore[assignment] # noqa: SLF001 - "connected", for _send_publish
    inner._packet_queue = capture  # type: ignore[method-assign,assignment] # noqa: SLF001 - what paho would queue
    try:
        inner._send_publish(0, topic.encode(), payload.encode(), 0, retain)  # noqa: SLF001 - paho's framing
    finally:
        inner._sock = None  # noqa: SLF001 - paho closes its socket when collected
    (packet,) = queued
    return packet


# Framed by both on every check: a two-byte remaining length, non-ASCII, retained and not.
_SAMPLES: Final = (("twc3/garage/°C", "x" * 200, True), ("twc3/garage/event", "{}", False))


@cache
def _frames_match_paho() -> str | None:
    """``None`` when our frames equal paho's for MQTT 3.1.1 and 5, else what differs."""
    for mqtt5 in (False, True):
        for topic, payload, retain in _SAMPLES:
            try:
                theirs = paho_frame(topic, payload, retain=retain, mqtt5=mqtt5)
            except (AttributeError, TypeError, ValueError) as error:
                return f"paho's framing cannot be checked ({error})"
            if frame_publish(topic, payload, retain=retain, mqtt5=mqtt5) != theirs:
                return f"paho frames a PUBLISH differently (MQTT {'5' if mqtt5 else '3.1.1'})"
    return None


def _parameters(function: Callable[..., object]) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def fast_path_missing(client: aiomqtt.Client) -> str | None:
    """What :class:`FastPublisher` needs and ``client`` lacks, or ``None`` when all is there."""
    try:
        inner = paho_client(client)
    except TypeError as error:
        return str(error)
    expected = {"_packet_queue": _PACKET_QUEUE_PARAMETERS, "_sock_close": ()}
    for name, parameters in expected.items():
        method = getattr(inner, name, None)
        if not callable(method):
            return f"paho.Client has no {name}()"
        if _parameters(method) != parameters:
            return f"paho.Client.{name}() takes {_parameters(method)}, not {parameters}"
    # Without aiomqtt's socket writer, paho would write queued packets from inside our code.
    if inner.on_socket_register_write is None:
        return "aiomqtt no longer registers a socket writer with paho"
    for callback in (inner.on_connect, inner.on_disconnect):
        if callback is None or len(_parameters(callback) or ()) != _PAHO_V2_CONNECT_ARGS:
            return "aiomqtt no longer installs paho v2 on_connect / on_disconnect callbacks"
    if inner.protocol not in (paho.MQTTv31, paho.MQTTv311, paho.MQTTv5):
        return f"unknown MQTT protocol {inner.protocol!r}"
    return _frames_match_paho()


class FastPublisher:
    """Chunks framed here and queued on paho's send queue as one block, without awaiting.

    paho's ``publish`` costs ~30-40 µs per message (a lock and condition per message info, a
    socket send per packet); framing a chunk here and queueing it as one block costs ~2 µs per
    message and one send. aiomqtt registers a socket writer with paho, so what is queued here is
    written by the event loop. Messages paho must judge itself (and QoS 1 ones) go through paho's
    ``publish``, in order. Built before connecting: it wraps the paho callbacks to hear the broker.
    """

    name = "fast"

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._inner = paho_client(client)
        self.says = BrokerSays()
        self._listen()

    def _listen(self) -> None:
        """Record CONNACK's Maximum Packet Size and a DISCONNECT's reason, then call aiomqtt's own.

        aiomqtt 2's callbacks ignore ``properties`` and the DISCONNECT reason.
        """
        says, inner = self.says, self._inner
        aiomqtt_on_connect = inner.on_connect
        aiomqtt_on_disconnect = inner.on_disconnect

        def on_connect(*args: Any) -> None:  # noqa: ANN401 - paho's v2 callback signature
            says.connack_seen = True
            properties = args[4] if len(args) >= _PAHO_V2_CONNECT_ARGS else None
            size = getattr(properties, "MaximumPacketSize", None)
            if isinstance(size, int) and size > 0:
                says.maximum_packet_size = size
            if aiomqtt_on_connect is not None:
                aiomqtt_on_connect(*args)

        def on_disconnect(*args: Any) -> None:  # noqa: ANN401 - paho's v2 callback signature
            flags, reason = args[2], args[3]
            if not says.connack_seen:
                says.closed_before_connack = True
            if getattr(flags, "is_disconnect_packet_from_server", False) and reason is not None:
                says.disconnect_reason = str(reason)
                says.taken_over = getattr(reason, "value", None) == SESSION_TAKEN_OVER
            if aiomqtt_on_disconnect is not None:
                aiomqtt_on_disconnect(*args)

        inner.on_connect = on_connect
        inner.on_disconnect = on_disconnect

    def _queue_raw(self, block: bytes) -> None:
        inner = self._inner
        if inner.socket() is None:
            raise aiomqtt.MqttCodeError(paho.MQTT_ERR_NO_CONN, "Could not publish message")
        # Message id 0: no QoS 0 publish has one, so aiomqtt's on_publish finds nothing to wake.
        rc = inner._packet_queue(paho.PUBLISH, block, 0, 0, paho.MQTTMessageInfo(0))  # noqa: SLF001 - the fast path itself
        if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
            raise aiomqtt.MqttCodeError(rc, "Could not publish message")

    async def publish_chunk(
        self, chunk: Sequence[Message], *, confirm: bool = True, qos1_prefixes: tuple[str, ...] = ()
    ) -> None:
        """See :meth:`Publisher.publish_chunk`."""
        rest, last = (chunk[:-1], chunk[-1]) if confirm else (chunk, None)
        inner = self._inner
        mqtt5 = inner.protocol == paho.MQTTv5
        framed: list[bytes] = []
        for message in rest:
            qos = _qos(message, qos1_prefixes)
            if qos == 0:
                packet = frame_publish(message.topic, message.payload, retain=True, mqtt5=mqtt5)
                if packet is not None:
                    framed.append(packet)
                    continue
            if framed:  # what was framed goes first: order is kept
                self._queue_raw(b"".join(framed))
                framed = []
            info = inner.publish(
                message.topic, message.payload.encode("utf-8"), qos=qos, retain=message.retain
            )
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if framed:
            self._queue_raw(b"".join(framed))
        if last is not None:
            await _publish_barrier(self.client, last)

    def abandon(self) -> None:
        """Reset the failed attempt's socket through paho's ``_sock_close``.

        aiomqtt leaves the socket of an attempt that timed out open: a stalled broker that wakes
        up answers it, takes the session (same client id) from the live connection, and the
        attempt's "Unexpected disconnection" lands in a future nobody awaits. A reset (not a FIN,
        after which the broker would still read the queued CONNECT) ends it; ``_sock_close`` also
        tells aiomqtt to stop watching the socket.
        """
        inner = self._inner
        inner.on_connect = None
        inner.on_disconnect = None
        sock = inner.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        inner._sock_close()  # noqa: SLF001 - paho has no public "drop this socket now"


class PublisherChoice:
    """Which :class:`Publisher` each new client gets: ``auto`` (fast when it can) or ``plain``."""

    def __init__(self, setting: PublisherSetting = "auto") -> None:
        self.setting = setting
        self._warned = False

    def for_client(self, client: aiomqtt.Client) -> Publisher:
        """The publisher for ``client``; call before connecting (the fast one listens from then)."""
        if self.setting == "plain":
            return PlainPublisher(client)
        missing = fast_path_missing(client)
        if missing is None:
            return FastPublisher(client)
        if not self._warned:
            self._warned = True
            logger.warning(
                "MQTT: publishing through aiomqtt's plain API (slower; the broker's maximum "
                "packet size and disconnect reasons stay unknown): %s",
                missing,
            )
        return PlainPublisher(client)
