"""A small JSON state file in the data directory, written atomically, that never stops the bridge.

If the directory is read-only or full the bridge keeps running on what it holds in memory and
warns once; it warns again only after a write has succeeded in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class StateFile:
    """One JSON object on disk, read once at start and replaced atomically when written.

    :meth:`update` changes only the copy in memory and :meth:`flush` writes it: the bridge
    collects many small changes (one per unit at start) into one write, so a site of N units does
    not rewrite an O(N) file N times, and an SD card sees few writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failing = False
        self._data: dict[str, Any] | None = None
        self._dirty = False
        self.writes = 0
        self._sequence = 0  # of the states rendered for writing
        self._sequence_on_disk = 0
        self._write_lock = threading.Lock()

    def load(self) -> dict[str, Any]:
        """The saved object (read from disk once); ``{}`` when there is none or it is unusable."""
        if self._data is None:
            self._data = self._read()
        return dict(self._data)

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except UnicodeDecodeError:
            logger.warning("state file %s is not UTF-8 text; starting empty", self.path)
            return {}
        except OSError as error:
            logger.warning(
                "state file %s cannot be read (%s); starting empty", self.path, error.strerror
            )
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            logger.warning("state file %s is not valid JSON; starting empty", self.path)
            return {}
        if not isinstance(data, dict):
            logger.warning("state file %s holds no JSON object; starting empty", self.path)
            return {}
        return data

    @property
    def dirty(self) -> bool:
        """Whether memory holds changes not yet written."""
        return self._dirty

    def update(self, data: dict[str, Any]) -> None:
        """Replace the object in memory; the next :meth:`flush` writes it."""
        self._data = dict(data)
        self._dirty = True

    def save(self, data: dict[str, Any]) -> bool:
        """Replace the object and write it now; ``False`` if the write failed."""
        self.update(data)
        return self.flush()

    def flush(self) -> bool:
        """Write pending changes atomically (temporary file, fsync, rename); ``False`` if failed.

        The data is kept in memory either way, so a failed write loses nothing while running;
        it stays pending, and the next flush tries again.
        """
        pending = self._take()
        if pending is None:
            return True
        return self._written(self._write(*pending))

    async def flush_in_thread(self) -> bool:
        """:meth:`flush`, the disk write and fsync in a worker thread.

        What is written is a copy of what memory holds now, taken here (~11 ms at 1000 units).
        The file is ~7 MB at 1000 units: encoded and written in the event loop, it had stalled the
        bridge for 100-280 ms every few seconds while discovery changed.
        """
        pending = self._take()
        if pending is None:
            return True
        data, sequence = pending
        try:
            error = await asyncio.to_thread(self._write, _snapshot(data), sequence)
        except asyncio.CancelledError:
            self._dirty = True  # the write may not have happened: the next flush makes sure
            raise
        return self._written(error)

    def _take(self) -> tuple[dict[str, Any], int] | None:
        """The state to write now and its number, or ``None`` when nothing is pending."""
        if self._data is None or not self._dirty:
            return None
        self._dirty = False
        self._sequence += 1
        return self._data, self._sequence

    def _write(self, data: object, sequence: int) -> OSError | None:
        """Replace the file with ``data`` unless a later state is on disk; the error, if any."""
        # One writer at a time, and never an older state over a newer one: a flush in a thread
        # may still be running when the shutdown's own flush comes.
        with self._write_lock:
            if sequence <= self._sequence_on_disk:
                return None
            temporary: str | None = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                descriptor, temporary = tempfile.mkstemp(
                    prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
                )
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    # Streamed: the whole text at once would take ~3x the file's size in memory.
                    json.dump(data, handle, indent=1, sort_keys=True, ensure_ascii=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(temporary).replace(self.path)
            except OSError as error:
                if temporary is not None:
                    with contextlib.suppress(OSError):
                        Path(temporary).unlink()
                return error
            self._sequence_on_disk = sequence
            return None

    def _written(self, error: OSError | None) -> bool:
        if error is not None:
            self._dirty = True  # try again at the next flush
            if not self._failing:
                self._failing = True
                logger.warning(
                    "cannot write state file %s (%s); keeping state in memory and retrying",
                    self.path,
                    error.strerror or error,
                )
            return False
        self.writes += 1
        if self._failing:
            self._failing = False
            logger.info("state file %s is writable again", self.path)
        return True


def _snapshot(value: object) -> object:
    """A copy of a JSON-like value that later changes to ``value`` cannot reach."""
    if isinstance(value, dict):
        if all(isinstance(item, str) for item in value.values()):
            return dict(value)  # the large case (config topic -> owner), copied in C
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_snapshot(item) for item in value]
    return value
