"""The real bridge against misbehaving simulated units: broken bodies, a slow unit, HTTP 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridge.core.config import CONFIG_ENV, PASSWORD_ENV
from bridge.sim.simulator import Quirks, SimulatedUnit, UnitServer
from tests.conftest import Broker, collect_retained, subscriber, wait_for_retained

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]
BODY_ENDPOINTS = ("vitals", "lifetime", "version", "wifi_status")
NON_FINITE = frozenset({"nan", "-nan", "+nan", "inf", "-inf", "+inf", "infinity", "-infinity"})

# Requests to one unit are at least 1 s apart, so vitals get (almost) every second only while
# the other endpoints are rare.
POLLING = """
[polling]
vitals_s = 1
vitals_idle_s = 1
lifetime_s = 60
wifi_status_s = 60
version_s = 3600
connect_timeout_s = 1
read_timeout_s = 2
offline_after = 2
backoff_max_s = 2
"""


class RecordingUnit(SimulatedUnit):
    """A simulated unit that keeps every vitals body it served, to know what the bridge got."""

    def __init__(self, serial: str, **options: Any) -> None:
        super().__init__(serial, **options)
        self.served_vitals: list[bytes] = []

    def render(self, path: str) -> tuple[int, bytes]:
        """What the unit answers, remembered when it is a vitals body."""
        status, body = super().render(path)
        if path.startswith("/api/1/vitals"):
            self.served_vitals.append(body)
        return status, body


@dataclass(frozen=True)
class Unit:
    """A simulated unit, its topic id and extra ``[[connectors]]`` lines for it."""

    unit_id: str
    unit: SimulatedUnit
    connector_extra: str = ""


@dataclass
class Capture:
    """Every message a live ``twc3/#`` subscriber saw, retained or not, in order."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def payloads(self, topic: str) -> list[bytes]:
        """The payloads seen on one topic, oldest first."""
        return [payload for name, payload in self.messages if name == topic]


@dataclass
class Site:
    """The bridge process and what it was started with."""

    process: subprocess.Popen[bytes]
    log: Path
    capture: Capture

    def log_text(self) -> str:
        """Everything the bridge logged so far."""
        return self.log.read_text(errors="replace")


async def _record(client: aiomqtt.Client, capture: Capture) -> None:
    async for message in client.messages:
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
        capture.messages.append((str(message.topic), raw))


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m bridge run`` with its output going to ``log``."""
    env = {k: v for k, v in os.environ.items() if k not in {CONFIG_ENV, PASSWORD_ENV}}
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


@contextlib.asynccontextmanager
async def running_site(
    broker: Broker, tmp_path: Path, units: Sequence[Unit]
) -> AsyncIterator[Site]:
    """Serve ``units``, watch ``twc3/#`` live, and run the bridge on them until the block ends."""
    capture = Capture()
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(UnitServer(u.unit)) for u in units]
        client = await stack.enter_async_context(subscriber(broker.port, "twc3/#"))
        recorder = asyncio.create_task(_record(client, capture))
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'client_id = "faults-{os.getpid()}-{time.monotonic_ns()}"\nreconnect_max_s = 1\n'
            + POLLING
            + "".join(
                f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nid = "{u.unit_id}"\n'
                + u.connector_extra
                for u, server in zip(units, servers, strict=True)
            )
        )
        log = tmp_path / "bridge.log"
        process = start_bridge(config, log)
        try:
            yield Site(process, log, capture)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(process.wait, 10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await recorder


def strict_json_object(payload: str) -> dict[str, Any]:
    """Parse like a strict consumer would: NaN or Infinity are errors, not numbers."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    value = json.loads(payload, parse_constant=refuse)
    assert isinstance(value, dict), payload
    return value


def assert_no_empty_or_nan(found: dict[str, str]) -> None:
    for topic, payload in found.items():
        assert payload.strip() != "", topic
        assert payload.strip().lower() not in NON_FINITE, (topic, payload)


async def wait_for(condition: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {limit_s} s")
        await asyncio.sleep(0.1)


def quirky_null_seen(capture: Capture, topic: str) -> bool:
    return any(None in json.loads(p).values() for p in capture.payloads(topic) if p)


def uptime_values(capture: Capture, topic: str) -> list[str]:
    return [p.decode() for p in capture.payloads(topic)]


async def test_broken_bodies_and_slow_unit_do_not_hurt(broker: Broker, tmp_path: Path) -> None:
    """Bare nan and missing braces become clean JSON; a 4 s-slow unit never delays the others."""
    quirky = RecordingUnit("SIMFLT000001", seed=21, quirks=Quirks(nan=0.5, truncated=0.5))
    units = [
        Unit("quirky", quirky),
        Unit(
            "slow",
            SimulatedUnit("SIMFLT000002", seed=22, quirks=Quirks(slow_first_byte_s=4)),
            "read_timeout_s = 8\n",
        ),
        Unit("steady", SimulatedUnit("SIMFLT000003", seed=23)),
    ]
    async with asyncio.timeout(60), running_site(broker, tmp_path, units) as site:
        capture = site.capture
        await wait_for_retained(
            broker.port,
            lambda found: all(
                found.get(f"twc3/{unit_id}/availability") == "online"
                and all(f"twc3/{unit_id}/{endpoint}" in found for endpoint in BODY_ENDPOINTS)
                for unit_id in ("quirky", "steady")
            ),
            pattern="twc3/#",
        )
        # The slow unit answers one request every ~5 s: it is mid-request during this window.
        uptime_topic = "twc3/steady/vitals/uptime_s"
        seen_before = len(uptime_values(capture, uptime_topic))
        await asyncio.sleep(6)
        window = uptime_values(capture, uptime_topic)[seen_before:]
        assert len(set(window)) >= 3, window
        assert [int(value) for value in window] == sorted(int(value) for value in window)

        await wait_for(
            lambda: quirky_null_seen(capture, "twc3/quirky/vitals"), 15, "a null in quirky vitals"
        )
        await wait_for(
            lambda: b"online" in capture.payloads("twc3/slow/availability"),
            10,
            "the slow unit online (read_timeout_s = 8 covers its 4 s first byte)",
        )
        found = await collect_retained(broker.port, "twc3/#")
        assert site.process.poll() is None, site.log_text()

    assert_no_empty_or_nan(found)
    for topic, payload in capture.messages:
        text = payload.decode(errors="replace").strip()
        assert text != "", f"empty payload published on {topic}"
        assert text.lower() not in NON_FINITE, (topic, text)
    for unit_id in ("quirky", "steady"):
        for endpoint in BODY_ENDPOINTS:
            strict_json_object(found[f"twc3/{unit_id}/{endpoint}"])
    for payload in capture.payloads("twc3/quirky/vitals") + capture.payloads(
        "twc3/quirky/lifetime"
    ):
        strict_json_object(payload.decode())
    served = quirky.served_vitals
    assert [body for body in served if not body.endswith(b"}")], "no truncated body was served"
    nan_keys = {key.decode() for body in served for key in re.findall(rb'"(\w+)":nan', body)}
    null_keys = {
        key
        for payload in capture.payloads("twc3/quirky/vitals")
        for key, value in strict_json_object(payload.decode()).items()
        if value is None
    }
    assert null_keys, "no null in any published quirky vitals body"
    assert null_keys <= nan_keys, (null_keys, nan_keys)
    assert b"offline" not in capture.payloads("twc3/quirky/availability")
    assert found["twc3/quirky/availability"] == "online"
    assert found["twc3/quirky/poller/parse_errors"] == "0"  # the repairs are not errors
    assert found["twc3/slow/availability"] == "online"
    assert b"offline" not in capture.payloads("twc3/slow/availability")
    log = site.log_text()
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if "unit " in line and "offline" in line], log


async def test_http_500_unit_goes_offline_with_reason(broker: Broker, tmp_path: Path) -> None:
    """A unit answering only HTTP 500 turns offline, says why in last_error, and is logged once."""
    units = [
        Unit("broken", SimulatedUnit("SIMFLT000004", seed=24, quirks=Quirks(http_500=1.0))),
        Unit("steady", SimulatedUnit("SIMFLT000005", seed=25)),
    ]
    async with asyncio.timeout(60), running_site(broker, tmp_path, units) as site:
        found = await wait_for_retained(
            broker.port,
            lambda found: (
                found.get("twc3/broken/availability") == "offline"
                and found.get("twc3/steady/availability") == "online"
            ),
            pattern="twc3/#",
        )
        await asyncio.sleep(4)  # several more failed requests: still one log line
        later = await collect_retained(broker.port, "twc3/#")
        assert site.process.poll() is None, site.log_text()

    assert "HTTP 500" in found["twc3/broken/poller/last_error"]
    assert later["twc3/broken/availability"] == "offline"
    assert int(later["twc3/broken/poller/failed_requests"]) > int(
        found["twc3/broken/poller/failed_requests"]
    )
    assert not [topic for topic in later if topic.startswith("twc3/broken/vitals")]
    assert_no_empty_or_nan(later)
    log = site.log_text()
    offline_lines = [
        line for line in log.splitlines() if "unit broken" in line and "offline" in line
    ]
    assert len(offline_lines) == 1, log
    assert "HTTP 500" in offline_lines[0]
    assert log.count("HTTP 500 from vitals") == 1, log
    assert not [line for line in log.splitlines() if "unit steady" in line and "offline" in line]
    assert "Traceback" not in log
