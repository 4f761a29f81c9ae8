"""Fault suite, saved state: the energy total across restarts, and state files of the wrong shape.

Real bridge processes, a real mosquitto and simulated units over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from bridge.runtime.statefile import STATE_VERSION
from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker
from tests.test_fault_suite import (
    Bridge,
    Capture,
    assert_clean_log,
    connector_block,
    live_capture,
    polling,
    run_bridge,
    stop_cleanly,
    wait_until,
)

ENERGY_TOPIC = "twc3/garage/derived/energy_wh"
VERSION_PATH = "/api/1/version"
ROUNDING_WH = 0.001  # the published total has 3 decimals, the saved one is exact

VersionFault = Literal["none", "once", "late", "never"]


class VersionFaultUnit(SimulatedUnit):
    """A charging unit whose version endpoint answers HTTP 500 as told, while vitals work."""

    def __init__(self, serial: str) -> None:
        super().__init__(
            serial, seed=90, scenario=Scenario(start_state="charging", auto_cycle=False)
        )
        self.fault: VersionFault = "none"
        self.failures_left = 0
        self.version_asked = 0

    def arm(self, fault: VersionFault) -> None:
        """Fail the next version request (once), the next four (late), or all (never)."""
        self.fault = fault
        self.failures_left = {"none": 0, "once": 1, "late": 4, "never": -1}[fault]
        self.version_asked = 0

    def render(self, path: str) -> tuple[int, bytes]:
        """HTTP 500 for version while the fault lasts; the simulated unit otherwise."""
        if path.partition("?")[0] == VERSION_PATH:
            self.version_asked += 1
            if self.failures_left != 0:
                if self.failures_left > 0:  # -1: for ever
                    self.failures_left -= 1
                return 500, b"Internal Server Error"
        return super().render(path)


def _body(data_dir: Path, server: UnitServer) -> str:
    return (
        f"\n[bridge]\ndata_dir = {json.dumps(str(data_dir))}\n"
        + polling()
        + connector_block("garage", server)
    )


def _saved_total(data_dir: Path) -> float:
    """The garage's energy total in the state file (its one record)."""
    saved = json.loads((data_dir / "state.json").read_text(encoding="utf-8"))
    (total,) = [r["total_wh"] for r in saved["energy"] if r["connector"] == "garage"]
    return float(total)


def _published_since(capture: Capture, started: float) -> list[float]:
    return [float(p) for t, topic, p in capture.messages if topic == ENERGY_TOPIC and t >= started]


async def _one_run(
    broker: Broker,
    *,
    run_dir: Path,
    data_dir: Path,
    server: UnitServer,
    unit: VersionFaultUnit,
    fault: VersionFault,
) -> tuple[list[float], Bridge]:
    """Run the bridge until energy_wh grew a few times and version was asked as the fault needs."""
    await asyncio.to_thread(run_dir.mkdir)
    unit.arm(fault)
    async with live_capture(broker.port) as capture:
        started = time.monotonic()  # what the broker still holds from the last run comes too
        async with run_bridge(run_dir, broker.port, _body(data_dir, server)) as bridge:

            def grown() -> bool:
                published = _published_since(capture, started)
                enough_version = unit.version_asked >= {"none": 1, "once": 2, "late": 5}.get(
                    fault, 3
                )
                return enough_version and len(set(published)) >= 4

            await wait_until(grown, 40, f"energy_wh growing with version fault {fault!r}")
            await stop_cleanly(bridge)
            await asyncio.sleep(0.3)
    return _published_since(capture, started), bridge


@pytest.mark.broker
@pytest.mark.parametrize("fault", ["once", "late", "never"])
async def test_energy_total_never_drops_across_restarts_with_a_failing_version_endpoint(
    broker: Broker, tmp_path: Path, fault: VersionFault
) -> None:
    """Saved total T: with version failing once, late or always, no energy_wh below T is sent."""
    unit = VersionFaultUnit("SIMFS0000090")
    data_dir = tmp_path / "data"
    runs: tuple[VersionFault, ...] = ("none", fault, fault)
    async with asyncio.timeout(200), UnitServer(unit) as server:
        saved = 0.0
        for number, run_fault in enumerate(runs):
            published, bridge = await _one_run(
                broker,
                run_dir=tmp_path / f"run{number}",
                data_dir=data_dir,
                server=server,
                unit=unit,
                fault=run_fault,
            )
            assert published, bridge.log_text()[-3000:]
            below = [value for value in published if value < saved - ROUNDING_WH]
            assert below == [], (number, saved, published[:10], bridge.log_text()[-3000:])
            assert published == sorted(published), published
            assert_clean_log(bridge)
            now_saved = _saved_total(data_dir)
            assert now_saved >= published[-1] - ROUNDING_WH
            assert now_saved > saved
            saved = now_saved
            if run_fault == "never":
                assert bridge.unit_lines("garage", "HTTP 500")  # the fault really happened
                assert unit.version_asked >= 3  # asked again after the backoff, not an hour


# --- a state file of the wrong shape --------------------------------------------------------

BAD_FILES: dict[str, Any] = {
    "list": [],
    "energy_number": {"energy": 5, "addresses": {"SIMFS0000091": "127.0.0.1"}},
    "wildcard_topic": {"discovery": {"topics": {"homeassistant/sensor/+/x/config": "a"}}},
    "unknown_version": {"version": 99, "energy": []},
    "not_json": "{this is not json",
}


@pytest.mark.broker
@pytest.mark.parametrize("content", BAD_FILES.values(), ids=BAD_FILES.keys())
async def test_state_file_of_the_wrong_shape_is_kept_aside_and_the_bridge_publishes(
    broker: Broker, tmp_path: Path, content: Any
) -> None:
    """One warning, the file kept aside unchanged, no traceback, units and discovery published."""
    unit = SimulatedUnit("SIMFS0000091", seed=91)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    text = content if isinstance(content, str) else json.dumps(content)
    (data_dir / "state.json").write_text(text, encoding="utf-8")
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(UnitServer(unit))
        capture = await stack.enter_async_context(live_capture(broker.port))
        bridge = await stack.enter_async_context(
            run_bridge(tmp_path, broker.port, _body(data_dir, server))
        )
        async with asyncio.timeout(60):
            uptime = "twc3/garage/vitals/uptime_s"
            await wait_until(lambda: len(set(capture.payloads(uptime))) >= 3, 30, "vitals flowing")
            await wait_until((data_dir / "state.json").exists, 20, "a new state file written")
            assert bridge.alive(), bridge.log_text()[-3000:]
            await stop_cleanly(bridge)
    log = bridge.log_text()
    warnings = [line for line in log.splitlines() if "state file" in line and "WARNING" in line]
    assert len(warnings) == 1, log
    (kept,) = data_dir.glob("state.json.bad-*")
    assert kept.read_text(encoding="utf-8") == text
    assert f"kept aside as {kept.name}" in warnings[0]
    assert capture.payloads("twc3/bridge/state").count(b"online") == 1, (
        log
    )  # the link never flapped
    saved = json.loads((data_dir / "state.json").read_text(encoding="utf-8"))
    assert saved["version"] == STATE_VERSION
    assert all("+" not in topic for topic in saved["discovery"]["topics"])
    assert "Traceback" not in log, log
