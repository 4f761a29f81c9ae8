"""The canary for the MQTT fast path: fails when the aiomqtt/paho internals it uses change."""

from __future__ import annotations

import re
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.adapters import mqtt_fastpath
from bridge.adapters.mqtt import make_client, publish_packet_bytes
from bridge.adapters.mqtt_fastpath import (
    FastPublisher,
    PlainPublisher,
    PublisherChoice,
    fast_path_missing,
    frame_publish,
    paho_client,
    paho_frame,
)
from bridge.core.config import MqttConfig

REPO = Path(__file__).resolve().parent.parent
# What reaching into a library looks like (the fast path's own door, and nowhere else).
INTERNALS = re.compile(r"\.(%s)\b" % "|".join(mqtt_fastpath.LIBRARY_INTERNALS))  # noqa: UP031


def client_for(*, mqtt5: bool) -> aiomqtt.Client:
    """A client that never connects (aiomqtt needs a running event loop to make one)."""
    return make_client(MqttConfig(host="127.0.0.1"), "test-canary", mqtt5=mqtt5)


# --- the internals are still there ---------------------------------------------------------------


@pytest.mark.parametrize("mqtt5", [False, True], ids=["3.1.1", "5"])
async def test_the_installed_aiomqtt_and_paho_have_what_the_fast_path_needs(mqtt5: bool) -> None:
    """If this fails, aiomqtt or paho changed: the bridge falls back to the plain publisher."""
    client = client_for(mqtt5=mqtt5)
    assert fast_path_missing(client) is None
    inner = paho_client(client)
    # aiomqtt must register a socket writer with paho, or a packet queued without awaiting
    # would be written synchronously from inside our code instead of by the event loop.
    assert inner.on_socket_register_write is not None
    assert PublisherChoice().for_client(client_for(mqtt5=mqtt5)).name == "fast"


def test_only_the_fast_path_module_reaches_into_library_internals() -> None:
    reaching = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "bridge").rglob("*.py")
        if INTERNALS.search(path.read_text(encoding="utf-8"))
    )
    assert reaching == ["bridge/adapters/mqtt_fastpath.py"]


# --- falling back --------------------------------------------------------------------------------


def crippled_client(monkeypatch: pytest.MonkeyPatch, sock_close: object) -> aiomqtt.Client:
    """A client whose paho client has ``sock_close`` for ``_sock_close``.

    Patched on the instance, which ``monkeypatch`` holds until it restores it: paho calls
    ``_sock_close`` when the client is collected.
    """
    client = client_for(mqtt5=False)
    monkeypatch.setattr(paho_client(client), "_sock_close", sock_close)
    return client


async def test_a_missing_internal_means_the_plain_publisher_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = fast_path_missing(crippled_client(monkeypatch, None))
    assert missing == "paho.Client has no _sock_close()"
    choice = PublisherChoice()
    publishers = [choice.for_client(crippled_client(monkeypatch, None)) for _ in range(3)]
    assert [p.name for p in publishers] == ["plain"] * 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "bridge.adapters.mqtt_fastpath"]
    assert len(warnings) == 1, warnings
    assert "plain API" in warnings[0]
    assert "_sock_close" in warnings[0]


async def test_a_changed_signature_means_the_plain_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def sock_close(how: int) -> None:  # noqa: ARG001 - only its signature counts
        raise AssertionError("never called")

    missing = fast_path_missing(crippled_client(monkeypatch, sock_close))
    assert missing == "paho.Client._sock_close() takes ('how',), not ()"
    assert PublisherChoice().for_client(crippled_client(monkeypatch, sock_close)).name == "plain"


async def test_an_aiomqtt_without_a_paho_client_means_the_plain_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = client_for(mqtt5=True)
    monkeypatch.setattr(client, "_client", object())
    missing = fast_path_missing(client)
    assert missing is not None
    assert "not a paho client" in missing
    assert isinstance(PublisherChoice().for_client(client), PlainPublisher)


async def test_frames_that_no_longer_match_paho_mean_the_plain_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mqtt_fastpath, "frame_publish", lambda *_a, **_k: b"\x30\x00")
    mqtt_fastpath._frames_match_paho.cache_clear()
    try:
        missing = fast_path_missing(client_for(mqtt5=False))
        assert missing == "paho frames a PUBLISH differently (MQTT 3.1.1)"
    finally:
        monkeypatch.undo()
        mqtt_fastpath._frames_match_paho.cache_clear()
    assert fast_path_missing(client_for(mqtt5=False)) is None


async def test_plain_is_plain_even_when_the_fast_path_could_run() -> None:
    publisher = PublisherChoice("plain").for_client(client_for(mqtt5=True))
    assert isinstance(publisher, PlainPublisher)
    assert publisher.says.maximum_packet_size is None  # unknown: nothing listens


async def test_the_fast_publisher_hears_the_broker_through_aiomqtt_callbacks() -> None:
    """The wrapped callbacks record the broker's facts and still call aiomqtt's own."""
    client = client_for(mqtt5=True)
    inner = paho_client(client)
    calls: list[int] = []

    class Properties:
        MaximumPacketSize = 16_384

    def aiomqtt_on_connect(*args: object) -> None:
        calls.append(len(args))

    # Replace aiomqtt's callback under ours: a fresh publisher wraps the one installed now.
    inner.on_connect = aiomqtt_on_connect
    publisher = FastPublisher(client)
    inner.on_connect(inner, None, None, 0, Properties())
    assert publisher.says.connack_seen
    assert publisher.says.maximum_packet_size == 16_384
    assert calls == [5]


# --- framing QoS 0 publishes ourselves ----------------------------------------------------------


@pytest.mark.parametrize("mqtt5", [False, True], ids=["3.1.1", "5"])
@pytest.mark.parametrize(
    ("topic", "payload", "retain"),
    [
        ("twc3/garage/vitals/grid_v", "230.1", True),
        ("twc3/garage/vitals/grid_v", "", True),  # a deletion
        ("twc3/garage/event", '{"type":"plugged_in"}', False),
        ("homeassistant/sensor/x/config", "x" * 200, True),  # two-byte remaining length
        ("t", "y" * 20_000, True),  # three-byte remaining length
        ("twc3/°C/ünïcode", "Grüße", True),
    ],
)
def test_our_publish_frames_are_byte_for_byte_paho_frames(
    topic: str, payload: str, retain: bool, mqtt5: bool
) -> None:
    ours = frame_publish(topic, payload, retain=retain, mqtt5=mqtt5)
    assert ours == paho_frame(topic, payload, retain=retain, mqtt5=mqtt5)
    # The link's size check counts the same bytes (plus a QoS 1 packet id, its worst case).
    assert ours is not None
    assert publish_packet_bytes(topic, payload, mqtt5=mqtt5) == len(ours) + 2


@given(
    topic=st.text(st.characters(blacklist_characters="+#\x00", blacklist_categories=["Cs"])),
    payload=st.text(st.characters(blacklist_categories=["Cs"])),
    retain=st.booleans(),
    mqtt5=st.booleans(),
)
def test_frames_match_paho_for_any_text(
    topic: str, payload: str, retain: bool, mqtt5: bool
) -> None:
    ours = frame_publish(topic, payload, retain=retain, mqtt5=mqtt5)
    if not topic:
        assert ours is None
    else:
        assert ours == paho_frame(topic, payload, retain=retain, mqtt5=mqtt5)


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "a\x00b", "t" * 70_000])
def test_topics_paho_must_judge_are_not_framed_by_us(topic: str) -> None:
    assert frame_publish(topic, "1", retain=True) is None


# --- the bench compares both ---------------------------------------------------------------------


def test_bench_can_measure_the_plain_publisher(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.sim import bench  # noqa: PLC0415 - the bench is imported by its command only
    from bridge.tools import cli  # noqa: PLC0415 - as the command line imports it

    async def reachable(*_: object) -> None:
        return None

    seen: dict[str, object] = {}

    async def run_bench(**arguments: object) -> dict[str, object]:
        seen.update(arguments)
        raise bench.BenchChildError("stopped here")

    monkeypatch.setattr(bench, "_broker_reachable", reachable)
    monkeypatch.setattr(bench, "run_bench", run_bench)
    argv = ["bench", "--broker", "127.0.0.1:1", "--units", "1", "--seconds", "1"]
    assert cli.main([*argv, "--publisher", "plain"]) == 1
    assert seen.pop("publisher") == "plain"
    assert cli.main(argv) == 1
    assert seen.pop("publisher") == "auto"
