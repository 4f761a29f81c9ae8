"""``twc3-bridge bench``: how many units one bridge process carries, and at what cost.

Every party runs in a process of its own, so that the CPU and memory measured are a subject's
alone and neither subject inherits the other's heap, imports or ``gc.freeze()``:

* a **simulator** child serves N :class:`~bridge.sim.simulator.SimulatedUnit` on one free loopback
  port, routed by the ``Host`` header (:class:`~bridge.sim.simulator.HostRoutedServer`): measured
  lighter than a port per unit (``scripts/simulator_routing.py``). Each unit is a connector named
  by its serial (``http://sim0000000001:<port>``); the subjects connect to the one port (standing
  in for a LAN's name service) and send that name;
* a **subscriber** child listens to ``<base>/+/vitals/uptime_s`` of both subjects and timestamps
  every arrival;
* the two **subjects**, each a fresh ``python -m`` process started for one repetition: the real
  :class:`~bridge.runtime.app.Bridge` (``python -m bridge.sim.bench``, with
  ``freeze_heap_when_settled`` as ``twc3-bridge run`` does), and the plain program of
  :mod:`bridge.sim.baseline` doing the same job
  (every endpoint at the bridge's intervals, every changed field its own retained topic at
  QoS 0) with h11 and paho's public ``publish``. Repetitions alternate (bridge, baseline,
  bridge, baseline...) so that a load that comes and goes on the machine falls on both; the
  report gives the median of each figure and its range.

A subject measures its own window: it waits until startup is over (every unit asked every
endpoint; for the bridge, everything published, ``startup_s`` says when), 2 s more, then reads
``time.process_time()`` (all its threads) and its counters at the start and end of the window,
and its peak RSS (``VmHWM``: its own, where ``ru_maxrss`` survives ``exec``) at the end. It
prints them as one JSON line and exits; this process turns them into figures.

Change-to-message delay: a simulated unit's ``uptime_s`` is ``int(now - booted_at)`` on its
monotonic clock, so the value U first appears at ``origin + booted_at + U`` (CLOCK_MONOTONIC is
shared by all processes on Linux). The delay of a message carrying U is its arrival time at the
subscriber minus that moment: it includes the wait until the next poll (0-1 interval), the
HTTP request, the subject's processing, the broker and the subscriber.

Everything runs under topics of its own (``twc3-bench-<pid>``), and the retained topics a
subject created are deleted after each of its runs (so every run starts on the same broker), so
a bench against a live broker leaves Home Assistant and other runs alone.

The former "matched" baseline (the bridge's own HTTP client and MQTT link publishing one
message per poll, in the bridge's process) is gone: it measured a job the bridge does not do,
and the plain baseline now does the bridge's job in a process of its own.
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
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bridge.adapters.mqtt import MqttUnavailableError, delete_retained, subscribe
from bridge.adapters.mqtt_fastpath import PublisherSetting
from bridge.adapters.twc import TwcClient, TwcError, http_transport
from bridge.core.config import (
    BridgeConfig,
    BridgeSection,
    ConnectorConfig,
    HomeAssistantConfig,
    MqttConfig,
    PollingConfig,
)
from bridge.core.models import Endpoint
from bridge.core.outbox import Message, Outbox
from bridge.presentation.topics import TopicLayout
from bridge.runtime.app import NOT_FOUND_URL, START_SLOTS, Bridge
from bridge.sim.baseline import peak_rss_mb

LONG_INTERVAL_S: Final = 3600.0
CHILD_START_TIMEOUT_S: Final = 120.0
SUBJECT_SPARE_S: Final = 180.0  # a subject's run may take this long beyond warm-up and window
SETTLE_S: Final = 2.0
# Per process: two benches on one broker must not share topics or client ids.
RUN_ID: Final = f"twc3-bench-{os.getpid()}"
BASE_TOPIC: Final = RUN_ID
BASELINE_BASE_TOPIC: Final = f"{RUN_ID}-baseline"
DISCOVERY_PREFIX: Final = f"{RUN_ID}-homeassistant"
SUBJECTS: Final = ("bridge", "baseline")
SUBJECT_MODULES: Final = {"bridge": "bridge.sim.bench", "baseline": "bridge.sim.baseline"}
LOOPBACK: Final = "127.0.0.1"
SIMULATOR_ROUTING: Final = "one port, routed by Host header"
DEFAULT_REPEAT: Final = 3


@dataclasses.dataclass(frozen=True, slots=True)
class _Units:
    """The simulated units as every subject reaches them."""

    names: list[str]  # the Host header of each unit (its serial, lower case)
    port: int  # the simulator's one listening port on LOOPBACK
    ticks: dict[str, float]  # unit id -> monotonic moment its uptime_s was 0

    @property
    def ids(self) -> list[str]:
        return [f"bench{index:04d}" for index in range(1, len(self.names) + 1)]


# ---- child processes -------------------------------------------------------------------------


def _wait_readable(conn: multiprocessing.connection.Connection) -> asyncio.Event:
    """An event set as soon as the parent writes to ``conn`` (its stop request)."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    loop.add_reader(conn.fileno(), event.set)
    return event


async def _simulator_main(conn: multiprocessing.connection.Connection, units: int) -> None:
    from bridge.sim.simulator import (  # noqa: PLC0415 - only the child needs the simulator
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
    conn: multiprocessing.connection.Connection,
    host: str,
    port: int,
    topics: list[str],
    identifier: str,
) -> None:
    records: list[tuple[float, str, bytes]] = []
    config = MqttConfig(host=host, port=port)
    async with subscribe(config, topics, identifier=f"{identifier}-subscriber") as subscription:

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
    conn: multiprocessing.connection.Connection,
    host: str,
    port: int,
    topics: list[str],
    identifier: str,
) -> None:
    asyncio.run(_subscriber_main(conn, host, port, topics, identifier))


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


# ---- the bridge as a subject (python -m bridge.sim.bench '<spec>') ------------------------------


class _CountingClient(TwcClient):
    """A :class:`TwcClient` that counts successful vitals reads and failures."""

    def __init__(self, base_url: str, counts: dict[str, int], connect_to: tuple[str, int]) -> None:
        super().__init__(base_url, transport=http_transport(connect_to=connect_to))
        self._counts = counts

    async def fetch(self, endpoint: Endpoint | str) -> bytes:
        try:
            body = await super().fetch(endpoint)
        except TwcError:
            self._counts["errors"] += 1
            raise
        if endpoint == "vitals":
            self._counts["polls"] += 1
        return body


def _count_sent(outbox: Outbox, counts: dict[str, int]) -> None:
    """Count every message the link marks as sent (one per completed publish)."""
    original = outbox.mark_sent

    def mark_sent(message: Message) -> None:
        counts["sent"] += 1
        original(message)

    outbox.mark_sent = mark_sent  # type: ignore[method-assign]


def _snapshot(counts: dict[str, int]) -> dict[str, float]:
    return {"cpu": time.process_time(), "wall": time.monotonic(), **counts}


def _bridge_config(spec: dict[str, Any], data_dir: Path) -> BridgeConfig:
    intervals = spec["intervals"]
    port = spec["connect_to"][1]
    return BridgeConfig(
        bridge=BridgeSection(data_dir=data_dir),
        mqtt=MqttConfig(
            host=spec["host"],
            port=spec["port"],
            base_topic=spec["base_topic"],
            client_id=spec["identifier"],
            publisher=spec["publisher"],
        ),
        homeassistant=HomeAssistantConfig(
            discovery=spec["discovery"], discovery_prefix=spec["discovery_prefix"]
        ),
        polling=PollingConfig(
            vitals_s=intervals["vitals"],
            vitals_idle_s=intervals["vitals"],
            lifetime_s=intervals["lifetime"],
            wifi_status_s=intervals["wifi_status"],
            version_s=intervals["version"],
        ),
        connectors=[
            ConnectorConfig(host=f"{name}:{port}", id=unit_id) for unit_id, name in spec["units"]
        ],
    )


async def run_bridge_subject(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the real bridge on ``spec`` (as the baseline takes it); return its window."""
    counts = {"polls": 0, "sent": 0, "errors": 0}
    connect_to = (spec["connect_to"][0], spec["connect_to"][1])
    with tempfile.TemporaryDirectory(prefix="twc3-bench-") as data_dir:
        bridge = Bridge(
            _bridge_config(spec, Path(data_dir)),
            client_factory=lambda c: _CountingClient(
                c.base_url or NOT_FOUND_URL, counts, connect_to
            ),
            freeze_heap_when_settled=True,  # as twc3-bridge run does
        )
        _count_sent(bridge.outbox, counts)
        stop = asyncio.Event()
        began = time.monotonic()
        task = asyncio.create_task(bridge.run(stop))
        # Warm-up: every unit read all four endpoints once and the broker has everything the
        # startup produced (~80 discovery configs a unit), then 2 s more: steady state.
        startup_s = float("nan")
        # Bounded by the clock, not by a count of 0.1 s naps: a saturated loop naps longer.
        while time.monotonic() - began < spec["warmup_max_s"]:
            if task.done():
                break
            if (
                bridge.settled()
                and all(p.status.online for p in bridge.pollers)
                and not bridge.outbox.pending(1)
            ):
                startup_s = time.monotonic() - began
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(SETTLE_S)
        start = _snapshot(counts)
        await asyncio.sleep(spec["seconds"])
        end = _snapshot(counts)
        stop.set()
        await task
    return {
        "start": start,
        "end": end,
        "startup_s": startup_s,
        "peak_rss_mb": peak_rss_mb(),
        "topics": sorted({*bridge.outbox.retained_topics(), bridge.state_topic}),
    }


def _bridge_subject_main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run_bridge_subject(json.loads(argv[0])))
    print(json.dumps(result))  # noqa: T201 - the result goes to the parent on stdout
    return 0


# ---- running subjects and summing up ------------------------------------------------------------


def _subject_spec(
    subject: str,
    units: _Units,
    *,
    host: str,
    port: int,
    interval: float,
    seconds: float,
    discovery: str,
    warmup_max_s: float,
    publisher: PublisherSetting,
) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "identifier": f"{RUN_ID}-{subject}",
        "base_topic": BASE_TOPIC if subject == "bridge" else BASELINE_BASE_TOPIC,
        "discovery": discovery,
        "publisher": publisher,
        "discovery_prefix": DISCOVERY_PREFIX,
        "units": [list(pair) for pair in zip(units.ids, units.names, strict=True)],
        "connect_to": [LOOPBACK, units.port],
        "intervals": {
            "vitals": interval,
            "lifetime": LONG_INTERVAL_S,
            "wifi_status": LONG_INTERVAL_S,
            "version": LONG_INTERVAL_S,
        },
        "slots": START_SLOTS,
        "seconds": seconds,
        "warmup_max_s": warmup_max_s,
    }


async def _run_subject(subject: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one subject's process to its end; its result, or BenchChildError in one line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SUBJECT_MODULES[subject],
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    timeout_s = spec["warmup_max_s"] + spec["seconds"] + SUBJECT_SPARE_S
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        message = f"the {subject} process did not finish within {timeout_s:.0f} s"
        raise BenchChildError(message) from None
    lines = out.decode(errors="replace").strip().splitlines()
    if process.returncode != 0 or not lines:
        errors = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        last = errors[-1].strip() if errors else "no error output"
        raise BenchChildError(
            f"the {subject} process stopped (exit code {process.returncode}): {last}"
        )
    if err.strip():  # warnings of a run that finished: shown, not hidden
        sys.stderr.write(err.decode(errors="replace"))
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _figures(run: dict[str, Any]) -> dict[str, float]:
    start, end = run["start"], run["end"]
    wall = end["wall"] - start["wall"]
    cpu = end["cpu"] - start["cpu"]
    polls = end["polls"] - start["polls"]
    sent = end["sent"] - start["sent"]
    return {
        "window_s": round(wall, 2),
        "polls": polls,
        "polls_per_s": round(polls / wall, 1),
        "cpu_s": round(cpu, 3),
        "cpu_percent": round(100 * cpu / wall, 1),
        "cpu_s_per_1000_polls": round(1000 * cpu / polls, 3) if polls else float("nan"),
        "mqtt_msgs": sent,
        "mqtt_msgs_per_s": round(sent / wall, 1),
        "mqtt_msgs_per_poll": round(sent / polls, 1) if polls else float("nan"),
        "http_errors": end["errors"] - start["errors"],
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "startup_s": round(run["startup_s"], 1),
    }


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _delays(
    records: list[tuple[float, str, bytes]],
    ticks: dict[str, float],
    start: float,
    end: float,
    base_topic: str,
) -> list[float]:
    delays = []
    for arrival, topic, payload in records:
        if not start <= arrival <= end or not topic.startswith(f"{base_topic}/"):
            continue
        tick = ticks.get(topic.split("/")[1])
        if tick is None or not payload.isdigit():
            continue
        delays.append(arrival - (tick + int(payload)))
    return delays


def _latency(delays: list[float]) -> dict[str, float]:
    return {
        "latency_samples": len(delays),
        "change_to_message_p50_s": round(_percentile(delays, 0.50), 3),
        "change_to_message_p99_s": round(_percentile(delays, 0.99), 3),
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each figure of a subject's runs as its median, min and max."""
    summary: dict[str, dict[str, float]] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        summary[key] = {
            "median": round(statistics.median(values), 3),
            "min": min(values),
            "max": max(values),
        }
    return summary


async def run_bench(
    *,
    units: int,
    seconds: float,
    host: str,
    port: int,
    interval: float = 1.0,
    discovery: str = "entity",
    warmup_max_s: float = 60.0,
    repeat: int = DEFAULT_REPEAT,
    subjects: tuple[str, ...] = SUBJECTS,
    publisher: PublisherSetting = "auto",
) -> dict[str, Any]:
    """Run the subjects in turn, ``repeat`` times, against ``units`` simulated units."""
    simulator = _Child(_simulator_child, units)
    subscriber: _Child | None = None
    runs: dict[str, list[dict[str, float]]] = {subject: [] for subject in subjects}
    windows: list[tuple[str, float, float]] = []
    try:
        simulator_port, unit_ticks = simulator.receive()
        simulated = _Units(
            names=[name for name, _ in unit_ticks],
            port=simulator_port,
            ticks={f"bench{i:04d}": tick for i, (_, tick) in enumerate(unit_ticks, start=1)},
        )
        topics = [
            TopicLayout(base).every_unit("vitals", "uptime_s")
            for base in (BASE_TOPIC, BASELINE_BASE_TOPIC)
        ]
        subscriber = _Child(_subscriber_child, host, port, topics, BASE_TOPIC)
        subscriber.receive()
        for _ in range(repeat):
            for subject in subjects:
                spec = _subject_spec(
                    subject,
                    simulated,
                    host=host,
                    port=port,
                    interval=interval,
                    seconds=seconds,
                    discovery=discovery,
                    warmup_max_s=warmup_max_s,
                    publisher=publisher,
                )
                run = await _run_subject(subject, spec)
                await _clean_up(host, port, run["topics"])
                runs[subject].append(_figures(run))
                windows.append((subject, run["start"]["wall"], run["end"]["wall"]))
        subscriber.conn.send("stop")
        records: list[tuple[float, str, bytes]] = subscriber.receive()
    finally:
        if subscriber is not None:
            subscriber.stop()
        simulator.stop()
    latencies: dict[str, list[dict[str, float]]] = {subject: [] for subject in subjects}
    for subject, start, end in windows:
        base = BASE_TOPIC if subject == "bridge" else BASELINE_BASE_TOPIC
        latencies[subject].append(_latency(_delays(records, simulated.ticks, start, end, base)))
    for subject in subjects:
        for figures, latency in zip(runs[subject], latencies[subject], strict=True):
            figures.update(latency)
    result: dict[str, Any] = {
        "units": units,
        "seconds": seconds,
        "repeat": repeat,
        "interval_s": interval,
        "discovery": discovery,
        "publisher": publisher,
        "broker": f"{host}:{port}",
        "simulator": SIMULATOR_ROUTING,
        "runs": runs,
    }
    for subject in subjects:
        result[subject] = summarize(runs[subject])
    if "baseline" in runs and "bridge" in runs:
        ratios = [
            bridge["cpu_s_per_1000_polls"] / base["cpu_s_per_1000_polls"]
            for bridge, base in zip(runs["bridge"], runs["baseline"], strict=True)
            if bridge["polls"] and base["polls"]
        ]
        if ratios:
            result["cpu_per_poll_ratio"] = {
                "median": round(statistics.median(ratios), 2),
                "min": round(min(ratios), 2),
                "max": round(max(ratios), 2),
            }
    return result


async def _clean_up(host: str, port: int, topics: list[str]) -> None:
    """Delete the retained topics a run created; a broker gone by now only gets a warning."""
    if not topics:
        return
    config = MqttConfig(host=host, port=port)
    try:
        await delete_retained(config, sorted(set(topics)), identifier=f"{RUN_ID}-cleanup")
    except MqttUnavailableError as error:
        logging.getLogger(__name__).warning(
            "bench: could not delete its %d retained topics: %s", len(set(topics)), error
        )


ROWS: Final = (
    ("window s", "window_s"),
    ("polls/s (vitals)", "polls_per_s"),
    ("CPU % of one core", "cpu_percent"),
    ("CPU s / 1000 polls", "cpu_s_per_1000_polls"),
    ("MQTT msgs/s", "mqtt_msgs_per_s"),
    ("MQTT msgs / poll", "mqtt_msgs_per_poll"),
    ("HTTP errors", "http_errors"),
    ("peak RSS MB", "peak_rss_mb"),
    ("change->message p50 s", "change_to_message_p50_s"),
    ("change->message p99 s", "change_to_message_p99_s"),
    ("latency samples", "latency_samples"),
    ("startup s", "startup_s"),
)


def _cell(summary: dict[str, float]) -> str:
    low, high = f"{summary['min']:g}", f"{summary['max']:g}"
    median = f"{summary['median']:g}"
    return median if low == high else f"{median} ({low}-{high})"


def format_table(result: dict[str, Any]) -> str:
    """The figures as a text table: median (min-max) of each subject's runs."""
    subjects = [subject for subject in SUBJECTS if subject in result]
    width = 26
    lines = [
        (
            f"{result['units']} units, vitals every {result['interval_s']} s,"
            f" {result['repeat']} run(s) of {result['seconds']} s per subject, interleaved;"
            " median (min-max)"
        ),
        f"{'':{width}}" + "".join(f"{subject:>27}" for subject in subjects),
    ]
    for label, key in ROWS:
        cells = [_cell(result[s][key]) if key in result[s] else "" for s in subjects]
        lines.append(f"{label:{width}}" + "".join(f"{cell:>27}" for cell in cells))
    if "cpu_per_poll_ratio" in result:
        lines.append(
            f"{'CPU per poll, bridge/base':{width}}{_cell(result['cpu_per_poll_ratio']):>27}"
        )
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
    repeat: int = DEFAULT_REPEAT,
    subjects: tuple[str, ...] = SUBJECTS,
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
                repeat=repeat,
                subjects=subjects,
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


if __name__ == "__main__":
    sys.exit(_bridge_subject_main(sys.argv[1:]))
