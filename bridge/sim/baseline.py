"""The benchmark's yardstick: the bridge's job done by the plainest means, in a process of its own.

Run by ``twc3-bridge bench`` as ``python -m bridge.sim.baseline '<spec JSON>'``; it prints one JSON
line (its measured window) on stdout and exits. Per simulated unit, on the bridge's schedule:

* GET ``/api/1/vitals`` every vitals interval, and lifetime, wifi_status and version at their
  own intervals, over one keep-alive connection per unit parsed by ``h11`` (about thirty lines
  on asyncio streams: what a short script without the bridge's transport would write);
* ``json.loads`` the body;
* publish every field whose value changed since its last publish as its own retained topic
  ``<base>/<unit id>/<endpoint>/<field>`` with paho's public ``Client.publish`` (network loop in
  paho's own thread, ``loop_start``), at QoS 0 as the bridge sends retained values.

No discovery, no derived values, no state topic, no outbox. It imports only the standard
library, h11 and paho, so its memory is its own: this is one of the modules allowed to use an
MQTT library directly (see ``tests/test_layering.py``), on purpose.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import h11
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ENDPOINTS: Final = ("vitals", "lifetime", "wifi_status", "version")
HTTP_TIMEOUT_S: Final = 10.0
READ_CHUNK: Final = 65536
CONNECT_TIMEOUT_S: Final = 10.0
SETTLE_S: Final = 2.0  # after every unit's first full round, as the bench waits for the bridge
HTTP_OK: Final = 200


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection to one unit; any failure closes it."""

    def __init__(self, host_header: str, connect_to: tuple[str, int]) -> None:
        self._host = host_header
        self._connect_to = connect_to
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._h11 = h11.Connection(h11.CLIENT)

    async def get(self, path: str) -> bytes:
        if self._streams is None:
            self._streams = await asyncio.open_connection(*self._connect_to)
            self._h11 = h11.Connection(h11.CLIENT)
        reader, writer = self._streams
        request = h11.Request(method="GET", target=path, headers=[("Host", self._host)])
        writer.write(self._h11.send(request) + self._h11.send(h11.EndOfMessage()))
        status, body = 0, bytearray()
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(await reader.read(READ_CHUNK))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed, or anything a GET's answer should not hold
                raise ConnectionError(f"unexpected {type(event).__name__}")
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        else:
            self.close()
        if status != HTTP_OK:
            raise ConnectionError(f"HTTP {status}")
        return bytes(body)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


class _Counts:
    """What the window measures; ``sent`` is bumped by paho's network thread (one writer)."""

    def __init__(self) -> None:
        self.polls = 0
        self.sent = 0
        self.errors = 0

    def snapshot(self) -> dict[str, float]:
        return {
            "cpu": time.process_time(),
            "wall": time.monotonic(),
            "polls": self.polls,
            "sent": self.sent,
            "errors": self.errors,
        }


def _connect_mqtt(host: str, port: int, identifier: str, counts: _Counts) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=identifier)
    connected = threading.Event()

    def on_connect(*_: object) -> None:
        connected.set()

    def on_publish(*_: object) -> None:
        counts.sent += 1

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S):
        client.loop_stop()
        raise ConnectionError(f"no CONNACK from {host}:{port} within {CONNECT_TIMEOUT_S:.0f} s")
    return client


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that across ``execve``, so a child started by a big parent
    would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def _payload(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Baseline:
    """Every unit's polling loop, the last payload of each topic and the paho client."""

    def __init__(self, spec: dict[str, Any], mqtt: paho.Client, counts: _Counts) -> None:
        self._mqtt = mqtt
        self._counts = counts
        self._intervals: dict[str, float] = spec["intervals"]
        self._slots: int = spec["slots"]
        self._base: str = spec["base_topic"]
        self._connect_to = (spec["connect_to"][0], spec["connect_to"][1])
        self.last: dict[str, str] = {}
        self.first_round_done: set[int] = set()

    async def _fetch_and_publish(self, http: _HttpConnection, unit_id: str, endpoint: str) -> None:
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                body = await http.get(f"/api/1/{endpoint}")
            fields = json.loads(body)
        except (OSError, TimeoutError, h11.ProtocolError, ValueError):
            http.close()
            self._counts.errors += 1
            return
        if endpoint == "vitals":
            self._counts.polls += 1
        for key, value in fields.items():
            topic, payload = f"{self._base}/{unit_id}/{endpoint}/{key}", _payload(value)
            if self.last.get(topic) != payload:
                self._mqtt.publish(topic, payload, qos=0, retain=True)
                self.last[topic] = payload

    async def poll_unit(self, index: int, unit_id: str, host_header: str) -> None:
        """Poll one unit until cancelled: vitals each interval, the rest when due."""
        loop = asyncio.get_running_loop()
        http = _HttpConnection(host_header, self._connect_to)
        every = self._intervals["vitals"]
        tick = loop.time() + every * (index % self._slots) / self._slots  # as the bridge starts
        due = dict.fromkeys(ENDPOINTS, tick)
        try:
            while True:
                await asyncio.sleep(max(0.0, tick - loop.time()))
                for endpoint in ENDPOINTS:
                    if due[endpoint] <= loop.time():
                        due[endpoint] += self._intervals[endpoint]
                        await self._fetch_and_publish(http, unit_id, endpoint)
                self.first_round_done.add(index)
                tick += every
        finally:
            http.close()


async def run_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Poll and publish as the module docstring says; return the measured window's snapshots."""
    counts = _Counts()
    mqtt = _connect_mqtt(spec["host"], spec["port"], spec["identifier"], counts)
    baseline = _Baseline(spec, mqtt, counts)
    began = time.monotonic()
    units: list[list[str]] = spec["units"]  # [unit id, Host header]
    tasks = [asyncio.create_task(baseline.poll_unit(i, u, h)) for i, (u, h) in enumerate(units)]
    startup_s = float("nan")
    while time.monotonic() - began < spec["warmup_max_s"]:
        if len(baseline.first_round_done) == len(units):
            startup_s = time.monotonic() - began
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE_S)
    start = counts.snapshot()
    await asyncio.sleep(spec["seconds"])
    end = counts.snapshot()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    mqtt.disconnect()
    mqtt.loop_stop()
    return {
        "start": start,
        "end": end,
        "startup_s": startup_s,
        "peak_rss_mb": peak_rss_mb(),
        "topics": sorted(baseline.last),
    }


def main(argv: list[str]) -> int:
    """``python -m bridge.sim.baseline '<spec JSON>'``: run, print the result as one JSON line."""
    try:
        result = asyncio.run(run_baseline(json.loads(argv[0])))
    except (OSError, ConnectionError) as error:
        print(f"baseline: {error}", file=sys.stderr)  # noqa: T201 - a child's one-line error
        return 1
    print(json.dumps(result))  # noqa: T201 - the result goes to the parent on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
