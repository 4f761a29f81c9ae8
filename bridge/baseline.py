"""The benchmark's yardstick: httpx and aiomqtt used bare, the way the shortest script would.

Per unit: ``httpx.AsyncClient.get`` of ``/api/1/vitals`` (on the bridge's own HTTP transport,
so both do the same network I/O), ``json.loads``, and one awaited
``aiomqtt.Client.publish`` of the body at QoS 0. This is the only module besides ``twc`` and
``mqtt`` that imports httpx and aiomqtt, on purpose: it must not use the bridge's client and link,
whose efficiency is part of what the benchmark measures.
"""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import httpx

from bridge.twc import http_transport

TOPIC_PREFIX = "twc3-bench-bare"


async def run_bare(
    urls: list[str],
    *,
    connect_to: tuple[str, int] | None = None,
    host: str,
    port: int,
    interval: float,
    identifier: str,
    counts: dict[str, int],
    stop: asyncio.Event,
    slots: int,
) -> None:
    """Poll every unit each ``interval`` until ``stop`` is set, counting into ``counts``.

    Units start in ``slots`` groups spread over the interval, as the bridge's do. ``connect_to``
    is passed to :func:`~bridge.twc.http_transport` (the bench's Host-routed simulator).
    ``counts`` gets ``vitals`` (bodies read), ``sent`` (publishes done) and ``errors``.
    """
    loop = asyncio.get_running_loop()
    async with aiomqtt.Client(host, port, identifier=identifier) as mqtt:
        # Many units awaiting a publish at once is normal here; do not log a warning each time.
        mqtt.pending_calls_threshold = len(urls) + 10
        clients = [
            httpx.AsyncClient(
                base_url=url, transport=http_transport(connect_to=connect_to), timeout=10.0
            )
            for url in urls
        ]

        async def poll(index: int, client: httpx.AsyncClient) -> None:
            next_at = loop.time() + interval * (index % slots) / slots
            while not stop.is_set():
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += interval
                try:
                    response = await client.get("/api/1/vitals")
                    json.loads(response.content)
                except (httpx.HTTPError, ValueError):
                    counts["errors"] += 1
                    continue
                counts["vitals"] += 1
                await mqtt.publish(f"{TOPIC_PREFIX}/{index}/vitals", response.content)
                counts["sent"] += 1

        try:
            tasks = [asyncio.create_task(poll(i, c)) for i, c in enumerate(clients)]
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for client in clients:
                await client.aclose()
