"""A small JSON state file in the data directory, written atomically, that never stops the bridge.

If the directory is read-only or full the bridge keeps running on what it holds in memory and
warns once; it warns again only after a write has succeeded in between.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
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
        if not self._dirty or self._data is None:
            return True
        temporary: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                # Streamed: the whole text at once would take ~3x the file's size in memory.
                json.dump(self._data, handle, indent=1, sort_keys=True, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            Path(temporary).replace(self.path)
        except OSError as error:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    Path(temporary).unlink()
            if not self._failing:
                self._failing = True
                logger.warning(
                    "cannot write state file %s (%s); keeping state in memory and retrying",
                    self.path,
                    error.strerror or error,
                )
            return False
        self._dirty = False
        self.writes += 1
        if self._failing:
            self._failing = False
            logger.info("state file %s is writable again", self.path)
        return True
