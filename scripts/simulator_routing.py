"""Measures the simulator's two routings: one listening port per unit, or one port by Host header.

``.venv/bin/python scripts/simulator_routing.py --units 1000 --seconds 20 [--json FILE]``

For each mode a **simulator** child serves N :class:`~bridge.sim.simulator.SimulatedUnit` (built as
``twc3-bridge bench`` builds them) on 127.0.0.1, and a **driver** child holds one keep-alive
HTTP/1.1 connection per unit and sends ``GET /api/1/vitals`` on each once per second, the N
requests spread evenly over the second. After a warm-up, the simulator child's CPU time
(``/proc/<pid>/stat`` utime + stime) is read at the start and end of the measuring window, and
its peak RSS (``VmHWM`` of ``/proc/<pid>/status``) at the end; "RSS KiB/unit" is that peak minus
the child's RSS before it built the units, per unit (its connections included). The driver's
cost is not measured; "p99 ms" is its 99th-percentile request-to-response time in the window,
"missed" the once-a-second slots it skipped because an answer came more than a second late.

* ``port``: one :class:`~bridge.sim.simulator.UnitServer`, so one listening socket, per unit.
* ``host``: one :class:`~bridge.sim.simulator.HostRoutedServer`: a single listening socket; the
  ``Host`` header (the unit's serial) picks the unit. Only body-level quirks matter to this
  comparison; the transport quirks are not supported in this mode (``refuse`` is ignored, the
  others are untested).
"""

# ruff: noqa: INP001 - a script run by path, not a module of a package

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Literal, NoReturn, TypeAlias, cast, get_args

from bridge.sim.simulator import (
    VITALS_PATH,
    HostRoutedServer,
    UnitServer,
    bench_units,
)

Mode: TypeAlias = Literal["port", "host"]
MODES: Final[tuple[Mode, ...]] = get_args(Mode)
LOOPBACK: Final = "127.0.0.1"
MAX_UNITS: Final = 1000
MAX_SECONDS: Final = 600.0
MAX_WARMUP_S: Final = 60.0
DEFAULT_WARMUP_S: Final = 2.0
CHILD_START_TIMEOUT_S: Final = 120.0
CONNECT_TIMEOUT_S: Final = 10.0
# Late answers still count until then; whatever is still unanswered is cut off.
RESPONSE_GRACE_S: Final = 5.0
CHILD_STOP_TIMEOUT_S: Final = 30.0
# Lets every connection's first request be scheduled before the first one is due.
SCHEDULE_LEAD_S: Final = 0.2
_CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
_KIB_PER_MIB: Final = 1024
# /proc/<pid>/stat fields after "(comm)": state is field 3, utime 14, stime 15 (proc(5)).
_UTIME_INDEX: Final = 14 - 3
_STIME_INDEX: Final = 15 - 3

Target: TypeAlias = tuple[int, str]  # port to connect to, Host header to send


class RoutingError(Exception):
    """A measurement could not be made (one-line reason)."""


# ---- child processes -------------------------------------------------------------------------


def _leave_interrupts_to_the_parent() -> None:
    # Ctrl-C reaches the whole process group; the parent stops its children in order, and a
    # KeyboardInterrupt traceback from each child would bury its one-line message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _allow_open_files(count: int) -> None:
    # 1000 units in port mode hold 2000 sockets; a soft limit of 1024 is common.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def _status_kib(pid: int | Literal["self"], field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise RoutingError(f"/proc/{pid}/status has no {field}")


def _stop_requested(conn: multiprocessing.connection.Connection) -> asyncio.Event:
    """An event set as soon as the parent writes to ``conn`` (its stop request)."""
    event = asyncio.Event()
    asyncio.get_running_loop().add_reader(conn.fileno(), event.set)
    return event


async def _simulator_main(
    conn: multiprocessing.connection.Connection, mode: Mode, count: int
) -> None:
    _allow_open_files(2 * count)
    base_rss_kib = _status_kib("self", "VmRSS")
    units = bench_units(count)
    async with contextlib.AsyncExitStack() as stack:
        targets: list[Target] = []
        if mode == "port":
            for unit in units:
                server = await stack.enter_async_context(UnitServer(unit))
                targets.append((server.port, f"{LOOPBACK}:{server.port}"))
        else:
            router = await stack.enter_async_context(HostRoutedServer(units))
            targets = [(router.port, unit.serial) for unit in units]
        conn.send(("ready", (targets, base_rss_kib)))
        await _stop_requested(conn).wait()


def _simulator_child(conn: multiprocessing.connection.Connection, mode: Mode, count: int) -> None:
    _leave_interrupts_to_the_parent()
    try:
        asyncio.run(_simulator_main(conn, mode, count))
    except OSError as exc:
        conn.send(("error", f"simulator: {exc.strerror or exc}"))


@dataclasses.dataclass(slots=True)
class _Tally:
    answered: int = 0
    errors: int = 0
    missed: int = 0
    latencies_s: list[float] = dataclasses.field(default_factory=list)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("response without Content-Length")


async def _poll_unit(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    request: bytes,
    first_due: float,
    end: float,
    tally: _Tally,
) -> None:
    loop = asyncio.get_running_loop()
    due = first_due
    try:
        while due < end:  # ``due`` grows by at least a second on every pass
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_content_length(head))
            answered = loop.time()
            tally.answered += 1
            tally.latencies_s.append(answered - sent)
            due += 1.0
            if due < answered:
                # Fell a whole second or more behind: skip the lost slots rather than burst.
                lost = math.ceil(answered - due)
                tally.missed += lost
                due += lost
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        tally.errors += 1


async def _wait_until(moment: float, stop: asyncio.Event) -> bool:
    """Sleep until the loop time ``moment``; ``False`` when the parent asked to stop first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(moment):
            await stop.wait()
        return False
    return True


async def _driver_main(
    conn: multiprocessing.connection.Connection,
    targets: Sequence[Target],
    warmup_s: float,
    seconds: float,
) -> None:
    _allow_open_files(len(targets))
    stop = _stop_requested(conn)
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]] = []
    try:
        for port, host in targets:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
            request = f"GET {VITALS_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            streams.append((reader, writer, request))
        loop = asyncio.get_running_loop()
        tally = _Tally()
        start = loop.time() + SCHEDULE_LEAD_S
        end = start + warmup_s + seconds
        tasks = [
            asyncio.create_task(
                _poll_unit(
                    reader,
                    writer,
                    request=request,
                    first_due=start + index / len(streams),
                    end=end,
                    tally=tally,
                )
            )
            for index, (reader, writer, request) in enumerate(streams)
        ]
        # The parent only asks before the end when its measurement failed: nothing to report.
        if not await _wait_until(start + warmup_s, stop):
            return
        conn.send(("mark", (loop.time(), tally.answered)))
        window_start = len(tally.latencies_s)
        if not await _wait_until(end, stop):
            return
        conn.send(("mark", (loop.time(), tally.answered)))
        window = tally.latencies_s[window_start:]
        _, pending = await asyncio.wait(tasks, timeout=RESPONSE_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        p99_s = statistics.quantiles(window, n=100)[98] if len(window) > 1 else math.nan
        conn.send(("done", (tally.errors + len(pending), tally.missed, p99_s)))
    finally:
        for _, writer, _ in streams:
            writer.close()


def _driver_child(
    conn: multiprocessing.connection.Connection,
    targets: Sequence[Target],
    warmup_s: float,
    seconds: float,
) -> None:
    _leave_interrupts_to_the_parent()
    try:
        asyncio.run(_driver_main(conn, targets, warmup_s, seconds))
    except (OSError, TimeoutError) as exc:
        conn.send(("error", f"driver: cannot connect to the simulator: {exc}"))


class _Child:
    """A spawned child process talking over a pipe; stopped by sending it anything."""

    def __init__(self, name: str, target: Callable[..., None], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=target, args=(child_conn, *args), daemon=True)
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        return cast("int", self.process.pid)

    def expect(self, kind: str, timeout_s: float) -> object:
        """The payload of the child's next message, which must be of ``kind``."""
        try:
            if not self.conn.poll(timeout_s):
                raise RoutingError(f"the {self.name} sent no {kind!r} within {timeout_s:g} s")
            message = self.conn.recv()
        except (EOFError, OSError):
            raise RoutingError(f"the {self.name} exited unexpectedly") from None
        got, payload = cast("tuple[str, object]", message)
        if got == "error":
            raise RoutingError(str(payload))
        if got != kind:
            raise RoutingError(f"the {self.name} sent {got!r} instead of {kind!r}")
        return payload

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.process.join(CHILD_STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(CHILD_STOP_TIMEOUT_S)
        self.conn.close()


# ---- measuring -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Measurement:
    """One mode's figures; CPU and memory are the simulator child's alone."""

    mode: Mode
    units: int
    seconds: float
    answered_per_s: float
    cpu_percent: float
    cpu_us_per_request: float
    peak_rss_mb: float
    rss_kib_per_unit: float
    p99_ms: float
    errors: int
    missed: int


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 1 :].split()
    return (int(fields[_UTIME_INDEX]) + int(fields[_STIME_INDEX])) / _CLOCK_TICKS_PER_S


def measure(
    mode: Mode, units: int, seconds: float, *, warmup_s: float = DEFAULT_WARMUP_S
) -> Measurement:
    """Serve ``units`` units in ``mode``, poll each once a second, and measure the simulator.

    Raises:
        RoutingError: a child could not start, connect or answer in time (one-line reason).
    """
    simulator = _Child("simulator", _simulator_child, mode, units)
    driver: _Child | None = None
    try:
        targets, base_rss_kib = cast(
            "tuple[list[Target], int]", simulator.expect("ready", CHILD_START_TIMEOUT_S)
        )
        driver = _Child("driver", _driver_child, targets, warmup_s, seconds)
        started_s, answered_before = cast(
            "tuple[float, int]",
            driver.expect("mark", CHILD_START_TIMEOUT_S + CONNECT_TIMEOUT_S + warmup_s),
        )
        cpu_before_s, read_before_s = _cpu_seconds(simulator.pid), time.monotonic()
        ended_s, answered_after = cast(
            "tuple[float, int]", driver.expect("mark", seconds + CHILD_START_TIMEOUT_S)
        )
        cpu_after_s, read_after_s = _cpu_seconds(simulator.pid), time.monotonic()
        peak_rss_kib = _status_kib(simulator.pid, "VmHWM")
        errors, missed, p99_s = cast(
            "tuple[int, int, float]",
            driver.expect("done", RESPONSE_GRACE_S + CHILD_START_TIMEOUT_S),
        )
    finally:
        if driver is not None:
            driver.stop()
        simulator.stop()
    answered = answered_after - answered_before
    cpu_s = cpu_after_s - cpu_before_s
    return Measurement(
        mode=mode,
        units=units,
        seconds=round(ended_s - started_s, 3),
        answered_per_s=answered / (ended_s - started_s),
        cpu_percent=100 * cpu_s / (read_after_s - read_before_s),
        cpu_us_per_request=1e6 * cpu_s / answered if answered else math.nan,
        peak_rss_mb=peak_rss_kib / _KIB_PER_MIB,
        rss_kib_per_unit=(peak_rss_kib - base_rss_kib) / units,
        p99_ms=1000 * p99_s,
        errors=errors,
        missed=missed,
    )


# ---- report and command line -----------------------------------------------------------------

_COLUMNS: Final = (
    ("mode", "{}", "mode"),
    ("units", "{}", "units"),
    ("answered/s", "{:.1f}", "answered_per_s"),
    ("sim CPU %", "{:.1f}", "cpu_percent"),
    ("CPU µs/req", "{:.1f}", "cpu_us_per_request"),
    ("peak RSS MB", "{:.1f}", "peak_rss_mb"),
    ("RSS KiB/unit", "{:.1f}", "rss_kib_per_unit"),
    ("p99 ms", "{:.2f}", "p99_ms"),
    ("errors", "{}", "errors"),
    ("missed", "{}", "missed"),
)


def format_table(results: Sequence[Measurement]) -> str:
    """The results as an aligned text table, with a verdict line when both modes ran."""
    rows = [[title for title, _, _ in _COLUMNS]]
    rows.extend(
        [spec.format(getattr(result, field)) for _, spec, field in _COLUMNS] for result in results
    )
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    by_mode = {result.mode: result for result in results}
    if set(by_mode) == set(MODES):
        port, host = by_mode["port"], by_mode["host"]
        lines.append(
            "host / port: simulator CPU per request "
            f"×{host.cpu_us_per_request / port.cpu_us_per_request:.2f}, "
            f"peak RSS ×{host.peak_rss_mb / port.peak_rss_mb:.2f}"
        )
    return "\n".join(lines)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line and no usage block: the brief's rule for bad arguments.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str, option: str, low: float, high: float, *, whole: bool = False) -> float:
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        kind = "a whole number" if whole else "a number"
        raise argparse.ArgumentTypeError(f"{option} takes {kind} {low:g}..{high:g}, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="simulator_routing",
        description="Compare one listening port per simulated unit with one port routed by Host.",
    )
    parser.add_argument(
        "--units",
        type=lambda text: int(_number(text, "--units", 1, MAX_UNITS, whole=True)),
        default=100,
        help=f"simulated units, 1..{MAX_UNITS} (default 100)",
    )
    parser.add_argument(
        "--seconds",
        type=lambda text: _number(text, "--seconds", 0.5, MAX_SECONDS),
        default=10.0,
        help="measuring window per mode, after the warm-up (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=lambda text: _number(text, "--warmup", 0, MAX_WARMUP_S),
        default=DEFAULT_WARMUP_S,
        help=f"seconds of polling before the window opens (default {DEFAULT_WARMUP_S:g})",
    )
    parser.add_argument(
        "--mode", choices=[*MODES, "both"], default="both", help="what to measure (default both)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status (errors are one line on stderr)."""
    args = _parser().parse_args(argv)
    modes: Sequence[Mode] = MODES if args.mode == "both" else (args.mode,)
    try:
        results = [measure(mode, args.units, args.seconds, warmup_s=args.warmup) for mode in modes]
    except (RoutingError, OSError) as exc:
        sys.stderr.write(f"simulator_routing: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("simulator_routing: interrupted\n")
        return 130
    sys.stdout.write(format_table(results) + "\n")
    if args.json is not None:
        report = {
            "units": args.units,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "results": [dataclasses.asdict(result) for result in results],
        }
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            sys.stderr.write(f"simulator_routing: error: {args.json}: {exc.strerror or exc}\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
