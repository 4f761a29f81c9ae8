"""Replay of the recorded vitals traces through UnitDerivation, checked against the raw bodies.

The traces are in ``tests/fixtures/traces`` (their origin is in README.source.txt there); every
expectation is computed here from the raw JSON, independently of the bridge's parser and derivation.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.core.derived import Event
from bridge.core.models import parse_endpoint
from bridge.core.unit_values import UnitDerivation
from tests.conftest import TRACES

TRACE_FILES = sorted(TRACES.glob("*.log"))
MARKER = " [INFO] vitals: "


def _trace_id(path: Path) -> str:
    return path.name.removeprefix("vitals-trace_winksaville_").split(".")[0]


TRACE_PARAMS = [pytest.param(path, id=_trace_id(path)) for path in TRACE_FILES]


@dataclass(frozen=True)
class Step:
    """One trace line: its time, the raw body as plain JSON, and what the bridge derived."""

    source: str
    t: float
    raw: dict[str, Any]
    values: dict[str, Any]
    events: tuple[Event, ...]


def _seconds(stamp: str) -> float:
    """RFC 3339 UTC with up to nanoseconds → epoch seconds (fromisoformat takes 6 digits)."""
    whole, _, fraction = stamp.removesuffix("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (fraction or "0"))


def _lines(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        stamp, marker, body = line.partition(MARKER)
        assert marker, f"unexpected line in {path.name}: {line[:80]!r}"
        out.append((_seconds(stamp.strip()), body))
    return out


@functools.cache
def replay(*paths: Path) -> tuple[Step, ...]:
    """Feed the files' samples, in the order given, to one fresh UnitDerivation."""
    derivation = UnitDerivation()
    steps = []
    for path in paths:
        for t, body in _lines(path):
            derived = derivation.feed(parse_endpoint("vitals", body.encode()), t)
            steps.append(
                Step(path.name, t, json.loads(body), derived.values, tuple(derived.events))
            )
    return tuple(steps)


def _trace(fragment: str) -> Path:
    matches = [path for path in TRACE_FILES if fragment in path.name]
    assert len(matches) == 1, f"one trace *{fragment}* expected in {TRACES}, found {matches}"
    return matches[0]


def _rose(steps: tuple[Step, ...], i: int, key: str) -> bool:
    return not steps[i - 1].raw[key] and bool(steps[i].raw[key])


def _fell(steps: tuple[Step, ...], i: int, key: str) -> bool:
    return bool(steps[i - 1].raw[key]) and not steps[i].raw[key]


def expected_events(steps: tuple[Step, ...]) -> list[tuple[int, str]]:
    """Events the raw bodies call for, as (sample index, type)."""
    expected = []
    for i in range(1, len(steps)):
        if steps[i].raw["uptime_s"] < steps[i - 1].raw["uptime_s"]:
            expected.append((i, "rebooted"))
        if _rose(steps, i, "vehicle_connected"):
            expected.append((i, "plugged_in"))
        if _rose(steps, i, "contactor_closed"):
            expected.append((i, "charging_started"))
        if _fell(steps, i, "contactor_closed"):
            expected.append((i, "charging_stopped"))
        if _fell(steps, i, "vehicle_connected"):
            expected += [(i, "unplugged"), (i, "session_ended")]
    return sorted(expected)


def actual_events(steps: tuple[Step, ...]) -> list[tuple[int, str]]:
    """Events the bridge produced, as (sample index, type)."""
    return sorted((i, event.type) for i, step in enumerate(steps) for event in step.events)


def reference_energy(steps: tuple[Step, ...]) -> float:
    """Sum over sessions (split at plug-ins and reboots) of the session energy gained.

    A session that starts at a plug-in or reboot starts from 0, so it gained its maximum; the
    stretch before the first of them gained its maximum minus the value it started with.
    """
    total = 0.0
    base = peak = steps[0].raw["session_energy_wh"]
    for i in range(1, len(steps)):
        energy = steps[i].raw["session_energy_wh"]
        rebooted = steps[i].raw["uptime_s"] < steps[i - 1].raw["uptime_s"]
        if _rose(steps, i, "vehicle_connected") or rebooted:
            total += peak - base
            base, peak = 0.0, energy
        peak = max(peak, energy)
    return float(total + peak - base)


def _live(raw: dict[str, Any]) -> bool:
    """Contactor closed and the output voltages real (not the few volts of idle noise)."""
    volts = (raw["voltageA_v"], raw["voltageB_v"], raw["voltageC_v"])
    return bool(raw["contactor_closed"]) and max(volts) >= 100.0


def test_all_traces_are_present() -> None:
    """Ten traces: eight of the first unit, two of the second (an empty glob would test nothing)."""
    assert len(TRACE_FILES) == 10
    assert sum("tt-" in path.name for path in TRACE_FILES) == 2


# --- every trace --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_trace_is_well_formed(path: Path) -> None:
    """Every line parses, times increase, and each body has the documented booleans."""
    steps = replay(path)
    assert steps
    assert all(later.t > earlier.t for earlier, later in itertools.pairwise(steps))
    assert all(isinstance(step.raw["vehicle_connected"], bool) for step in steps)


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_events_follow_the_raw_transitions(path: Path) -> None:
    """Plug-in, charge start/stop, unplug, session end and reboot events as the trace shows."""
    steps = replay(path)
    assert actual_events(steps) == expected_events(steps)


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_each_file_starting_fresh_has_no_rebooted_event(path: Path) -> None:
    """Within one file uptime_s never goes back, and a fresh replay's first sample has no events."""
    steps = replay(path)
    assert not steps[0].events
    assert all(event.type != "rebooted" for step in steps for event in step.events)


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_energy_total_matches_reference_and_never_decreases(path: Path) -> None:
    """The bridge total ends at the sum of session gains and never goes down on the way."""
    steps = replay(path)
    totals = [step.values["energy_wh"] for step in steps]
    assert all(later >= earlier for earlier, later in itertools.pairwise(totals))
    assert totals[-1] == pytest.approx(reference_energy(steps), abs=0.01)


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_power_and_current_are_zero_while_contactor_open(path: Path) -> None:
    """Idle noise and the one-sample lag after opening never show as power or current."""
    steps = replay(path)
    open_steps = [step for step in steps if not step.raw["contactor_closed"]]
    assert open_steps
    for step in open_steps:
        assert step.values["power_w"] == 0.0
        assert step.values["current_a"] == 0.0
        assert step.values["charging"] is False


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_split_phase_detected_once_contactor_closes_with_real_voltages(path: Path) -> None:
    """From the first closed sample with real output voltages on, phase_mode is split_phase."""
    steps = replay(path)
    first = next((i for i, step in enumerate(steps) if _live(step.raw)), None)
    assert first is not None, "every trace has the contactor closing on the NA supply"
    assert {step.values["phase_mode"] for step in steps[first:]} == {"split_phase"}


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_charging_power_is_grid_voltage_times_vehicle_current(path: Path) -> None:
    """Once split phase is known, power while closed is grid_v × vehicle_current_a."""
    steps = replay(path)
    for step in steps:
        if step.raw["contactor_closed"] and step.values["phase_mode"] == "split_phase":
            expected = step.raw["grid_v"] * max(0.0, step.raw["vehicle_current_a"])
            assert step.values["power_w"] == pytest.approx(expected, abs=0.06)


@pytest.mark.parametrize("path", TRACE_PARAMS)
def test_state_names_and_booleans(path: Path) -> None:
    """No state is called "error"; 7 is a transition; status follows the booleans."""
    steps = replay(path)
    names = {step.raw["evse_state"]: step.values["evse_state_name"] for step in steps}
    assert "error" not in names.values()
    assert names.get(7, "transition") == "transition"
    assert names.get(1, "not_connected") == "not_connected"
    assert names.get(11, "charging") == "charging"
    for step in steps:
        assert step.values["plugged_in"] is step.raw["vehicle_connected"]
        expected_status = (
            "charging"
            if step.raw["contactor_closed"]
            else "connected"
            if step.raw["vehicle_connected"]
            else "disconnected"
        )
        assert step.values["status"] == expected_status


# --- specific known facts -----------------------------------------------------------------------


def test_logs5tt_full_40a_charge() -> None:
    """One charge start/stop pair; session_ended has the last energy, peak ≈ grid_v × 40 A."""
    steps = replay(_trace("logs5tt"))
    types = [event.type for step in steps for event in step.events]
    assert types.count("charging_started") == 1
    assert types.count("charging_stopped") == 1
    unplug = next(i for i in range(1, len(steps)) if _fell(steps, i, "vehicle_connected"))
    plug = max(i for i in range(1, unplug) if _rose(steps, i, "vehicle_connected"))
    ended = [e for e in steps[unplug].events if e.type == "session_ended"]
    assert len(ended) == 1
    details = ended[0].details
    assert details["energy_wh"] == steps[unplug - 1].raw["session_energy_wh"]
    assert details["energy_wh"] > 100.0
    assert details["duration_s"] == steps[unplug - 1].raw["session_s"]
    session = [step.raw for step in steps[plug:unplug] if step.raw["contactor_closed"]]
    grid_times_vehicle = max(raw["grid_v"] * raw["vehicle_current_a"] for raw in session)
    phase_sum = max(
        raw["voltageA_v"] * raw["currentA_a"]
        + raw["voltageB_v"] * raw["currentB_a"]
        + raw["voltageC_v"] * raw["currentC_a"]
        for raw in session
    )
    assert details["peak_power_w"] == pytest.approx(grid_times_vehicle, abs=0.06)
    assert abs(details["peak_power_w"] - phase_sum) > 100.0
    grids = [raw["grid_v"] for raw in session]
    assert 39.5 * min(grids) < details["peak_power_w"] < 40.5 * max(grids)  # a 40 A charge


def test_logs5tt_lagging_phase_current_after_opening_gives_zero_power() -> None:
    """The sample after the contactor opens still shows the charge on a phase; power is 0."""
    steps = replay(_trace("logs5tt"))
    lagging = [
        step for step in steps if not step.raw["contactor_closed"] and step.raw["currentB_a"] > 10.0
    ]
    assert lagging, "logs5tt shows the one-sample lag of the per-phase currents"
    assert all(step.values["power_w"] == 0.0 for step in lagging)


@pytest.mark.parametrize(
    ("fragment", "uptime"),
    [("logs6-", 396), ("logs7-", 169), ("logs8-", 27)],
    ids=["power-cycle", "pw-change-power-cycle", "factory-reset"],
)
def test_files_after_a_reboot_report_last_boot(fragment: str, uptime: int) -> None:
    """Started fresh after a reboot: no rebooted event, last_boot is first time - uptime."""
    steps = replay(_trace(fragment))
    assert steps[0].raw["uptime_s"] == uptime
    assert all(event.type != "rebooted" for step in steps for event in step.events)
    boot = datetime.fromtimestamp(steps[0].t - uptime, tz=UTC).replace(second=0, microsecond=0)
    expected = boot.isoformat().replace("+00:00", "Z")
    assert steps[0].values["last_boot"] == expected
    assert {step.values["last_boot"] for step in steps} == {expected}


def _same_unit_in_time_order(second_unit: bool) -> tuple[Path, ...]:
    files = [path for path in TRACE_FILES if ("tt-" in path.name) == second_unit]
    assert len(files) >= 2, "needs at least two traces of one unit"
    return tuple(sorted(files, key=lambda path: _lines(path)[0][0]))


def test_one_unit_replayed_across_files_reports_each_reboot() -> None:
    """The first unit's files in time order: rebooted exactly where uptime went back."""
    files = _same_unit_in_time_order(second_unit=False)
    steps = replay(*files)
    rebooted = {steps[i].source for i, kind in actual_events(steps) if kind == "rebooted"}
    dropped = {
        steps[i].source
        for i in range(1, len(steps))
        if steps[i].raw["uptime_s"] < steps[i - 1].raw["uptime_s"]
    }
    assert rebooted == dropped
    assert {_trace_id(Path(name)).split("-")[0] for name in rebooted} >= {"logs6", "logs7", "logs8"}
    assert actual_events(steps) == expected_events(steps)


def test_second_unit_replayed_across_files_counts_the_unseen_session_once() -> None:
    """logs5tt then logs10tt: the session retained across the gap counts once, then the next."""
    files = _same_unit_in_time_order(second_unit=True)
    steps = replay(*files)
    totals = [step.values["energy_wh"] for step in steps]
    assert all(later >= earlier for earlier, later in itertools.pairwise(totals))
    assert totals[-1] == pytest.approx(reference_energy(steps), abs=0.01)
    assert actual_events(steps) == expected_events(steps)
