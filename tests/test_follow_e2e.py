"""End to end: a unit that changes address is found again by its serial, on loopback only.

Real bridge processes, a real mosquitto, and simulated units on several 127.0.0.x addresses that
share one port (Linux routes all of 127.0.0.0/8 to the loopback interface).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from tests.conftest import Broker, free_port, wait_for_retained
from tests.test_fault_suite import (
    Capture,
    assert_clean_log,
    live_capture,
    polling,
    run_bridge,
    stop_cleanly,
    wait_until,
)

GARAGE_SERIAL = "PGT2401FOLLOW1"
STRANGER_SERIAL = "PGT2401STRANGER"
ENERGY_TOPIC = "twc3/garage/derived/energy_wh"
AVAILABILITY = "twc3/garage/availability"


def _charging_unit(serial: str, seed: int) -> SimulatedUnit:
    return SimulatedUnit(
        serial, seed=seed, scenario=Scenario(start_state="charging", auto_cycle=False)
    )


def _config(data_dir: Path, port: int, *, add_new: bool, connector: str = "") -> str:
    connector = connector or f'host = "127.0.0.2:{port}"\nid = "garage"\n'
    return (
        f"\n[bridge]\ndata_dir = {json.dumps(str(data_dir))}\n"
        f'\n[discovery]\nnetworks = ["127.0.0.0/29"]\nport = {port}\n'
        f"search_after_s = 5\nsearch_every_s = 5\nadd_new = {'true' if add_new else 'false'}\n"
        "timeout_s = 0.5\n" + polling() + f"\n[[connectors]]\n{connector}"
    )


def _last_number(capture: Capture, topic: str) -> float:
    payloads = capture.payloads(topic)
    assert payloads, f"nothing on {topic}"
    return float(payloads[-1])


async def _garage_discovery(port: int) -> dict[str, str]:
    """The garage unit's retained discovery configs, once there are any."""
    retained = await wait_for_retained(
        port,
        lambda found: any(GARAGE_SERIAL.lower() in topic for topic in found),
        pattern="homeassistant/#",
    )
    return {topic: payload for topic, payload in retained.items() if GARAGE_SERIAL.lower() in topic}


@pytest.mark.broker
async def test_a_unit_that_moves_is_found_again_by_its_serial(
    broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    garage = _charging_unit(GARAGE_SERIAL, seed=181)
    stranger = _charging_unit(STRANGER_SERIAL, seed=182)
    config_body = _config(tmp_path / "state", port, add_new=False)
    async with contextlib.AsyncExitStack() as servers:
        first_home = await servers.enter_async_context(
            UnitServer(garage, host="127.0.0.2", port=port)
        )
        async with (
            live_capture(broker.port) as capture,
            run_bridge(tmp_path, broker.port, config_body) as bridge,
        ):
            await wait_until(
                lambda: (
                    bool(capture.payloads(ENERGY_TOPIC))
                    and capture.payloads(AVAILABILITY)[-1:] == [b"online"]
                ),
                30,
                "garage online with an energy total",
            )
            discovery_before = await _garage_discovery(broker.port)
            energy_before = _last_number(capture, ENERGY_TOPIC)
            config_text = (tmp_path / "bridge.toml").read_text()

            # The unit drops off the network; its lease goes to another unit, and it comes back
            # with a new address.
            await first_home.stop()
            await wait_until(
                lambda: capture.payloads(AVAILABILITY)[-1:] == [b"offline"], 30, "garage offline"
            )
            await servers.enter_async_context(UnitServer(stranger, host="127.0.0.2", port=port))
            await servers.enter_async_context(UnitServer(garage, host="127.0.0.5", port=port))
            await wait_until(
                lambda: bool(bridge.unit_lines("garage", "moved from 127.0.0.2")),
                60,
                "the move in the log",
            )
            await wait_until(
                lambda: capture.payloads(AVAILABILITY)[-1:] == [b"online"],
                30,
                "garage online again",
            )
            seen = len(capture.payloads(ENERGY_TOPIC))
            await wait_until(
                lambda: len(capture.payloads(ENERGY_TOPIC)) > seen, 30, "energy after the move"
            )
            # Same topics, an energy total that never dropped, the same entities.
            energies = [float(p) for p in capture.payloads(ENERGY_TOPIC)]
            assert min(energies[energies.index(energy_before) :]) >= energy_before
            assert b"moved" in capture.payloads("twc3/garage/derived/reachability")
            # The same entities (topics and unique ids); the device's link follows the unit.
            discovery_after = await wait_for_retained(
                broker.port,
                lambda found: any(f"127.0.0.5:{port}" in payload for payload in found.values()),
                pattern="homeassistant/#",
            )
            discovery_after = {t: p for t, p in discovery_after.items() if t in discovery_before}
            assert discovery_after.keys() == discovery_before.keys()
            for topic, payload in discovery_before.items():
                assert json.loads(discovery_after[topic]).get("unique_id") == json.loads(
                    payload
                ).get("unique_id")
            # The unit now at the old address was refused, never published as the garage.
            assert set(capture.payloads("twc3/garage/version/serial_number")) == {
                GARAGE_SERIAL.encode()
            }
            assert any(
                STRANGER_SERIAL.encode() in error
                for error in capture.payloads("twc3/garage/poller/last_error")
            )
            assert "jumped" not in bridge.log_text()
            assert not [t for _, t, _ in capture.messages if STRANGER_SERIAL.lower() in t]
            # It is offered as a ready-to-paste block, once; the configuration is untouched.
            await wait_until(
                lambda: "[[connectors]]" in bridge.log_text(), 30, "the stranger's block"
            )
            assert bridge.log_text().count("[[connectors]]") == 1
            assert (tmp_path / "bridge.toml").read_text() == config_text
            assert_clean_log(bridge)
            await stop_cleanly(bridge)
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        assert state["addresses"][GARAGE_SERIAL] == f"127.0.0.5:{port}"

        # A restart starts at the address where the unit was last found.
        async with (
            live_capture(broker.port) as capture,
            run_bridge(tmp_path, broker.port, config_body) as bridge,
        ):
            await wait_until(
                lambda: bool(bridge.unit_lines("garage", f"starting at 127.0.0.5:{port}")),
                30,
                "the saved address used at start",
            )
            await wait_until(
                lambda: bool(bridge.unit_lines("garage", "online")), 30, "garage online"
            )
            assert "moved" not in bridge.log_text()
            assert_clean_log(bridge)


@pytest.mark.broker
async def test_add_new_publishes_a_stranger_and_keeps_it_across_a_restart(
    broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    garage = _charging_unit(GARAGE_SERIAL, seed=183)
    stranger = _charging_unit(STRANGER_SERIAL, seed=184)
    config_body = _config(tmp_path / "state", port, add_new=True)
    stranger_id = STRANGER_SERIAL.lower()
    async with (
        UnitServer(garage, host="127.0.0.2", port=port),
        UnitServer(stranger, host="127.0.0.3", port=port),
    ):
        for run in range(2):
            async with (
                live_capture(broker.port) as capture,
                run_bridge(tmp_path, broker.port, config_body) as bridge,
            ):
                await wait_until(
                    lambda: bool(bridge.unit_lines(stranger_id, "online")),
                    40,
                    f"the stranger polled as {stranger_id} (run {run + 1})",
                )
                await wait_until(
                    lambda: bool(capture.payloads(f"twc3/{stranger_id}/derived/energy_wh")),
                    30,
                    "the stranger's energy total",
                )
                await wait_for_retained(
                    broker.port,
                    lambda found: any(stranger_id in topic for topic in found),
                    pattern="homeassistant/#",
                )
                assert "[[connectors]]" not in bridge.log_text()
                added = bridge.log_text().count(f"added as {stranger_id}")
                assert added == (1 if run == 0 else 0), "added again after the restart"
                assert_clean_log(bridge)
                await stop_cleanly(bridge)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["found_units"] == {STRANGER_SERIAL: f"127.0.0.3:{port}"}


@pytest.mark.broker
async def test_a_connector_given_by_serial_alone_is_found_at_start(
    broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    garage = _charging_unit(GARAGE_SERIAL, seed=185)
    config_body = _config(
        tmp_path / "state",
        port,
        add_new=False,
        connector=f'serial = "{GARAGE_SERIAL}"\nid = "garage"\n',
    )
    async with (
        UnitServer(garage, host="127.0.0.4", port=port),
        live_capture(broker.port) as capture,
        run_bridge(tmp_path, broker.port, config_body) as bridge,
    ):
        await wait_until(
            lambda: (
                b"online" in capture.payloads("twc3/garage/availability")
                and bool(capture.payloads(ENERGY_TOPIC))
            ),
            40,
            "the unit found by its serial and published",
        )
        assert bridge.unit_lines("garage", f"127.0.0.4:{port}")
        assert_clean_log(bridge)
