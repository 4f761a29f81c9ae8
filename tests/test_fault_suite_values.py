"""Fault suite, values: a unit sending numbers outside physical sense, run through the real bridge.

The real ``python -m bridge run`` process (Homie on, discovery on) polls a simulated unit whose
uptime, grid voltage and energy are absurd and whose body carries an integer of a few hundred
digits. These used to raise in ``derived.last_boot`` and ``homie_payload`` and crash the poller
for good (restarted every 30 s, nothing published). Now the raw values go out on their field
topics, the derived values treat them as unknown, and each field is warned about once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path
from typing import Final

import pytest

from bridge.sim.simulator import JsonBody, SimulatedUnit, UnitServer
from tests.conftest import Broker, wait_for_retained
from tests.test_fault_suite import (
    assert_clean_log,
    connector_block,
    live_capture,
    polling,
    run_bridge,
    wait_until,
)

# The uptimes: 2**64-1, 1e20 and 7e10 raised in last_boot; -5 is negative.
ABSURD_UPTIMES: Final[tuple[int | float, ...]] = (2**64 - 1, 1e20, 7e10, -5)
UPTIME_PAYLOADS: Final = {"18446744073709551615", "100000000000000000000", "70000000000", "-5"}
GIANT: Final = int("7" * 300)  # an integer of a few hundred digits: raised in homie_payload
HUGE_TEXT: Final = "1" + "0" * 308  # 1e308 as its field topic shows it
UNIT_ID: Final = "absurd"


class AbsurdUnit(SimulatedUnit):
    """A simulated unit whose numbers make no physical sense; everything else is ordinary."""

    def __init__(self, serial: str, seed: int) -> None:
        super().__init__(serial, seed=seed)
        self._uptimes = itertools.cycle(ABSURD_UPTIMES)

    def vitals(self) -> JsonBody:
        """Ordinary vitals with an absurd uptime (a different one each time), grid and energy."""
        body = super().vitals()
        body["uptime_s"] = next(self._uptimes)
        body["grid_v"] = 1e308
        body["session_energy_wh"] = 1e308
        body["giant_counter"] = GIANT
        return body

    def lifetime(self) -> JsonBody:
        """Ordinary counters with an energy total of 1e308."""
        body = super().lifetime()
        body["energy_wh"] = 1e308
        return body


@pytest.mark.broker
async def test_absurd_numbers_are_published_raw_and_never_stop_the_poller(
    broker: Broker, tmp_path: Path
) -> None:
    """Vitals keep flowing, raw values on their topics, no last_boot, one warning per field."""
    unit = AbsurdUnit("SIMFSV000001", seed=151)
    root = f"twc3/{UNIT_ID}"

    def uptime_payloads() -> set[str]:
        return {payload.decode() for payload in capture.payloads(f"{root}/vitals/uptime_s")}

    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(UnitServer(unit))
        body = polling() + "\n[homie]\nenabled = true\n" + connector_block(UNIT_ID, server)
        capture = await stack.enter_async_context(live_capture(broker.port))
        bridge = await stack.enter_async_context(run_bridge(tmp_path, broker.port, body))
        async with asyncio.timeout(90):
            # Every absurd uptime, twice over: vitals keep being read and published.
            await wait_until(
                lambda: len(capture.payloads(f"{root}/vitals")) >= 2 * len(ABSURD_UPTIMES) + 2,
                60,
                "vitals published on every poll",
            )
            await wait_until(
                lambda: uptime_payloads() >= UPTIME_PAYLOADS,
                30,
                "every absurd uptime on its raw topic",
            )
            homie = await wait_for_retained(
                broker.port,
                lambda found: any(t.endswith("/giant-counter") for t in found),
                pattern="homie/#",
            )
        assert bridge.alive(), bridge.log_text()[-3000:]

    assert capture.payloads(f"{root}/vitals/grid_v")[-1].decode() == HUGE_TEXT
    assert capture.payloads(f"{root}/vitals/session_energy_wh")[-1].decode() == HUGE_TEXT
    assert capture.payloads(f"{root}/vitals/giant_counter")[-1].decode() == str(GIANT)
    assert capture.payloads(f"{root}/lifetime/energy_wh")[-1].decode() == HUGE_TEXT
    # Unknown to the derived values: no boot time, no guarded lifetime total, no energy counted.
    assert capture.payloads(f"{root}/derived/last_boot") == []
    assert capture.payloads(f"{root}/derived/lifetime_energy_wh") == []
    assert {p.decode() for p in capture.payloads(f"{root}/derived/energy_wh")} == {"0"}
    assert capture.payloads(f"{root}/availability")[-1] == b"online"
    (giant_topic,) = [t for t in homie if t.endswith("/giant-counter")]
    assert homie[giant_topic] == str(GIANT)
    assert homie["homie/twc3-bridge/$state"] == "ready"

    log = bridge.log_text()
    assert "poller crashed" not in log, log[-3000:]
    assert_clean_log(bridge)
    for endpoint, field in (
        ("vitals", "uptime_s"),
        ("vitals", "grid_v"),
        ("vitals", "session_energy_wh"),
        ("lifetime", "energy_wh"),
    ):
        lines = bridge.unit_lines(UNIT_ID, f"{endpoint} field {field} has a value outside")
        assert len(lines) == 1, (field, lines)
        assert "raw value is still published on its topic" in lines[0]
        assert "derived values treat it as unknown" in lines[0]
    assert not bridge.unit_lines(UNIT_ID, "giant_counter")  # unknown keys are not typed
