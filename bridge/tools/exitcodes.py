"""The exit codes of every command: 0 done, 1 failed (nothing found, no broker), 2 bad usage."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2  # an invalid configuration or argument: retrying cannot help
