"""The state file: its schema and versions, tolerant loading, atomic saves, one warning a time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.core.derived import SessionEnergy
from bridge.runtime.statefile import STATE_VERSION, EnergyRecord, SavedState, StateFile, parse_state

LOGGER = "bridge.runtime.statefile"
PREFIX = "homeassistant"
TOPIC = "homeassistant/sensor/twc3_s1/vitals_grid_v/config"
SET_ASIDE = re.compile(r"state\.json\.bad-\d{8}T\d{6}Z(-\d+)?")


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def _blocked(tmp_path: Path) -> StateFile:
    """A state file whose folder is a regular file, so creating the folder fails (even as root)."""
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    return StateFile(blocker / "state.json")


def _on_disk(state: StateFile) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(state.path.read_text(encoding="utf-8"))
    return data


def _loaded_with(tmp_path: Path, version: int, section_key: str, section: object) -> StateFile:
    """A state file of ``version`` with one address and ``section`` under ``section_key``."""
    path = tmp_path / "state.json"
    data = {"version": version, "addresses": {"S1": "10.0.0.1"}, section_key: section}
    path.write_text(json.dumps(data), encoding="utf-8")
    return StateFile(path)


def _energy(total_wh: float) -> SessionEnergy:
    return SessionEnergy(total_wh=total_wh, last_session_wh=10.0, last_time=5.0, prev_uptime_s=7)


def _change(state: StateFile, n: int) -> None:
    """One small change in memory (the address of unit S<n>)."""
    state.keep_address("S1", f"10.0.0.{n}")


# --- loading: a missing, unusable or partly valid file ------------------------------------------


def _empty(state: StateFile) -> bool:
    return (
        state.energy_records() == []
        and state.announced_topics() == {}
        and state.announced_components() == {}
        and state.address_of("S1") is None
    )


def test_missing_file_loads_empty_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No file yet is the normal first start: nothing saved, no warning, nothing to write."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = StateFile(tmp_path / "missing" / "state.json")
    assert _empty(state)
    assert caplog.records == []
    assert not state.dirty


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("{not json", "is not valid JSON"),
        ("", "is not valid JSON"),
        ("\x00\x01", "is not valid JSON"),
        ("[" * 100_000, "is not valid JSON"),
        ("[1, 2]", "holds no JSON object"),
        ("[]", "holds no JSON object"),
        ("null", "holds no JSON object"),
        ('"text"', "holds no JSON object"),
        ('{"version": 5, "energy": []}', "has version 5, unknown to this bridge"),
        ('{"version": "2"}', "has a version that is no number"),
        ('{"version": true}', "has a version that is no number"),
        ('{"version": 0}', "has version 0"),
    ],
)
def test_unusable_file_starts_empty_with_one_warning_and_is_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, warning: str
) -> None:
    """Not JSON, no object or an unknown version: one warning, the file renamed, never lost."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "state.json"
    path.write_text(text, encoding="utf-8")
    state = StateFile(path)
    assert _empty(state)
    (message,) = _messages(caplog, logging.WARNING)
    assert warning in message
    assert "starting empty" in message
    assert state.set_aside is not None
    assert SET_ASIDE.fullmatch(state.set_aside.name)
    assert f"kept aside as {state.set_aside.name}" in message
    assert state.set_aside.read_text(encoding="utf-8") == text
    assert not path.exists()
    assert state.flush()  # the bridge's state goes on in a new file
    assert _on_disk(state)["version"] == STATE_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["state.json", state.set_aside.name]
    )


def test_set_aside_file_is_named_by_utc_time_and_never_replaces_another(tmp_path: Path) -> None:
    """Two bad files in the same second get two names: no set-aside file is written over."""
    moment = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    names = []
    for text in ("first", "second"):
        (tmp_path / "state.json").write_text(text, encoding="utf-8")
        state = StateFile(tmp_path / "state.json", clock=lambda: moment)
        state.load()
        assert state.set_aside is not None
        names.append(state.set_aside.name)
    assert names == ["state.json.bad-20250304T050607Z", "state.json.bad-20250304T050607Z-1"]
    assert (tmp_path / names[0]).read_text(encoding="utf-8") == "first"
    assert (tmp_path / names[1]).read_text(encoding="utf-8") == "second"


def test_invalid_utf8_starts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bytes that are not UTF-8 are treated like any unusable file."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "state.json"
    path.write_bytes('{"unit": "°C"}'.encode("latin-1"))
    state = StateFile(path)
    assert _empty(state)
    (message,) = _messages(caplog, logging.WARNING)
    assert "is not UTF-8 text" in message
    assert state.set_aside is not None


def test_unreadable_file_starts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A path that cannot be read (here: a directory) starts empty with one warning."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    (tmp_path / "state.json").mkdir()
    state = StateFile(tmp_path / "state.json")
    assert _empty(state)
    (message,) = _messages(caplog, logging.WARNING)
    assert "cannot be read" in message
    assert state.set_aside is not None
    assert state.set_aside.is_dir()


def test_unreadable_folder_warns_once_with_nothing_to_keep_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = _blocked(tmp_path)
    assert _empty(state)
    (message,) = _messages(caplog, logging.WARNING)
    assert "cannot be read (Not a directory); nothing to keep aside; starting empty" in message


VERSION_1 = {
    "energy": {
        "S1": {
            "total_wh": 1234.5,
            "last_session_wh": 10.0,
            "last_time": 5.0,
            "last_uptime_s": 7,
            "last_session_s": 3,
            "last_connected": True,
            "prev_time": 6.0,
            "reset_pending": False,
        },
        "S2": {"total_wh": 99.0},
    },
    "addresses": {"S1": "192.0.2.10", "S2": "garage.local"},
    "discovery": {
        "topics": {TOPIC: "garage", "homeassistant/device/twc3_s1/config": "garage"},
        "components": {"garage": {"vitals_grid_v": "sensor"}},
    },
}


def test_version_1_is_read_quietly_and_written_as_the_current_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Today's file (no version key) loads whole, without a warning or a set-aside file."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(VERSION_1), encoding="utf-8")
    state = StateFile(path)
    s1 = state.saved_energy_for_serial("S1")
    assert s1 is not None
    assert s1.connector is None
    assert s1.energy() == SessionEnergy(
        total_wh=1234.5,
        last_session_wh=10.0,
        last_time=5.0,
        prev_uptime_s=7,
        prev_session_s=3,
        prev_connected=True,
        prev_time=6.0,
    )
    assert state.address_of("S2") == "garage.local"
    assert state.announced_topics() == VERSION_1["discovery"]["topics"]  # type: ignore[index]
    assert state.announced_components() == {"garage": {"vitals_grid_v": "sensor"}}
    assert caplog.records == []
    assert state.set_aside is None
    assert not state.dirty  # nothing changed: not rewritten

    _change(state, 9)
    assert state.flush()
    saved = _on_disk(state)
    assert saved["version"] == STATE_VERSION
    assert {r["serial"]: r["total_wh"] for r in saved["energy"]} == {"S1": 1234.5, "S2": 99.0}
    assert saved["discovery"] == VERSION_1["discovery"]
    again = StateFile(path)
    assert again.energy_records() == state.energy_records()
    assert again.address_of("S1") == "10.0.0.9"


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ({"energy": 5}, "energy is not an object; dropped"),
        ({"energy": {"S9": {"total_wh": -1}}}, "1 invalid energy entry dropped"),
        ({"energy": {"S9": {"total_wh": "12"}}}, "1 invalid energy entry dropped"),
        ({"energy": {"S9": [1]}}, "1 invalid energy entry dropped"),
        ({"addresses": ["x"]}, "addresses is not an object; dropped"),
        ({"addresses": {"S9": 5}}, "1 invalid addresses entry dropped"),
        ({"discovery": "x"}, "discovery is not an object; dropped"),
        ({"discovery": {"topics": []}}, "discovery topic is not an object; dropped"),
        (
            {"discovery": {"topics": {"homeassistant/sensor/+/x/config": "a"}}},
            "1 invalid discovery topic entry dropped",
        ),
        ({"discovery": {"topics": {"homeassistant/#": "a"}}}, "invalid discovery topic"),
        ({"discovery": {"topics": {"homeassistant//x/config": "a"}}}, "invalid discovery topic"),
        ({"discovery": {"topics": {"homeassistant/a\x00/config": "a"}}}, "invalid discovery"),
        ({"discovery": {"topics": {"other/sensor/x/config": "a"}}}, "invalid discovery topic"),
        ({"discovery": {"topics": {"homeassistant/x/config": 3}}}, "invalid discovery topic"),
        ({"discovery": {"components": {"a": {"k": 1}}}}, "invalid discovery component"),
        ({"discovery": {"extra": 1}}, "discovery key 'extra' dropped"),
        ({"surprise\n\x1b[31m": 1}, "unknown key 'surprise\\n\\x1b[31m' dropped"),
    ],
)
def test_a_broken_part_is_dropped_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: dict[str, Any], problem: str
) -> None:
    """One bad section or entry: one warning naming it, the file kept aside, the rest loaded."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    data: dict[str, Any] = json.loads(json.dumps(VERSION_1))
    for key, value in broken.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            for inner, part in value.items():
                if isinstance(part, dict) and isinstance(data[key].get(inner), dict):
                    data[key][inner].update(part)
                else:
                    data[key][inner] = part
        else:
            data[key] = value
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    state = StateFile(path)
    state.load()
    (message,) = _messages(caplog, logging.WARNING)
    assert problem in message
    assert "starting with its valid part" in message
    assert "\n" not in message
    assert "\x1b" not in message
    assert state.set_aside is not None
    assert json.loads(state.set_aside.read_text(encoding="utf-8")) == data
    # What was not broken is all there.
    if "energy" not in broken:
        assert state.saved_energy_for_serial("S1") is not None
        assert state.saved_energy_for_serial("S2") is not None
    if "addresses" not in broken:
        assert state.address_of("S1") == "192.0.2.10"
    if "discovery" not in broken:
        assert TOPIC in state.announced_topics()
    if "energy" in broken and broken["energy"] != 5:
        assert state.saved_energy_for_serial("S9") is None
        assert state.saved_energy_for_serial("S1") is not None
    assert not any("+" in t or "#" in t or "\x00" in t for t in state.announced_topics())
    assert state.dirty  # the valid part is written back by the next flush
    assert state.flush()
    assert StateFile(path).energy_records() == state.energy_records()


def test_parse_state_checks_topics_against_the_configured_prefix() -> None:
    """A topic under another prefix is not one of this bridge's configs."""
    data = {"version": 2, "discovery": {"topics": {"ha/sensor/x/config": "a", TOPIC: "b"}}}
    loaded, problems = parse_state(data, "ha")
    assert loaded.topics == {"ha/sensor/x/config": "a"}
    assert problems == ["1 invalid discovery topic entry dropped"]


def test_damaged_side_fields_of_a_record_cost_its_session_base_not_its_total() -> None:
    """A record whose total is valid survives a damaged session field."""
    entry = {"serial": "S1", "total_wh": 50.0, "last_session_wh": "x", "last_time": 5.0}
    loaded, problems = parse_state({"version": 2, "energy": [entry]}, PREFIX)
    assert problems == []
    (record,) = loaded.energy
    assert record.energy() == SessionEnergy(total_wh=50.0)


@pytest.mark.parametrize(
    "entry",
    [
        {"total_wh": 5.0},  # neither serial nor connector
        {"serial": "", "total_wh": 5.0},
        {"serial": "S1", "total_wh": float("inf")},
        {"serial": "S1", "total_wh": True},
        {"serial": "S1"},
        {"serial": 7, "total_wh": 5.0},
        "S1",
    ],
)
def test_invalid_energy_records_are_dropped(entry: object) -> None:
    loaded, problems = parse_state({"version": 2, "energy": [entry]}, PREFIX)
    assert loaded.energy == []
    assert problems == ["1 invalid energy entry dropped"]


# --- energy records --------------------------------------------------------------------------


def test_energy_is_found_by_connector_key_or_by_the_serial_last_seen_at_the_address(
    tmp_path: Path,
) -> None:
    """A connector key finds its record; a file without one finds it through the address book."""
    state = StateFile(tmp_path / "state.json")
    state.keep_energy("garage", "S1", _energy(100.0))
    state.keep_energy("192.0.2.7", None, _energy(7.0))
    state.keep_address("S1", "192.0.2.10")
    assert state.flush()
    restarted = StateFile(state.path)
    by_key = restarted.saved_energy_for_connector("garage", "elsewhere")
    assert by_key is not None
    assert (by_key.serial, by_key.connector, by_key.total_wh) == ("S1", "garage", 100.0)
    by_address = restarted.saved_energy_for_connector("renamed", "192.0.2.10")
    assert by_address == by_key
    no_serial = restarted.saved_energy_for_connector("192.0.2.7", "192.0.2.7")
    assert no_serial is not None
    assert (no_serial.serial, no_serial.total_wh) == (None, 7.0)
    assert restarted.saved_energy_for_connector("other", "192.0.2.99") is None
    assert restarted.saved_energy_for_serial("S1") == by_key


def test_saved_records_stay_as_loaded_while_live_ones_change(tmp_path: Path) -> None:
    """What a unit finds when its serial arrives is the total saved at start, not this run's."""
    state = StateFile(tmp_path / "state.json")
    state.keep_energy("garage", "S1", _energy(100.0))
    assert state.flush()
    restarted = StateFile(state.path)
    restarted.keep_energy("garage", "S1", _energy(150.0))
    saved = restarted.saved_energy_for_serial("S1")
    assert saved is not None
    assert saved.total_wh == 100.0
    assert [r.total_wh for r in restarted.energy_records()] == [150.0]


def test_a_record_superseded_under_a_new_key_goes_but_a_higher_one_stays(tmp_path: Path) -> None:
    """Renamed id: the new key's record replaces the old one only once it holds at least as much."""
    state = StateFile(tmp_path / "state.json")
    state.keep_energy("garage", "S1", _energy(100.0))
    state.keep_energy("carport", "S1", _energy(40.0))
    assert sorted((r.connector, r.total_wh) for r in state.energy_records()) == [
        ("carport", 40.0),
        ("garage", 100.0),
    ]
    state.keep_energy("carport", "S1", _energy(140.0))
    assert [(r.connector, r.total_wh) for r in state.energy_records()] == [("carport", 140.0)]


def test_keeping_the_same_energy_again_changes_nothing(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    state.keep_energy("garage", "S1", _energy(100.0))
    assert state.flush()
    state.keep_energy("garage", "S1", _energy(100.0))
    state.keep_address("S1", "h")
    assert state.flush()
    writes = state.writes
    state.keep_address("S1", "h")
    state.keep_energy("garage", "S1", _energy(100.0))
    assert not state.dirty
    assert state.writes == writes


def test_energy_record_round_trips_the_accumulator() -> None:
    energy = SessionEnergy(
        total_wh=12.5,
        last_session_wh=3.0,
        last_time=100.0,
        prev_uptime_s=50,
        prev_session_s=40,
        prev_connected=False,
        prev_time=101.0,
        reset_pending=True,
    )
    record = EnergyRecord.of("garage", "S1", energy)
    assert EnergyRecord.model_validate_json(record.model_dump_json()).energy() == energy


# --- save ---------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    """What is kept loads back equal (text of any script too); the folder is created on the way."""
    state = StateFile(tmp_path / "deep" / "er" / "state.json")
    topics = {TOPIC: "Grid °C μV ✓"}
    components = {"Grid °C μV ✓": {"vitals_grid_v": "sensor"}}
    state.keep_announced(topics, components)
    state.keep_energy("Garage ✓", "S1", _energy(3.5))
    state.keep_address("S1", "wallconnector.local")
    assert state.flush()
    again = StateFile(state.path)
    assert again.announced_topics() == topics
    assert again.announced_components() == components
    assert again.energy_records() == state.energy_records()
    assert again.address_of("S1") == "wallconnector.local"
    assert _on_disk(state)["discovery"] == {"topics": topics, "components": components}
    written = SavedState.model_validate(_on_disk(state))  # the schema, as documented
    assert written.version == STATE_VERSION
    assert written.energy == state.energy_records()


def test_save_replaces_the_whole_file(tmp_path: Path) -> None:
    """A second save replaces the first, leaving valid JSON and no temporary files."""
    state = StateFile(tmp_path / "state.json")
    state.keep_announced({f"{TOPIC}{n}": "x" * 100 for n in range(100)}, {})
    assert state.flush()
    state.keep_announced({TOPIC: "garage"}, {})
    assert state.flush()
    assert _on_disk(state)["discovery"]["topics"] == {TOPIC: "garage"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_save_returns_false_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every failing save returns False; only the first of a run of failures warns."""
    state = _blocked(tmp_path)
    state.load()
    caplog.clear()  # the start's own warning: nothing to read
    caplog.set_level(logging.INFO, logger=LOGGER)
    results = []
    for n in range(4):
        _change(state, n)
        results.append(state.flush())
    assert results == [False] * 4
    (message,) = _messages(caplog, logging.WARNING)
    assert "cannot write state file" in message
    assert str(state.path) in message
    assert _messages(caplog, logging.INFO) == []


def test_failed_rename_leaves_no_temporary_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the final rename fails the temporary file is removed again."""
    target = tmp_path / "state.json"
    state = StateFile(target)
    state.load()
    target.mkdir()
    (target / "keep").write_text("x")
    caplog.set_level(logging.INFO, logger=LOGGER)
    _change(state, 1)
    assert state.flush() is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert len(_messages(caplog, logging.WARNING)) == 1


def test_recovery_logs_info_and_rearms_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a failure, a good save logs once at INFO; a new failure warns again."""
    state = _blocked(tmp_path)
    state.load()
    caplog.clear()  # the start's own warning: nothing to read
    caplog.set_level(logging.INFO, logger=LOGGER)
    blocker = state.path.parent
    _change(state, 1)
    assert state.flush() is False
    blocker.unlink()
    _change(state, 2)
    assert state.flush() is True
    _change(state, 3)
    assert state.flush() is True
    (info,) = _messages(caplog, logging.INFO)
    assert "writable again" in info
    assert _on_disk(state)["addresses"] == {"S1": "10.0.0.3"}

    state.path.unlink()
    blocker.rmdir()
    blocker.write_text("a file again")
    _change(state, 4)
    assert state.flush() is False
    _change(state, 5)
    assert state.flush() is False
    assert len(_messages(caplog, logging.WARNING)) == 2


# --- deferred writes ----------------------------------------------------------------------------


def test_changes_wait_for_flush_and_many_changes_make_one_write(tmp_path: Path) -> None:
    """Changes are in memory at once and on disk after one flush."""
    state = StateFile(tmp_path / "state.json")
    for n in range(100):
        _change(state, n)
    assert state.address_of("S1") == "10.0.0.99"
    assert state.dirty
    assert not state.path.exists()
    assert state.flush() is True
    assert _on_disk(state)["addresses"] == {"S1": "10.0.0.99"}
    assert state.writes == 1
    assert not state.dirty
    assert state.flush() is True  # nothing pending: no second write
    assert state.writes == 1


def test_failed_flush_keeps_the_change_for_the_next_try(tmp_path: Path) -> None:
    """A flush that fails leaves the change pending; once writable, the next flush writes it."""
    state = _blocked(tmp_path)
    state.keep_address("S1", "kept")
    assert state.flush() is False
    assert state.dirty
    state.path.parent.unlink()
    assert state.flush() is True
    assert _on_disk(state)["addresses"] == {"S1": "kept"}


# --- writes in a worker thread ------------------------------------------------------------------


def _hold_first_fsync(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the first fsync wait for ``release``; ``entered`` is set once it is waiting."""
    entered, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(10)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    return entered, release


async def test_flush_in_thread_leaves_the_event_loop_free_and_writes_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the disk write waits, the loop runs on; later changes wait for the next flush."""
    state = StateFile(tmp_path / "state.json")
    topics = {f"{TOPIC}a": "a"}
    state.keep_announced(topics, {})
    entered, release = _hold_first_fsync(monkeypatch)
    flushing = asyncio.create_task(state.flush_in_thread())
    assert await asyncio.to_thread(entered.wait, 10)
    assert not flushing.done()  # the loop runs on while the thread waits in fsync
    topics[f"{TOPIC}b"] = "b"  # the announcer changes its live mapping meanwhile
    state.keep_announced(topics, {})
    release.set()
    assert await flushing is True
    assert _on_disk(state)["discovery"]["topics"] == {f"{TOPIC}a": "a"}
    assert state.dirty
    assert await state.flush_in_thread() is True
    assert _on_disk(state)["discovery"]["topics"] == {f"{TOPIC}a": "a", f"{TOPIC}b": "b"}
    assert state.writes == 2


async def test_flush_in_thread_failing_warns_once_and_keeps_the_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _blocked(tmp_path)
    state.load()
    caplog.clear()  # the start's own warning: nothing to read
    caplog.set_level(logging.INFO, logger=LOGGER)
    state.keep_address("S1", "kept")
    assert await state.flush_in_thread() is False
    assert await state.flush_in_thread() is False
    assert state.dirty
    assert len(_messages(caplog, logging.WARNING)) == 1
    state.path.parent.unlink()
    assert await state.flush_in_thread() is True
    assert _on_disk(state)["addresses"] == {"S1": "kept"}


async def test_a_cancelled_flush_in_thread_leaves_the_change_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels the periodic flush mid-write; the final flush must still write."""
    state = StateFile(tmp_path / "state.json")
    _change(state, 1)
    entered, release = _hold_first_fsync(monkeypatch)
    flushing = asyncio.create_task(state.flush_in_thread())
    assert await asyncio.to_thread(entered.wait, 10)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert state.dirty
    release.set()
    assert state.flush() is True  # waits for the thread's write, then writes the same state again
    assert _on_disk(state)["addresses"] == {"S1": "10.0.0.1"}


def test_an_older_state_is_never_written_over_a_newer_one(tmp_path: Path) -> None:
    """A slow write of an earlier state that gets its turn after a later one is skipped."""
    state = StateFile(tmp_path / "state.json")
    _change(state, 1)
    older = state._take()  # as a flush in a thread takes it, before its turn at the disk
    assert older is not None
    _change(state, 2)
    assert state.flush() is True
    assert state._write(*older) is None
    assert _on_disk(state)["addresses"] == {"S1": "10.0.0.2"}


def test_what_a_write_takes_is_a_copy_later_changes_do_not_reach(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    topics = {"homeassistant/a/config": "garage"}
    components = {"garage": {"k": "sensor"}}
    state.keep_announced(topics, components)
    state.keep_energy("garage", "S1", _energy(1.0))
    taken = state._take()
    assert taken is not None
    topics["homeassistant/b/config"] = "carport"
    components["garage"]["j"] = "sensor"
    state.keep_energy("garage", "S1", _energy(2.0))
    state.keep_address("S1", "h")
    rendered = taken[0].render()
    assert rendered["discovery"] == {
        "topics": {"homeassistant/a/config": "garage"},
        "components": {"garage": {"k": "sensor"}},
    }
    assert [r["total_wh"] for r in rendered["energy"]] == [1.0]  # type: ignore[attr-defined]
    assert rendered["addresses"] == {}


# --- published unit ids (version 3) -------------------------------------------------------------


@pytest.mark.parametrize("version", [None, 1, 2])
def test_older_files_migrate_quietly_with_no_published_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: int | None
) -> None:
    """Versions 1 and 2 had no published ids: read without a warning, written back as current."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    data: dict[str, Any] = {"addresses": {"S1": "10.0.0.1"}}
    if version is not None:
        data["version"] = version
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    state = StateFile(path)
    assert state.published_units() == {}
    assert state.address_of("S1") == "10.0.0.1"
    assert _messages(caplog, logging.WARNING) == []
    state.keep_published("garage", "garage")
    assert state.flush()
    on_disk = _on_disk(state)
    assert on_disk["version"] == STATE_VERSION
    assert on_disk["published"] == {"garage": "garage"}
    assert on_disk["addresses"] == {"S1": "10.0.0.1"}
    SavedState.model_validate(on_disk)


def test_published_ids_survive_a_restart_and_forgetting_one_is_saved(tmp_path: Path) -> None:
    """Recorded ids come back after a restart; a forgotten id is gone from the next write."""
    path = tmp_path / "state.json"
    state = StateFile(path)
    state.keep_published("garage", "garage")
    state.keep_published("pt1234", "10.0.0.9")
    assert state.flush()
    again = StateFile(path)
    assert again.published_units() == {"garage": "garage", "pt1234": "10.0.0.9"}
    assert not again.dirty
    again.keep_published("garage", "garage")
    assert not again.dirty  # nothing new
    again.forget_published("garage")
    assert again.dirty
    assert again.flush()
    assert StateFile(path).published_units() == {"pt1234": "10.0.0.9"}


@pytest.mark.parametrize(
    ("section", "kept", "problem"),
    [
        ("not an object", {}, "published unit is not an object; dropped"),
        ({"#": "a", "a/b": "a", "+": "x", "ok": "ok"}, {"ok": "ok"}, "3 invalid published unit"),
        ({"ok": 5, "": "a", "fine": "10.0.0.1"}, {"fine": "10.0.0.1"}, "2 invalid published unit"),
        ({"bridge": "bridge", "x": ""}, {}, "2 invalid published unit entries dropped"),
    ],
)
def test_a_damaged_published_section_keeps_its_valid_ids_and_never_a_wildcard(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    section: object,
    kept: dict[str, str],
    problem: str,
) -> None:
    """An id becomes a subscription filter when cleared: a wildcard or '/' must never load."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = _loaded_with(tmp_path, 3, "published", section)
    assert state.published_units() == kept
    assert state.address_of("S1") == "10.0.0.1"
    (message,) = _messages(caplog, logging.WARNING)
    assert problem in message


# --- units found and added (version 4) ----------------------------------------------------------


@pytest.mark.parametrize("version", [None, 1, 2, 3])
def test_older_files_migrate_quietly_with_no_found_units(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: int | None
) -> None:
    """Versions 1 to 3 had no found units: read without a warning, written back as version 4."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    data: dict[str, Any] = {"addresses": {"S1": "10.0.0.1"}}
    if version is not None:
        data["version"] = version
    if version == 3:
        data["published"] = {"garage": "garage"}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    state = StateFile(path)
    assert state.found_units() == {}
    assert state.address_of("S1") == "10.0.0.1"
    assert _messages(caplog, logging.WARNING) == []
    state.keep_found_unit("S9", "10.0.0.9")
    assert state.flush()
    on_disk = _on_disk(state)
    assert on_disk["version"] == STATE_VERSION == 4
    assert on_disk["found_units"] == {"S9": "10.0.0.9"}
    assert on_disk["addresses"] == {"S1": "10.0.0.1"}
    assert on_disk["published"] == ({"garage": "garage"} if version == 3 else {})
    SavedState.model_validate(on_disk)


def test_found_units_survive_a_restart_and_forgetting_one_is_saved(tmp_path: Path) -> None:
    """Found units come back after a restart; a moved one keeps its new host; forgetting saves."""
    path = tmp_path / "state.json"
    state = StateFile(path)
    state.keep_found_unit("S1", "10.0.0.1")
    state.keep_found_unit("S2", "[fe80::2]:8080")
    assert state.flush()
    again = StateFile(path)
    assert again.found_units() == {"S1": "10.0.0.1", "S2": "[fe80::2]:8080"}
    assert not again.dirty
    again.keep_found_unit("S1", "10.0.0.1")
    assert not again.dirty  # nothing new
    again.keep_found_unit("S1", "10.0.0.7")
    again.forget_found_unit("S2")
    again.forget_found_unit("S3")  # never added: nothing happens
    assert again.dirty
    assert again.flush()
    assert StateFile(path).found_units() == {"S1": "10.0.0.7"}


@pytest.mark.parametrize(
    ("section", "kept", "problem"),
    [
        ("not an object", {}, "found unit is not an object; dropped"),
        (["S1", "10.0.0.1"], {}, "found unit is not an object; dropped"),
        ({"S1": 5, "": "10.0.0.2", "S3": "10.0.0.3"}, {"S3": "10.0.0.3"}, "2 invalid found unit"),
        (
            {"S1": "http://10.0.0.1/", "S2": "a b", "S3": "10.0.0.3:99999", "S4": "wc.local:81"},
            {"S4": "wc.local:81"},
            "3 invalid found unit entries dropped",
        ),
    ],
)
def test_a_damaged_found_units_section_keeps_its_valid_entries(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    section: object,
    kept: dict[str, str],
    problem: str,
) -> None:
    """A host becomes a connector's address at start: only entries that are a host load."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = _loaded_with(tmp_path, 4, "found_units", section)
    assert state.found_units() == kept
    assert state.address_of("S1") == "10.0.0.1"
    (message,) = _messages(caplog, logging.WARNING)
    assert problem in message
    assert "starting with its valid part" in message


def test_parse_state_reads_found_units_and_refuses_unknown_keys() -> None:
    """The pure reader: the section is read; a misspelt key is reported, not kept."""
    loaded, problems = parse_state(
        {"version": 4, "found_units": {"S1": "10.0.0.1"}, "found_unit": {"S2": "10.0.0.2"}},
        PREFIX,
    )
    assert loaded.found_units == {"S1": "10.0.0.1"}
    assert problems == ["unknown key 'found_unit' dropped"]
