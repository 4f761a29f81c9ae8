"""Composition root: builds the pollers, the outbox and the MQTT link, and runs them together."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Final

from bridge.config import BridgeConfig, ConnectorConfig
from bridge.mqtt import MqttLink
from bridge.outbox import Outbox
from bridge.poller import ConnectorPoller, IdRegistry
from bridge.twc import TwcClient

logger = logging.getLogger(__name__)

POLLER_RESTART_DELAY_S: Final = 30.0


def connector_label(connector: ConnectorConfig) -> str:
    """How a connector is named in log lines: its id or name, and its address."""
    name = connector.configured_id()
    return f"{name} ({connector.host})" if name else connector.host


class Bridge:
    """Everything one bridge process runs; state here outlives broker reconnects."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        client_factory: Callable[[ConnectorConfig], TwcClient] | None = None,
    ) -> None:
        self.config = config
        self.outbox = Outbox()
        self.state_topic = f"{config.mqtt.base_topic}/bridge/state"
        self.registry = IdRegistry()
        for connector in config.connectors:
            if (cid := connector.configured_id()) is not None:
                self.registry.claim(cid, connector_label(connector))
        make_client = client_factory or self._default_client
        self.clients: list[TwcClient] = []
        self.pollers: list[ConnectorPoller] = []
        for connector in config.connectors:
            polling = connector.polling(config.polling)
            client = make_client(connector)
            self.clients.append(client)
            self.pollers.append(
                ConnectorPoller(
                    label=connector_label(connector),
                    configured_id=connector.configured_id(),
                    base_topic=config.mqtt.base_topic,
                    polling=polling,
                    fetcher=client,
                    outbox=self.outbox,
                    registry=self.registry,
                )
            )
        self.link = MqttLink(config.mqtt, self.outbox, state_topic=self.state_topic)

    def _default_client(self, connector: ConnectorConfig) -> TwcClient:
        polling = connector.polling(self.config.polling)
        return TwcClient(
            connector.base_url,
            connect_timeout_s=polling.connect_timeout_s,
            read_timeout_s=polling.read_timeout_s,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then publish ``offline`` and close everything."""
        logger.info(
            "bridge starting: %d connector(s), broker %s:%d, base topic %r",
            len(self.pollers),
            self.config.mqtt.host,
            self.config.mqtt.port,
            self.config.mqtt.base_topic,
        )
        try:
            async with asyncio.TaskGroup() as group:
                link_task = group.create_task(self.link.run(stop), name="mqtt-link")
                poller_tasks = [
                    group.create_task(_supervised(p.label, p.run), name=f"poll {p.label}")
                    for p in self.pollers
                ]
                await stop.wait()
                for task in poller_tasks:
                    task.cancel()
                await link_task
        finally:
            for client in self.clients:
                await client.aclose()
        logger.info("bridge stopped")


async def _supervised(label: str, run: Callable[[], Awaitable[None]]) -> None:
    # A bug triggered by one unit's data must not stop the other units.
    while True:
        try:
            await run()
        except Exception:
            logger.exception(
                "unit %s: poller crashed; restarting it in %.0f s", label, POLLER_RESTART_DELAY_S
            )
            await asyncio.sleep(POLLER_RESTART_DELAY_S)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` for a clean shutdown."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def run_bridge(config: BridgeConfig) -> None:
    """Run the bridge until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await Bridge(config).run(stop)
