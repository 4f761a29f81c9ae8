"""Property: any JSON body a unit can send goes through the whole pipeline without an exception.

Arbitrary bodies for each endpoint (known keys with values of any JSON type, integers of any
size, bare ``nan``/``inf`` tokens, ``-0.0``, control characters and lone surrogates, nested
objects, random keys, a missing final brace) are answered by a fake unit to the bridge's real
:class:`~bridge.runtime.poller.ConnectorPoller`, built by :class:`~bridge.runtime.app.Bridge`
itself with Homie on and discovery in entity or device mode. Each unit answers a sequence of
bodies, so a field's type changes between polls. After every poll everything the outbox would
publish is rendered (the discovery configs are deferred until then) and checked: text that
encodes to UTF-8, topics without wildcards or NUL.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator, Mapping
from itertools import cycle
from pathlib import Path
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.adapters.twc import TwcClient
from bridge.core.config import BridgeConfig, ConnectorConfig
from bridge.core.models import ENDPOINTS, MODEL_FOR, Endpoint
from bridge.core.outbox import Outbox
from bridge.presentation.entities import ENTITIES
from bridge.runtime.app import Bridge


class Raw(str):
    """Text written into the body as it is: a bare token JSON has no value for."""

    __slots__ = ()


# Firmware's non-finite tokens (docs/device-api.md, 'Invalid JSON'), Python's, and an integer past
# the digit limit.
RAW_TOKENS = ("nan", "-nan", "inf", "-inf", "NaN", "Infinity", "-Infinity", "9" * 5000)
KNOWN_KEYS: Mapping[Endpoint, tuple[str, ...]] = {
    endpoint: tuple(
        dict.fromkeys(
            [*MODEL_FOR[endpoint].model_fields]
            + [e.field for e in ENTITIES if e.endpoint == endpoint]
        )
    )
    for endpoint in ENDPOINTS
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([2**64 - 1, -5, 0, 10**20, 7 * 10**10]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e20, 7e10, -0.0, 5e-324]),
    st.text(),  # any code point, control characters and lone surrogates included
    st.sampled_from(RAW_TOKENS).map(Raw),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn, endpoint: Endpoint) -> dict[str, Any]:
    """One body: some of the endpoint's known keys, then a few random ones."""
    keys = draw(st.lists(st.sampled_from(KNOWN_KEYS[endpoint]), max_size=12, unique=True))
    body = {key: draw(json_values) for key in keys}
    body.update(draw(st.dictionaries(st.text(max_size=80), json_values, max_size=4)))
    return body


def encode(value: object, *, ascii_only: bool = True) -> str:
    """JSON text, keeping Raw tokens bare and writing non-finite floats as firmware does.

    Without ``ascii_only`` strings carry their characters unescaped, lone surrogates included
    (they become invalid UTF-8 on the wire).
    """
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, float) and value != value:  # noqa: PLR0124 - the NaN test
        return "nan"
    if isinstance(value, float) and value in {float("inf"), float("-inf")}:
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ",".join(encode(item, ascii_only=ascii_only) for item in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{json.dumps(key, ensure_ascii=ascii_only)}:{encode(item, ascii_only=ascii_only)}"
            for key, item in value.items()
        )
        return "{" + ",".join(items) + "}"
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def raw_bodies(draw: st.DrawFn, endpoint: Endpoint) -> bytes:
    """A body as bytes: escaped, or raw UTF-8 (lone surrogates as invalid bytes), maybe cut."""
    text = encode(draw(bodies(endpoint)), ascii_only=draw(st.booleans()))
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        raw = raw.removesuffix(b"}")  # firmware sometimes omits the final brace
    return raw


unit_answers = st.fixed_dictionaries(
    {endpoint: st.lists(raw_bodies(endpoint), min_size=1, max_size=3) for endpoint in ENDPOINTS}
)


class ScriptedUnit:
    """Answers each endpoint with its bodies in turn, over and over."""

    def __init__(self, answers: Mapping[Endpoint, list[bytes]]) -> None:
        self._answers: dict[Endpoint, Iterator[bytes]] = {
            endpoint: cycle(bodies) for endpoint, bodies in answers.items()
        }

    async def fetch(self, endpoint: Endpoint) -> bytes:
        """The next body for ``endpoint``."""
        return next(self._answers[endpoint])

    async def aclose(self) -> None:
        """Nothing to close."""


async def _no_sleep(_seconds: float) -> None:
    return None


def check_and_drain(outbox: Outbox) -> int:
    """Render everything pending, check it could be published, and mark it sent."""
    messages = outbox.pending()
    for message in messages:
        assert not {"+", "#", "\x00"} & set(message.topic), message.topic
        assert message.topic
        message.topic.encode("utf-8")
        message.payload.encode("utf-8")  # raises on a lone surrogate
        outbox.mark_sent(message)
    return len(messages)


async def run_pipeline(
    answers: Mapping[Endpoint, list[bytes]], mode: str, configured_id: str | None, data_dir: Path
) -> tuple[Bridge, int]:
    """Poll a scripted unit through a real Bridge; returns it and how many messages it published."""
    connector: dict[str, object] = {"host": "unit.invalid"}
    if configured_id is not None:
        connector["id"] = configured_id
    config = BridgeConfig.model_validate(
        {
            "bridge": {"data_dir": str(data_dir)},
            "mqtt": {"host": "127.0.0.1"},
            "homeassistant": {"discovery": mode},
            "homie": {"enabled": True},
            "polling": dict.fromkeys(
                ("vitals_s", "vitals_idle_s", "lifetime_s", "wifi_status_s", "version_s"), 1
            ),
            "connectors": [connector],
        }
    )
    unit = ScriptedUnit(answers)

    def client(_connector: ConnectorConfig) -> TwcClient:
        return cast("TwcClient", unit)

    bridge = Bridge(config, client_factory=client)
    bridge.announcer.start()
    assert bridge.homie is not None
    bridge.homie.start()
    (poller,) = bridge.pollers
    poller._sleep = _no_sleep  # the test drives the poll loop as fast as it can
    published = check_and_drain(bridge.outbox)
    rounds = len(ENDPOINTS) * max(len(bodies) for bodies in answers.values()) + len(ENDPOINTS)
    for _ in range(rounds):
        await poller.poll_once()
        published += check_and_drain(bridge.outbox)
    return bridge, published


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    answers=unit_answers,
    mode=st.sampled_from(["entity", "device"]),
    configured_id=st.sampled_from([None, "garage"]),
)
def test_any_body_goes_through_parse_derive_publish_homie_and_discovery(
    answers: dict[Endpoint, list[bytes]], mode: str, configured_id: str | None
) -> None:
    """No exception anywhere, and every message is publishable text on a valid topic."""
    with tempfile.TemporaryDirectory() as data_dir:
        _, published = asyncio.run(run_pipeline(answers, mode, configured_id, Path(data_dir)))
    assert published > 0  # at least the bridge's own discovery and Homie device


def test_the_absurd_values_of_the_issue_go_through_the_pipeline() -> None:
    """The issue's cases, as one fixed example: they crashed the poller before."""
    vitals = {
        "uptime_s": 2**64 - 1,
        "grid_v": 1e308,
        "session_energy_wh": 1e308,
        "session_s": int("9" * 300),
        "evse_state": int("7" * 300),
        "contactor_closed": True,
        "vehicle_connected": True,
    }
    answers: dict[Endpoint, list[bytes]] = {
        "vitals": [json.dumps(vitals).encode(), json.dumps({**vitals, "uptime_s": 1e20}).encode()],
        "lifetime": [b'{"energy_wh":1e308,"uptime_s":-5,"avg_startup_temp":nan}'],
        "version": [b'{"serial_number":"A1\\n\\u001b[31m","firmware_version":7e10}'],
        "wifi_status": [b'{"wifi_rssi":' + b"9" * 400 + b',"wifi_ssid":{"nested":[1]}}'],
    }
    for mode, configured_id in (("entity", None), ("device", "garage")):
        with tempfile.TemporaryDirectory() as data_dir:
            bridge, _ = asyncio.run(run_pipeline(answers, mode, configured_id, Path(data_dir)))
        (poller,) = bridge.pollers
        assert poller.topics is not None
        root = poller.topics.root
        assert bridge.outbox.get(f"{root}/vitals/grid_v") == "1" + "0" * 308
        assert bridge.outbox.get(f"{root}/vitals/evse_state") == "7" * 300
        assert bridge.outbox.get(f"{root}/derived/last_boot") is None
        assert bridge.outbox.get(f"{root}/derived/energy_wh") == "0"
        assert bridge.outbox.get(f"{root}/availability") == "online"
