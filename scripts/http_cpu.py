"""CPU per TwcClient.fetch against a simulated unit in-process: prints µs per request.

Usage: .venv/bin/python scripts/http_cpu.py [REQUESTS] [ROUNDS]

The simulated unit runs in a thread with its own event loop, so two figures are printed per
round: the client thread's CPU alone (time.thread_time) and the whole process's, unit included
(time.process_time). Requests are sequential on one kept-alive connection, as the poller sends
them. The machine may be loaded: compare the median of several rounds, in the same session.
"""

# ruff: noqa: INP001 - a script run by path, not a module of a package
# ruff: noqa: T201 - a measuring script prints its figures

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time

from bridge.simulator import SimulatedUnit, UnitServer

from bridge.adapters.twc import TwcClient

WARMUP = 200


def _serve(started: threading.Event, url: list[str], stop: threading.Event) -> None:
    async def main() -> None:
        async with UnitServer(SimulatedUnit("SIM0000001", seed=1)) as server:
            url.append(server.url)
            started.set()
            while not stop.is_set():  # noqa: ASYNC110 - the stop comes from another thread
                await asyncio.sleep(0.05)

    asyncio.run(main())


async def _round(url: str, requests: int) -> tuple[float, float]:
    client = TwcClient(url)
    try:
        for _ in range(WARMUP):
            await client.fetch("vitals")
        thread0, process0 = time.thread_time(), time.process_time()
        for _ in range(requests):
            await client.fetch("vitals")
        thread1, process1 = time.thread_time(), time.process_time()
    finally:
        await client.aclose()
    return (thread1 - thread0) / requests * 1e6, (process1 - process0) / requests * 1e6


def main() -> None:
    """Time rounds of sequential fetches and print each round and the medians."""
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5  # noqa: PLR2004 - argv[2]
    started, stop, url = threading.Event(), threading.Event(), []
    server = threading.Thread(target=_serve, args=(started, url, stop), daemon=True)
    server.start()
    if not started.wait(10):
        sys.exit("the simulated unit did not start")
    client_us: list[float] = []
    process_us: list[float] = []
    try:
        for index in range(rounds):
            client, process = asyncio.run(_round(url[0], requests))
            client_us.append(client)
            process_us.append(process)
            print(f"round {index + 1}: client {client:6.1f} µs, process {process:6.1f} µs")
    finally:
        stop.set()
        server.join(5)
    client_range = f"{min(client_us):.1f}-{max(client_us):.1f}"
    process_range = f"{min(process_us):.1f}-{max(process_us):.1f}"
    print(
        f"median of {rounds} x {requests} requests: client {statistics.median(client_us):.1f} "
        f"µs CPU per request (range {client_range}), process "
        f"{statistics.median(process_us):.1f} µs (range {process_range})"
    )


if __name__ == "__main__":
    main()
