"""Fault suite, logs: forged log lines, a flaky unit's log volume, SIGHUP, probe of a hostile unit.

Each test runs the real bridge (or ``probe``) process against simulated units and a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from bridge.sim.simulator import VITALS_PATH, SimulatedUnit, UnitServer
from tests.conftest import Broker, wait_for_retained
from tests.test_cli import probe_cli
from tests.test_fault_suite import (
    assert_clean_log,
    connector_block,
    live_capture,
    polling,
    run_bridge,
    wait_until,
)

# The forged part starts with what a real line starts with: a timestamp and a level.
FORGED = "2001-02-03 04:05:06 ERROR   unit forged: all energy lost"
HOSTILE_SERIAL = f"SIMFS77\n{FORGED}\x1b[31m\x1b[2J"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def assert_every_line_is_a_real_line(log: str) -> None:
    """No raw ESC byte, nothing forged: every line starts with a real timestamp and level."""
    assert "\x1b" not in log
    for line in log.splitlines():
        assert LINE_START.match(line), line
        assert not line.startswith(FORGED[:19]), line


# --- a) a serial number with a newline and ANSI codes ----------------------------------------


class RenamedUnit(SimulatedUnit):
    """A simulated unit whose version body reports another serial and firmware when told to."""

    def __init__(self, serial: str, **options: Any) -> None:
        super().__init__(serial, **options)
        self.reported_serial = serial
        self.reported_firmware: str | None = None

    def version(self) -> dict[str, Any]:
        """The version body with the serial (and firmware) this unit is told to report."""
        body = dict(super().version())
        body["serial_number"] = self.reported_serial
        if self.reported_firmware is not None:
            body["firmware_version"] = self.reported_firmware
        return body


@pytest.mark.broker
async def test_hostile_serial_cannot_forge_a_log_line(broker: Broker, tmp_path: Path) -> None:
    """Two entries answering with the same hostile serial, a third changing to it: all escaped."""
    twin_a = SimulatedUnit(HOSTILE_SERIAL, seed=71)
    twin_b = SimulatedUnit(HOSTILE_SERIAL, seed=72)
    changer = RenamedUnit("SIMFS0000073", seed=73)
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(UnitServer(unit)) for unit in (twin_a, twin_b, changer)
        ]
        body = (
            polling().replace("version_s = 3600", "version_s = 2")
            + connector_block("twin_a", servers[0])
            + connector_block("twin_b", servers[1])
            + connector_block("changer", servers[2])
        )
        bridge = await stack.enter_async_context(run_bridge(tmp_path, broker.port, body))
        async with asyncio.timeout(60):
            await wait_until(
                lambda: (
                    "same Wall Connector" in bridge.log_text()
                    and bool(bridge.unit_lines("changer", "online (version answered)"))
                ),
                30,
                "the duplicate serial, and the changer's first serial",
            )
            changer.reported_serial = HOSTILE_SERIAL.replace("SIMFS77", "SIMFS78")
            await wait_until(
                lambda: "serial number changed" in bridge.log_text(), 30, "the serial change"
            )
        assert bridge.alive(), bridge.log_text()[-3000:]
    log = bridge.log_text()
    assert_every_line_is_a_real_line(log)
    # The serial was logged (so the check above could fail), escaped on its own line.
    escaped_serial = "SIMFS77\\n" + FORGED + "\\x1b[31m\\x1b[2J"
    duplicate = [line for line in log.splitlines() if "same Wall Connector" in line]
    assert len(duplicate) == 1, duplicate
    assert escaped_serial in duplicate[0]
    changed = [line for line in log.splitlines() if "serial number changed" in line]
    assert len(changed) == 1, changed
    assert escaped_serial.replace("SIMFS77", "SIMFS78") in changed[0]
    assert_clean_log(bridge)


# --- b) a unit answering HTTP 500 to 30 % of vitals requests ---------------------------------


class FlakyVitalsUnit(SimulatedUnit):
    """A simulated unit answering HTTP 500 to a share of vitals requests (seeded), counted."""

    def __init__(self, serial: str, share: float, **options: Any) -> None:
        super().__init__(serial, **options)
        self.share = share
        self.draws = random.Random(1234)
        self.served_500 = 0

    def render(self, path: str) -> tuple[int, bytes]:
        """HTTP 500 now and then on vitals, else what the unit answers."""
        if path.startswith(VITALS_PATH) and self.share and self.draws.random() < self.share:
            self.served_500 += 1
            return 500, b"Internal Server Error"
        return super().render(path)


SUMMARY_S = 20
FLAKY_S = 38


@pytest.mark.broker
async def test_flaky_unit_logs_a_handful_of_lines_and_counts_every_failure(
    broker: Broker, tmp_path: Path
) -> None:
    """30 % HTTP 500 for 38 s: first failure, recovery, one summary, final recovery; exact count.

    The summary interval is 20 s here (``[logging] repeat_summary_s``; 300 s by default), so the
    38 s of failures hold exactly one summary, and the calm after them ends with the recovery.
    """
    unit = FlakyVitalsUnit("SIMFS0000080", share=0.0, seed=80)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(UnitServer(unit))
        capture = await stack.enter_async_context(live_capture(broker.port))
        # offline_after 8: 30 % failing 8 times in a row is too rare to matter here.
        body = (
            polling(offline_after=8)
            + f"\n[logging]\nrepeat_summary_s = {SUMMARY_S}\n"
            + connector_block("flaky", server)
        )
        bridge = await stack.enter_async_context(run_bridge(tmp_path, broker.port, body))
        async with asyncio.timeout(FLAKY_S + SUMMARY_S + 60):
            await wait_for_retained(
                broker.port,
                lambda found: found.get("twc3/flaky/availability") == "online",
                pattern="twc3/flaky/availability",
            )
            unit.share = 0.3
            await asyncio.sleep(FLAKY_S)
            unit.share = 0.0
            served = unit.served_500
            topic = "twc3/flaky/poller/failed_requests"
            await wait_until(
                lambda: capture.payloads(topic)[-1:] == [str(served).encode()],
                10,
                f"failed_requests = {served}",
            )
            await wait_until(
                lambda: len(bridge.unit_lines("flaky", "normally again")) >= 2,
                SUMMARY_S + 15,
                "the final recovery line",
            )
        assert bridge.alive(), bridge.log_text()[-3000:]
        lines = [line for line in bridge.unit_lines("flaky", "vitals") if " online (" not in line]
    assert served >= 8, served  # 30 % of ~38 requests
    assert len(lines) <= 4, lines  # not ~30 a minute
    assert "HTTP 500 from vitals" in lines[0], lines
    summaries = [line for line in lines if "more bad answers and" in line]
    assert len(summaries) == 1, lines
    assert "answers normally again" in lines[-1], lines
    # The lines' counts add up to every failure: the first, then "N more" in each later line.
    counts = [int(n) for line in lines for n in re.findall(r"(\d+) more bad answer", line)]
    assert 1 + sum(counts) == served, lines
    assert b"offline" not in capture.payloads("twc3/flaky/availability")
    assert_clean_log(bridge)


# --- c) SIGHUP --------------------------------------------------------------------------------


@pytest.mark.broker
async def test_sighup_stops_as_cleanly_as_sigterm(broker: Broker, tmp_path: Path) -> None:
    """SIGHUP: bridge/state goes offline, state.json is written, exit code 0, no traceback."""
    unit = SimulatedUnit("SIMFS0000090", seed=90)
    data_dir = tmp_path / "data"
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(UnitServer(unit))
        capture = await stack.enter_async_context(live_capture(broker.port))
        body = f'\n[bridge]\ndata_dir = "{data_dir}"\n' + polling() + connector_block("hup", server)
        bridge = await stack.enter_async_context(run_bridge(tmp_path, broker.port, body))
        async with asyncio.timeout(60):
            await wait_for_retained(
                broker.port,
                lambda found: (
                    found.get("twc3/hup/availability") == "online"
                    and "twc3/hup/derived/energy_wh" in found
                ),
                pattern="twc3/#",
            )
            bridge.process.send_signal(signal.SIGHUP)
            code = await asyncio.to_thread(bridge.process.wait, 20)
            await wait_until(
                lambda: capture.payloads("twc3/bridge/state")[-1:] == [b"offline"],
                10,
                "bridge/state offline",
            )
    assert code == 0, bridge.log_text()[-3000:]
    state = json.loads((data_dir / "state.json").read_text())
    assert isinstance(state, dict)
    assert state, state
    log = bridge.log_text()
    assert "SIGHUP received: stopping" in log
    assert "bridge stopped" in log
    assert_clean_log(bridge)
    after = log.split("SIGHUP received", 1)[1]
    assert not re.search(r" (WARNING|ERROR|CRITICAL) ", after), after


# --- d) probe of a hostile unit ---------------------------------------------------------------


async def test_probe_of_hostile_unit_prints_escaped_text_and_the_real_ids(tmp_path: Path) -> None:
    """``python -m bridge probe``: no raw control character, topics by slug or configured id."""
    unit = RenamedUnit(HOSTILE_SERIAL, seed=95)
    unit.reported_firmware = "25.1\n\x1b]0;owned\x07\u202e"
    async with asyncio.timeout(60), UnitServer(unit) as server:
        host = f"127.0.0.1:{server.port}"
        code, output = await probe_cli(host, "--timeout", "5")
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'[mqtt]\nbase_topic = "home/twc"\n[[connectors]]\nhost = "{host}"\nid = "garage"\n'
        )
        configured_code, configured = await probe_cli(
            host, "--timeout", "5", "--config", str(config)
        )
    for text, exit_code in ((output, code), (configured, configured_code)):
        assert exit_code == 0, text
        assert "Traceback" not in text
        for forbidden in ("\x1b", "\x07", "\u202e", "\r"):
            assert forbidden not in text, repr(forbidden)
        assert not any(line.startswith(FORGED[:19]) for line in text.splitlines())
    slug = "simfs77_2001_02_03_04_05_06_error_unit_forged_al"  # slugify, cut to 48 characters
    assert f"topics: twc3/{slug}/... (from its serial number)" in output, output
    assert f"twc3/{slug}/vitals/grid_v = " in output
    assert "version/firmware_version = 25.1\\n\\x1b]0;owned\\x07\\u202e" in output
    assert "version/serial_number = SIMFS77\\n" + FORGED in output
    assert "topics: home/twc/garage/... (the connector's configured id)" in configured
    assert "home/twc/garage/version/firmware_version = 25.1\\n" in configured
    assert "twc3/" not in configured
