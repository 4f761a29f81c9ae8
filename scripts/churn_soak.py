"""Soak test: the real bridge against one unit that invents new field names on every read.

``.venv/bin/python scripts/churn_soak.py [--seconds 600] [--names 200] [--sample-s 20]``

Starts a private mosquitto on a free loopback port, one simulated unit whose vitals carry
``--names`` new field names on every read (besides its 27 real ones), and ``python -m bridge run``
with vitals every second, Home Assistant discovery (entity mode) and Homie on. Every
``--sample-s`` seconds it reads the bridge's RSS (``VmRSS`` of ``/proc/<pid>/status``) and CPU
time (``utime + stime`` of ``/proc/<pid>/stat``) and prints a row: elapsed time, RSS, CPU% of one
core over the last interval, and how many vitals reads the unit answered. At the end it counts
the retained topics the broker holds for the unit (field topics, discovery configs, Homie
properties) and prints start and end figures.

``--bridge-root DIR`` runs the bridge from another checkout (e.g. an older commit, for a before
figure); ``--retire-s`` sets ``[bridge] field_retire_s`` (left out unless given, so an older
bridge that lacks the key still starts).
"""

# ruff: noqa: INP001 - a script run by path, not a module of a package
# ruff: noqa: T201 - a measuring script prints its table

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.sim.simulator import JsonBody, SimulatedUnit, UnitServer  # noqa: E402 - after the path

UNIT_ID = "churn"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ChurningUnit(SimulatedUnit):
    """A simulated unit whose vitals carry ``names`` field names never sent before, every read."""

    def __init__(self, serial: str, names: int) -> None:
        super().__init__(serial, seed=7)
        self.names = names
        self.reads = 0

    def vitals(self) -> JsonBody:
        """The real vitals plus ``names`` new keys."""
        body = super().vitals()
        self.reads += 1
        for index in range(self.names):
            body[f"churn_{self.reads}_{index}"] = index
        return body


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """The process's resident set size in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def retained_counts(port: int) -> dict[str, int]:
    """How many retained topics the broker holds for the unit, by kind."""
    found: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"soak-{time.monotonic_ns()}") as c:
        await c.subscribe("#", qos=1)
        # Retained messages arrive first; the first live one (or a quiet second) ends them.
        with contextlib.suppress(TimeoutError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                async with asyncio.timeout(1.0):
                    message = await anext(aiter(c.messages))
                if not message.retain:
                    break
                found.add(str(message.topic))
    return {
        "field topics": sum(t.startswith(f"twc3/{UNIT_ID}/vitals/") for t in found),
        "discovery configs": sum(t.startswith("homeassistant/") for t in found),
        "homie topics": sum(t.startswith(f"homie/twc3-bridge/{UNIT_ID}/") for t in found),
        "all": len(found),
    }


def bridge_config(work: Path, broker_port: int, unit_port: int, retire_s: float | None) -> Path:
    """The bridge's config file for the soak."""
    retire = f"field_retire_s = {retire_s}\n" if retire_s is not None else ""
    config = work / "bridge.toml"
    config.write_text(
        f'[bridge]\ndata_dir = "{work / "data"}"\n{retire}'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "churn-soak"\n'
        '[homeassistant]\ndiscovery = "entity"\n'
        "[homie]\nenabled = true\n"
        "[polling]\nvitals_s = 1\nvitals_idle_s = 1\n"
        f'[[connectors]]\nhost = "127.0.0.1:{unit_port}"\nid = "{UNIT_ID}"\n'
    )
    return config


async def soak(args: argparse.Namespace) -> None:
    """Run everything for ``args.seconds`` and print the table."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="churn-soak-") as tmp:
        work = Path(tmp)
        broker_port = free_port()
        (work / "mosquitto.conf").write_text(
            f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        broker = subprocess.Popen(  # noqa: ASYNC220, S603 - started once, before anything runs; our own argv
            [mosquitto, "-c", str(work / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        unit = ChurningUnit("SIMCHURN0001", args.names)
        try:
            await asyncio.sleep(0.5)
            async with UnitServer(unit) as server:
                config = bridge_config(work, broker_port, server.port, args.retire_s)
                with (work / "bridge.log").open("wb") as log:
                    bridge = subprocess.Popen(  # noqa: ASYNC220, S603 - started once; our own argv
                        [
                            args.python,
                            "-m",
                            "bridge",
                            "run",
                            "--config",
                            str(config),
                        ],
                        cwd=args.bridge_root,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                try:
                    await measure(args, bridge.pid, unit, broker_port)
                finally:
                    bridge.terminate()
                    bridge.wait(timeout=20)
                lines = (work / "bridge.log").read_text(errors="replace").splitlines()
                warnings = [line for line in lines if "WARNING" in line or "ERROR" in line]
                print(f"bridge log: {len(lines)} lines, {len(warnings)} warning/error lines")
                for line in warnings[:5]:
                    print(f"  {line[:200]}")
        finally:
            broker.terminate()
            broker.wait(timeout=10)


async def measure(args: argparse.Namespace, pid: int, unit: ChurningUnit, broker_port: int) -> None:
    """Sample RSS and CPU every ``args.sample_s`` until ``args.seconds`` have passed."""
    start = time.monotonic()
    last_cpu, last_at = cpu_seconds(pid), start
    rows: list[tuple[float, float, float, int]] = []
    print(f"{'t (s)':>7} {'RSS (MB)':>9} {'CPU %':>7} {'reads':>7}", flush=True)
    while time.monotonic() - start < args.seconds:
        await asyncio.sleep(min(args.sample_s, args.seconds - (time.monotonic() - start)))
        now, cpu = time.monotonic(), cpu_seconds(pid)
        row = (now - start, rss_mb(pid), 100 * (cpu - last_cpu) / (now - last_at), unit.reads)
        last_cpu, last_at = cpu, now
        rows.append(row)
        print(f"{row[0]:7.0f} {row[1]:9.1f} {row[2]:7.1f} {row[3]:7d}", flush=True)
    served = unit.reads * unit.names
    counts = await retained_counts(broker_port)
    first, last = rows[0], rows[-1]
    print(
        f"start (t={first[0]:.0f} s): RSS {first[1]:.1f} MB, CPU {first[2]:.1f} %; "
        f"end (t={last[0]:.0f} s): RSS {last[1]:.1f} MB, CPU {last[2]:.1f} %; "
        f"{served} invented names served"
    )
    print("retained at the end: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def main() -> None:
    """Parse the arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--names", type=int, default=200, help="new field names per read")
    parser.add_argument("--sample-s", type=float, default=20.0)
    parser.add_argument(
        "--bridge-root", type=Path, default=ROOT, help="checkout to run the bridge from"
    )
    parser.add_argument("--retire-s", type=float, default=None, help="[bridge] field_retire_s")
    args = parser.parse_args()
    args.bridge_root = args.bridge_root.resolve()
    own_python = args.bridge_root / ".venv/bin/python"
    args.python = str(own_python) if own_python.exists() else sys.executable
    asyncio.run(soak(args))


if __name__ == "__main__":
    main()
