"""The state file: tolerant loading, atomic saves, and one warning per run of failures."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.statefile import StateFile, _snapshot

LOGGER = "bridge.statefile"


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def _blocked(tmp_path: Path) -> StateFile:
    """A state file whose folder is a regular file, so creating the folder fails (even as root)."""
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    return StateFile(blocker / "state.json")


# --- load ---------------------------------------------------------------------------------------


def test_missing_file_loads_empty_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No file yet is the normal first start: an empty object and no warning."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert StateFile(tmp_path / "missing" / "state.json").load() == {}
    assert caplog.records == []


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("{not json", "is not valid JSON"),
        ("", "is not valid JSON"),
        ("\x00\x01", "is not valid JSON"),
        ("[1, 2]", "holds no JSON object"),
        ("null", "holds no JSON object"),
        ('"text"', "holds no JSON object"),
    ],
)
def test_unusable_file_loads_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, warning: str
) -> None:
    """Invalid JSON or a non-object gives an empty object and one warning."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "state.json"
    path.write_text(text, encoding="utf-8")
    assert StateFile(path).load() == {}
    (message,) = _messages(caplog, logging.WARNING)
    assert warning in message


def test_invalid_utf8_loads_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bytes that are not UTF-8 are treated like any unusable file."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "state.json"
    path.write_bytes('{"unit": "°C"}'.encode("latin-1"))
    assert StateFile(path).load() == {}
    assert len(_messages(caplog, logging.WARNING)) == 1


def test_unreadable_file_loads_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A path that cannot be read (here: a directory) gives an empty object and a warning."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    (tmp_path / "state.json").mkdir()
    assert StateFile(tmp_path / "state.json").load() == {}
    (message,) = _messages(caplog, logging.WARNING)
    assert "cannot be read" in message


# --- save ---------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    """What is saved loads back equal, and the folder is created on the way."""
    state = StateFile(tmp_path / "deep" / "er" / "state.json")
    data = {
        "discovery": {"topics": {"homeassistant/sensor/x/config": "garage"}, "components": {}},
        "text": "Grid °C μV ✓",
        "numbers": [1, 2.5, None, True],
    }
    assert state.save(data) is True
    assert state.load() == data
    assert StateFile(state.path).load() == data
    assert json.loads(state.path.read_text(encoding="utf-8")) == data


def test_save_replaces_the_whole_file(tmp_path: Path) -> None:
    """A second save replaces the first, leaving valid JSON and no temporary files."""
    state = StateFile(tmp_path / "state.json")
    assert state.save({"a": 1, "long": "x" * 10_000})
    assert state.save({"b": 2})
    assert state.load() == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_save_returns_false_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every failing save returns False; only the first of a run of failures warns."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = _blocked(tmp_path)
    assert [state.save({"n": n}) for n in range(4)] == [False] * 4
    (message,) = _messages(caplog, logging.WARNING)
    assert "cannot write state file" in message
    assert str(state.path) in message
    assert _messages(caplog, logging.INFO) == []


def test_failed_rename_leaves_no_temporary_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the final rename fails the temporary file is removed again."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    target = tmp_path / "state.json"
    target.mkdir()
    (target / "keep").write_text("x")
    assert StateFile(target).save({"a": 1}) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert len(_messages(caplog, logging.WARNING)) == 1


def test_recovery_logs_info_and_rearms_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a failure, a good save logs once at INFO; a new failure warns again."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = _blocked(tmp_path)
    blocker = state.path.parent
    assert state.save({"n": 1}) is False
    blocker.unlink()
    assert state.save({"n": 2}) is True
    assert state.save({"n": 3}) is True
    (info,) = _messages(caplog, logging.INFO)
    assert "writable again" in info
    assert state.load() == {"n": 3}

    state.path.unlink()
    blocker.rmdir()
    blocker.write_text("a file again")
    assert state.save({"n": 4}) is False
    assert state.save({"n": 5}) is False
    assert len(_messages(caplog, logging.WARNING)) == 2


# --- deferred writes ----------------------------------------------------------------------------


def test_update_waits_for_flush_and_many_updates_make_one_write(tmp_path: Path) -> None:
    """Changes handed over with update() are in memory at once and on disk after one flush."""
    state = StateFile(tmp_path / "state.json")
    for n in range(100):
        state.update({"n": n})
    assert state.load() == {"n": 99}
    assert state.dirty
    assert not state.path.exists()
    assert state.flush() is True
    assert json.loads(state.path.read_text(encoding="utf-8")) == {"n": 99}
    assert state.writes == 1
    assert not state.dirty
    assert state.flush() is True  # nothing pending: no second write
    assert state.writes == 1


def test_failed_flush_keeps_the_change_for_the_next_try(tmp_path: Path) -> None:
    """A flush that fails leaves the change pending; once writable, the next flush writes it."""
    state = _blocked(tmp_path)
    state.update({"kept": True})
    assert state.flush() is False
    assert state.dirty
    state.path.parent.unlink()
    assert state.flush() is True
    assert json.loads(state.path.read_text(encoding="utf-8")) == {"kept": True}


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
    data: dict[str, Any] = {"units": {"a": 1}}
    state.update(data)
    entered, release = _hold_first_fsync(monkeypatch)
    flushing = asyncio.create_task(state.flush_in_thread())
    assert await asyncio.to_thread(entered.wait, 10)
    assert not flushing.done()  # the loop runs on while the thread waits in fsync
    state.update({"units": {"a": 1, "b": 2}})
    release.set()
    assert await flushing is True
    assert json.loads(state.path.read_text(encoding="utf-8")) == {"units": {"a": 1}}
    assert state.dirty
    assert await state.flush_in_thread() is True
    assert json.loads(state.path.read_text(encoding="utf-8")) == {"units": {"a": 1, "b": 2}}
    assert state.writes == 2


async def test_flush_in_thread_failing_warns_once_and_keeps_the_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = _blocked(tmp_path)
    state.update({"kept": True})
    assert await state.flush_in_thread() is False
    assert await state.flush_in_thread() is False
    assert state.dirty
    assert len(_messages(caplog, logging.WARNING)) == 1
    state.path.parent.unlink()
    assert await state.flush_in_thread() is True
    assert json.loads(state.path.read_text(encoding="utf-8")) == {"kept": True}


async def test_a_cancelled_flush_in_thread_leaves_the_change_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels the periodic flush mid-write; the final flush must still write."""
    state = StateFile(tmp_path / "state.json")
    state.update({"n": 1})
    entered, release = _hold_first_fsync(monkeypatch)
    flushing = asyncio.create_task(state.flush_in_thread())
    assert await asyncio.to_thread(entered.wait, 10)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert state.dirty
    release.set()
    assert state.flush() is True  # waits for the thread's write, then writes the same state again
    assert json.loads(state.path.read_text(encoding="utf-8")) == {"n": 1}


def test_an_older_state_is_never_written_over_a_newer_one(tmp_path: Path) -> None:
    """A slow write of an earlier state that gets its turn after a later one is skipped."""
    state = StateFile(tmp_path / "state.json")
    state.update({"n": 1})
    taken = state._take()  # as a flush in a thread takes it, before its turn at the disk
    assert taken is not None
    older = (_snapshot(taken[0]), taken[1])
    state.update({"n": 2})
    assert state.flush() is True
    assert state._write(*older) is None
    assert json.loads(state.path.read_text(encoding="utf-8")) == {"n": 2}


def test_the_snapshot_is_a_copy_later_changes_do_not_reach() -> None:
    topics = {"a/config": "garage"}
    energy = {"S1": {"total_wh": 1.0, "history": [1, 2]}}
    data: dict[str, Any] = {"discovery": {"topics": topics}, "energy": energy, "n": 3}
    copy = _snapshot(data)
    topics["b/config"] = "carport"
    energy["S1"]["total_wh"] = 2.0
    energy["S1"]["history"].append(3)  # type: ignore[attr-defined]
    assert copy == {
        "discovery": {"topics": {"a/config": "garage"}},
        "energy": {"S1": {"total_wh": 1.0, "history": [1, 2]}},
        "n": 3,
    }
