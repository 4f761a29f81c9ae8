"""The bridge's background chores: state flushes and refreshes, the heartbeat, the heap freeze."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from bridge.core.outbox import Outbox
from bridge.runtime.poller import ConnectorPoller
from bridge.runtime.statefile import StateFile

logger = logging.getLogger(__name__)

HEARTBEAT_FILE_NAME: Final = "heartbeat"
HEARTBEAT_INTERVAL_S: Final = 10.0
STATE_FLUSH_INTERVAL_S: Final = 5.0  # discovery and address changes are written this late at most
# Startup is over once every unit was asked every endpoint, or after this long (units offline).
SETTLE_MAX_S: Final = 300.0
SETTLE_CHECK_S: Final = 1.0


async def keep_state(state_file: StateFile, outbox: Outbox, refresh_prefix: str) -> None:
    """Write the state file when something changed; send again topics not sent for long."""
    while True:
        await asyncio.sleep(STATE_FLUSH_INTERVAL_S)
        await state_file.flush_in_thread()
        # Pollers skip unchanged values, so the outbox refreshes them (README: 5 minutes).
        # Not the discovery configs: those are sent again when Home Assistant restarts.
        outbox.refresh_stale(prefix=refresh_prefix)


async def heartbeat(
    path: Path, last_delivery: Callable[[], float | None], pollers: Sequence[ConnectorPoller]
) -> None:
    """Touch the heartbeat file while units are being polled and published.

    ``twc3-bridge healthcheck`` (the Docker HEALTHCHECK) fails when it grows old: a stuck
    bridge, no broker, or no unit answering all show up there.
    """
    warned = False
    while True:
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        delivered = last_delivery()
        polled = any(p.status.online for p in pollers)
        if (
            delivered is None
            or not polled
            or time.monotonic() - delivered > HEARTBEAT_INTERVAL_S * 3
        ):
            continue
        try:
            # A few bytes every 10 s: not worth a worker thread.
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{time.time():.0f}\n", encoding="ascii")  # noqa: ASYNC240
        except OSError as error:
            if not warned:
                warned = True
                logger.warning("cannot write heartbeat %s (%s)", path, error.strerror or error)


async def settle_heap(settled: Callable[[], bool], on_frozen: Callable[[], None]) -> None:
    """Once startup is over, move every object alive then out of the garbage collector's way.

    The bridge holds ~150 container objects per unit for its whole life (discovery configs
    kept for re-publishing, entity tables, modules, pydantic models); a full collection
    walked them all, ~100 ms every few seconds at 1000 units. ``gc.freeze()`` after one last
    collection leaves only what changes to the collector.
    """
    deadline = time.monotonic() + SETTLE_MAX_S
    # Polled (ASYNC110): a look a second at small sets; an event would need a poll hook.
    while not settled() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(SETTLE_CHECK_S)
    gc.collect()  # nothing that is garbage already may be frozen: it would never be freed
    gc.freeze()
    on_frozen()
    logger.debug(
        "startup settled: %d objects left out of garbage collection", gc.get_freeze_count()
    )
