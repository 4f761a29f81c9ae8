"""``twc3-bridge bench``: how many units one bridge process carries, and at what cost.

Three processes, so that the CPU and memory measured are the bridge's alone:

* a **simulator** child serves N :class:`~bridge.simulator.SimulatedUnit` on one free loopback
  port, routed by the ``Host`` header (:class:`~bridge.simulator.HostRoutedServer`): measured
  lighter than a port per unit (``scripts/simulator_routing.py``). Each unit is a connector named
  by its serial (``http://sim0000000001:<port>``); the bridge's clients connect to the one port
  (``http_transport(connect_to=...)``, standing in for a LAN's name service) and send that name;
* a **subscriber** child listens to ``<base>/+/vitals/uptime_s`` and timestamps every arrival;
* this process runs the real :class:`~bridge.app.Bridge` (then a bare baseline) and measures
  ``time.process_time()`` and ``ru_maxrss`` of itself. Its window begins 2 s after startup is
  over (every unit asked every endpoint, everything published; ``startup_s`` says when), so it
  measures the steady state, not the ~80 discovery configs a unit sent at first.

Change-to-message delay: a simulated unit's ``uptime_s`` is ``int(now - booted_at)`` on its
monotonic clock, so the value U first appears at ``origin + booted_at + U`` (CLOCK_MONOTONIC is
shared by all processes on Linux). The delay of a message carrying U is its arrival time at the
subscriber minus that moment: it includes the wait until the next poll (0-1 interval), the
HTTP request, the bridge's processing, the broker and the subscriber.

Two baselines run in the same process after the bridge, each doing the minimum per poll (GET
``/api/1/vitals``, ``json.loads``, publish the body once), on the bridge's schedule (units start
in ``START_SLOTS`` groups over the interval: waking an idle process costs more than a poll):

* **bare** (:mod:`bridge.baseline`): httpx's ``AsyncClient.get`` and an awaited aiomqtt publish,
  the libraries used as the shortest script would (the issue's yardstick);
* **matched**: the bridge's own :class:`~bridge.twc.TwcClient` and :class:`~bridge.mqtt.MqttLink`,
  so its ratio shows only the bridge's own work (parsing, derived values, one topic per field,
  discovery) on top of the same I/O.

Everything runs under a base topic and discovery prefix of its own (``twc3-bench-<pid>``), and the
retained topics the run created are deleted at the end, so a bench against a live broker leaves
Home Assistant and other runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bridge.app import START_SLOTS, Bridge
from bridge.baseline import run_bare
from bridge.config import (
    BridgeConfig,
    BridgeSection,
    ConnectorConfig,
    HomeAssistantConfig,
    MqttConfig,
    PollingConfig,
)
from bridge.models import Endpoint
from bridge.mqtt import MqttLink, MqttUnavailableError, delete_retained, subscribe
from bridge.mqtt_fastpath import PublisherSetting
from bridge.outbox import Message, Outbox
from bridge.twc import TwcClient, TwcError, http_transport

LONG_INTERVAL_S: Final = 3600.0
CHILD_START_TIMEOUT_S: Final = 120.0
BASELINE_WARMUP_S: Final = 3.0
# Per process: two benches on one broker must not share topics or client ids.
RUN_ID: Final = f"twc3-bench-{os.getpid()}"
BASE_TOPIC: Final = RUN_ID
DISCOVERY_PREFIX: Final = f"{RUN_ID}-homeassistant"
BASELINES: Final = ("bare", "matched")
LOOPBACK: Final = "127.0.0.1"
SIMULATOR_ROUTING: Final = "one port, routed by Host header"


@dataclasses.dataclass(frozen=True, slots=True)
class _Units:
    """The simulated units as every measured client reaches them."""

    urls: list[str]  # http://<serial>:<port>, one per unit
    connect_to: tuple[str, int]  # the simulator's one listening address

    def client(self, url: str) -> TwcClient:
        return TwcClient(url, transport=http_transport(connect_to=self.connect_to))


# ---- child processes -------------------------------------------------------------------------


def _wait_readable(conn: multiprocessing.connection.Connection) -> asyncio.Event:
    """An event set as soon as the parent writes to ``conn`` (its stop request)."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    loop.add_reader(conn.fileno(), event.set)
    return event


async def _simulator_main(conn: multiprocessing.connection.Connection, units: int) -> None:
    from bridge.simulator import (  # noqa: PLC0415 - only the child needs the simulator
        HostRoutedServer,
        bench_units,
    )

    simulated = bench_units(units)
    async with HostRoutedServer(simulated, host=LOOPBACK) as server:
        # The monotonic moment uptime_s was 0 (speed 1): uptime U first shows at tick + U.
        ticks = [
            (unit.serial.lower(), unit._clock_origin + unit._booted_at)  # noqa: SLF001 - the clock
            for unit in simulated
        ]
        conn.send((server.port, ticks))
        await _wait_readable(conn).wait()


def _simulator_child(conn: multiprocessing.connection.Connection, units: int) -> None:
    asyncio.run(_simulator_main(conn, units))


async def _subscriber_main(
    conn: multiprocessing.connection.Connection, host: str, port: int, base_topic: str
) -> None:
    records: list[tuple[float, str, bytes]] = []
    config = MqttConfig(host=host, port=port)
    async with subscribe(
        config, [f"{base_topic}/+/vitals/uptime_s"], identifier=f"{base_topic}-subscriber"
    ) as subscription:

        async def collect() -> None:
            while True:
                message = await subscription.next()
                if not message.retained:
                    records.append((time.monotonic(), message.topic, message.payload))

        stop = _wait_readable(conn)
        conn.send("ready")
        collector = asyncio.ensure_future(collect())
        await stop.wait()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttUnavailableError):
            await collector
    conn.recv()
    conn.send(records)


def _subscriber_child(
    conn: multiprocessing.connection.Connection, host: str, port: int, base_topic: str
) -> None:
    asyncio.run(_subscriber_main(conn, host, port, base_topic))


class BenchChildError(Exception):
    """A child process of the bench died or did not answer; the message says which."""


class _Child:
    """A spawned child process talking over a pipe; stopped by sending it anything."""

    def __init__(self, target: Callable[..., None], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        name = getattr(target, "__name__", "child").strip("_").replace("_", " ")
        self.process = context.Process(
            target=target, args=(child_conn, *args), daemon=True, name=f"the bench's {name}"
        )
        self.process.start()
        child_conn.close()

    def receive(self, timeout_s: float = CHILD_START_TIMEOUT_S) -> Any:  # noqa: ANN401 - pickled
        name = self.process.name
        try:
            if not self.conn.poll(timeout_s):
                raise BenchChildError(f"{name} did not answer within {timeout_s:.0f} s")
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            raise BenchChildError(
                f"{name} stopped (exit code {self.process.exitcode}); its error is above"
            ) from None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# ---- counting wrappers (no change to the bridge's behaviour) -----------------------------------


class _CountingClient(TwcClient):
    """A :class:`TwcClient` that counts successful vitals reads and failures."""

    def __init__(self, base_url: str, counts: dict[str, int], units: _Units) -> None:
        super().__init__(base_url, transport=http_transport(connect_to=units.connect_to))
        self._counts = counts

    async def fetch(self, endpoint: Endpoint | str) -> bytes:
        try:
            body = await super().fetch(endpoint)
        except TwcError:
            self._counts["errors"] += 1
            raise
        if endpoint == "vitals":
            self._counts["vitals"] += 1
        return body


def _count_sent(outbox: Outbox, counts: dict[str, int]) -> None:
    """Count every message the link marks as sent (one per completed publish)."""
    original = outbox.mark_sent

    def mark_sent(message: Message) -> None:
        counts["sent"] += 1
        original(message)

    outbox.mark_sent = mark_sent  # type: ignore[method-assign]


@dataclasses.dataclass
class _Window:
    cpu: float
    wall: float
    polls: int
    sent: int
    errors: int

    @classmethod
    def now(cls, counts: dict[str, int]) -> _Window:
        return cls(
            time.process_time(),
            time.monotonic(),
            counts["vitals"],
            counts["sent"],
            counts["errors"],
        )


async def _measured(
    counts: dict[str, int], seconds: float, *, warmup_s: float
) -> tuple[_Window, _Window]:
    """After ``warmup_s``, the counters and clocks at the start and end of ``seconds``."""
    await asyncio.sleep(warmup_s)
    start = _Window.now(counts)
    await asyncio.sleep(seconds)
    return start, _Window.now(counts)


def _figures(start: _Window, end: _Window) -> dict[str, float]:
    wall = end.wall - start.wall
    cpu = end.cpu - start.cpu
    polls = end.polls - start.polls
    return {
        "window_s": round(wall, 2),
        "polls": polls,
        "polls_per_s": round(polls / wall, 1),
        "cpu_s": round(cpu, 3),
        "cpu_percent": round(100 * cpu / wall, 1),
        "cpu_ms_per_poll": round(1000 * cpu / polls, 3) if polls else float("nan"),
        "cpu_s_per_1000_polls": round(1000 * cpu / polls, 3) if polls else float("nan"),
        "mqtt_msgs": end.sent - start.sent,
        "mqtt_msgs_per_s": round((end.sent - start.sent) / wall, 1),
        "http_errors": end.errors - start.errors,
    }


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---- the two measured phases ---------------------------------------------------------------------


def _bridge_config(
    units: _Units,
    *,
    host: str,
    port: int,
    interval: float,
    data_dir: Path,
    discovery: str,
    publisher: PublisherSetting = "auto",
) -> BridgeConfig:
    return BridgeConfig(
        bridge=BridgeSection(data_dir=data_dir),
        mqtt=MqttConfig(
            host=host, port=port, base_topic=BASE_TOPIC, client_id=RUN_ID, publisher=publisher
        ),
        homeassistant=HomeAssistantConfig(discovery=discovery, discovery_prefix=DISCOVERY_PREFIX),
        polling=PollingConfig(
            vitals_s=interval,
            vitals_idle_s=interval,
            lifetime_s=LONG_INTERVAL_S,
            wifi_status_s=LONG_INTERVAL_S,
            version_s=LONG_INTERVAL_S,
        ),
        connectors=[
            ConnectorConfig(host=url.removeprefix("http://"), id=f"bench{index:04d}")
            for index, url in enumerate(units.urls, start=1)
        ],
    )


async def _measure_bridge(
    config: BridgeConfig, units: _Units, seconds: float, warmup_max_s: float
) -> tuple[dict[str, float], float, float, list[str]]:
    counts = {"vitals": 0, "sent": 0, "errors": 0}
    bridge = Bridge(
        config,
        client_factory=lambda c: _CountingClient(c.base_url, counts, units),
        freeze_heap_when_settled=True,  # as twc3-bridge run does
    )
    _count_sent(bridge.outbox, counts)
    stop = asyncio.Event()
    began = time.monotonic()
    task = asyncio.create_task(bridge.run(stop))
    # Warm-up: every unit read all four endpoints once and the broker has everything the startup
    # produced (~80 discovery configs a unit), then 2 s more: the window measures steady state.
    startup_s = float("nan")
    for _ in range(int(warmup_max_s / 0.1)):
        if (
            bridge.settled()
            and all(p.status.online for p in bridge.pollers)
            and not bridge.outbox.pending(1)
        ):
            startup_s = time.monotonic() - began
            break
        await asyncio.sleep(0.1)
    start, end = await _measured(counts, seconds, warmup_s=2.0)
    stop.set()
    await task
    created = [*bridge.outbox.retained_topics(), bridge.state_topic]
    figures = _figures(start, end)
    figures["startup_s"] = round(startup_s, 1)
    return figures, start.wall, end.wall, created


async def _measure_matched_baseline(
    units: _Units, host: str, port: int, interval: float, seconds: float
) -> tuple[dict[str, float], list[str]]:
    counts = {"vitals": 0, "sent": 0, "errors": 0}
    outbox = Outbox()
    _count_sent(outbox, counts)
    prefix = f"{RUN_ID}-matched"
    link = MqttLink(
        MqttConfig(host=host, port=port, client_id=prefix), outbox, state_topic=f"{prefix}/state"
    )
    clients = [units.client(url) for url in units.urls]
    stop = asyncio.Event()

    async def poll(index: int, client: TwcClient) -> None:
        topic = f"{prefix}/{index}/vitals"
        await asyncio.sleep(interval * (index % START_SLOTS) / START_SLOTS)  # as the bridge
        while True:
            started = time.monotonic()
            try:
                body = await client.fetch("vitals")
                json.loads(body)
            except (TwcError, ValueError):
                counts["errors"] += 1
            else:
                counts["vitals"] += 1
                outbox.put(topic, body.decode())
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    link_task = asyncio.create_task(link.run(stop))
    pollers = [asyncio.create_task(poll(i, c)) for i, c in enumerate(clients)]
    start, end = await _measured(counts, seconds, warmup_s=BASELINE_WARMUP_S)
    for task in pollers:
        task.cancel()
    await asyncio.gather(*pollers, return_exceptions=True)
    stop.set()
    await link_task
    for client in clients:
        await client.aclose()
    return _figures(start, end), [*outbox.retained_topics(), f"{prefix}/state"]


async def _measure_bare_baseline(
    units: _Units, host: str, port: int, interval: float, seconds: float
) -> tuple[dict[str, float], list[str]]:
    counts = {"vitals": 0, "sent": 0, "errors": 0}
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_bare(
            units.urls,
            connect_to=units.connect_to,
            host=host,
            port=port,
            interval=interval,
            identifier=f"{RUN_ID}-bare",
            counts=counts,
            stop=stop,
            slots=START_SLOTS,
        )
    )
    start, end = await _measured(counts, seconds, warmup_s=BASELINE_WARMUP_S)
    stop.set()
    await task
    return _figures(start, end), []  # it publishes nothing retained


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _delays(
    records: list[tuple[float, str, bytes]], ticks: dict[str, float], start: float, end: float
) -> list[float]:
    delays = []
    for arrival, topic, payload in records:
        if not start <= arrival <= end:
            continue
        unit_id = topic.split("/")[1]
        tick = ticks.get(unit_id)
        if tick is None or not payload.isdigit():
            continue
        delays.append(arrival - (tick + int(payload)))
    return delays


async def run_bench(
    *,
    units: int,
    seconds: float,
    host: str,
    port: int,
    interval: float = 1.0,
    discovery: str = "entity",
    publisher: PublisherSetting = "auto",
    warmup_max_s: float = 60.0,
    baselines: tuple[str, ...] = BASELINES,
) -> dict[str, Any]:
    """Run the bridge, then each baseline, against ``units`` simulated units; return the figures."""
    simulator = _Child(_simulator_child, units)
    subscriber: _Child | None = None
    created: list[str] = []
    try:
        simulator_port, unit_ticks = simulator.receive()
        simulated = _Units(
            urls=[f"http://{name}:{simulator_port}" for name, _ in unit_ticks],
            connect_to=(LOOPBACK, simulator_port),
        )
        ticks = {f"bench{i:04d}": tick for i, (_, tick) in enumerate(unit_ticks, start=1)}
        # Passed on: the child's own RUN_ID would carry its own process id.
        subscriber = _Child(_subscriber_child, host, port, BASE_TOPIC)
        subscriber.receive()
        with tempfile.TemporaryDirectory(prefix="twc3-bench-") as data_dir:
            config = _bridge_config(
                simulated,
                host=host,
                port=port,
                interval=interval,
                data_dir=Path(data_dir),
                discovery=discovery,
                publisher=publisher,
            )
            bridge, start, end, created = await _measure_bridge(
                config, simulated, seconds, warmup_max_s
            )
        bridge["peak_rss_mb"] = _rss_mb()
        subscriber.conn.send("stop")
        records: list[tuple[float, str, bytes]] = subscriber.receive()
        delays = _delays(records, ticks, start, end)
        bridge["latency_samples"] = len(delays)
        bridge["change_to_message_p50_s"] = round(_percentile(delays, 0.50), 3)
        bridge["change_to_message_p99_s"] = round(_percentile(delays, 0.99), 3)
        bridge["change_to_message_max_s"] = round(max(delays, default=float("nan")), 3)
        result: dict[str, Any] = {
            "units": units,
            "seconds": seconds,
            "interval_s": interval,
            "discovery": discovery,
            "broker": f"{host}:{port}",
            "simulator": SIMULATOR_ROUTING,
            "bridge": bridge,
        }
        measure = {"bare": _measure_bare_baseline, "matched": _measure_matched_baseline}
        for name in baselines:
            figures, topics = await measure[name](simulated, host, port, interval, seconds)
            created += topics
            result[f"baseline_{name}"] = figures
            if figures["polls"] and bridge["polls"]:
                result[f"cpu_per_poll_ratio_{name}"] = round(
                    bridge["cpu_ms_per_poll"] / figures["cpu_ms_per_poll"], 2
                )
        return result
    finally:
        if subscriber is not None:
            subscriber.stop()
        simulator.stop()
        if created:
            await _clean_up(host, port, created)


async def _clean_up(host: str, port: int, topics: list[str]) -> None:
    """Delete the retained topics the run created; a broker gone by now only gets a warning."""
    config = MqttConfig(host=host, port=port)
    try:
        await delete_retained(config, sorted(set(topics)), identifier=f"{RUN_ID}-cleanup")
    except MqttUnavailableError as error:
        logging.getLogger(__name__).warning(
            "bench: could not delete its %d retained topics: %s", len(set(topics)), error
        )


def format_table(result: dict[str, Any]) -> str:
    """The figures as a small text table: the bridge, then each baseline that ran."""
    bridge = result["bridge"]
    names = [name for name in BASELINES if f"baseline_{name}" in result]
    columns = [bridge, *(result[f"baseline_{name}"] for name in names)]

    def row(label: str, key: str, unit: str = "") -> str:
        cells = [f"{column[key]!s}{unit}" if key in column else "" for column in columns]
        return f"{label:26}" + "".join(f"{cell:>14}" for cell in cells)

    lines = [f"{'':26}" + "".join(f"{h:>14}" for h in ["bridge", *(f"{n} base" for n in names)])]
    lines.append(f"{'units / interval':26}{result['units']:>14} / {result['interval_s']} s")
    lines += [
        row("window", "window_s", " s"),
        row("polls/s (vitals)", "polls_per_s"),
        row("CPU % of one core", "cpu_percent"),
        row("CPU s / 1000 polls", "cpu_s_per_1000_polls"),
        row("MQTT msgs/s", "mqtt_msgs_per_s"),
        row("HTTP errors", "http_errors"),
        row("peak RSS MB", "peak_rss_mb"),
        row("change->message p50 s", "change_to_message_p50_s"),
        row("change->message p99 s", "change_to_message_p99_s"),
        row("latency samples", "latency_samples"),
        row("startup (all published) s", "startup_s"),
    ]
    for name in names:
        ratio = result.get(f"cpu_per_poll_ratio_{name}", "n/a")
        lines.append(f"{f'CPU per poll / {name}':26}{ratio!s:>14}")
    lines.append(
        f"discovery: {result['discovery']}, broker {result['broker']},"
        f" simulator: {result['simulator']}"
    )
    return "\n".join(lines)


async def _broker_reachable(host: str, port: int) -> str | None:
    """``None`` if the broker takes a connection, else the one-line reason."""
    try:
        async with subscribe(MqttConfig(host=host, port=port), [], identifier=f"{RUN_ID}-check"):
            return None
    except MqttUnavailableError as error:
        return str(error)


def bench_main(
    *,
    units: int,
    seconds: float,
    host: str,
    port: int,
    interval: float,
    json_path: Path | None,
    discovery: str,
    baselines: tuple[str, ...] = BASELINES,
    publisher: PublisherSetting = "auto",
) -> int:
    """Run the benchmark, print the table, optionally write the JSON; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = asyncio.run(_broker_reachable(host, port))
    if problem is not None:
        print(f"error: cannot use the broker {host}:{port}: {problem}", file=sys.stderr)  # noqa: T201
        return 1
    try:
        result = asyncio.run(
            run_bench(
                units=units,
                seconds=seconds,
                host=host,
                port=port,
                interval=interval,
                discovery=discovery,
                baselines=baselines,
                publisher=publisher,
            )
        )
    except BenchChildError as error:
        print(f"error: bench: {error}", file=sys.stderr)  # noqa: T201
        return 1
    print(format_table(result))  # noqa: T201 - the command's output
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            print(f"error: cannot write {json_path}: {error.strerror or error}", file=sys.stderr)  # noqa: T201
            return 1
    return 0
