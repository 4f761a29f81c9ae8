"""Ghosts: clearing what unit ids no longer configured left on the broker (retained, HA, Homie).

An id is a ghost when the bridge published it before (the state file records each id and the
connector key that published it) and neither the id nor that connector is configured now: a
renamed or removed connector. A unit named by its serial number whose connector is still
configured is no ghost, even before it is polled again; nor is a unit added because it was found
(``[discovery] add_new``): the bridge counts it among the configured ones while it restores it.
Which topics to clear is decided by pure functions; :func:`clear_ghosts` does the network part
for the bridge's start and for ``forget``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from bridge.adapters.mqtt import publish_retained, subscribe
from bridge.core.config import MqttConfig
from bridge.core.logtext import escaped
from bridge.presentation.homie import (
    homie_id,
    is_node_topic,
    node_tree,
    nodes_topic,
    nodes_without,
)
from bridge.presentation.topics import TopicLayout

logger = logging.getLogger(__name__)

# The broker sends a subscription's retained messages at once: a pause this long means it has
# sent them all, and a site's few thousand topics never take longer than the limit.
QUIET_S: Final = 0.5
LIMIT_S: Final = 10.0


def ghost_ids(
    published: Mapping[str, str],
    configured_ids: Collection[str],
    configured_owners: Collection[str],
) -> dict[str, str]:
    """The published ids (-> connector key) that no configured connector publishes any more."""
    return {
        unit_id: owner
        for unit_id, owner in published.items()
        if unit_id not in configured_ids and owner not in configured_owners
    }


@dataclass(frozen=True, slots=True)
class Ghost:
    """One id to clear and what else it left: discovery config topics and a Homie node id.

    ``clear_discovery`` False: the configs are only counted, because the running bridge's
    announcer removes them on its own connection, in order before a renamed unit (the same serial
    number, so the same config topics) announces them again.
    """

    unit_id: str
    discovery_topics: tuple[str, ...] = ()
    homie_node: str | None = None
    clear_discovery: bool = True


def homie_node_of(unit_id: str, live_ids: Iterable[str]) -> str | None:
    """The Homie node id ``unit_id`` had, unless a configured id has it now (then ``None``)."""
    node = homie_id(unit_id)
    live = {homie_id(other) for other in live_ids}
    return node if node and node not in live else None


def discovery_topics_of(announced: Mapping[str, str], owner: str) -> tuple[str, ...]:
    """The announced discovery config topics of one connector key."""
    return tuple(topic for topic, holder in announced.items() if holder == owner)


@dataclass(slots=True)
class Cleared:
    """What was cleared for one id."""

    unit_id: str
    retained: int = 0
    discovery: int = 0
    homie_node: str | None = None

    def describe(self) -> str:
        """One log line's worth, the id escaped."""
        node = f", Homie node {self.homie_node}" if self.homie_node else ""
        return (
            f"removed unit {escaped(self.unit_id)}: cleared {self.retained} retained topic(s), "
            f"{self.discovery} discovery config(s){node}"
        )


@dataclass(slots=True)
class ClearingPlan:
    """What to publish, in order (``""`` deletes), and what it clears per id."""

    messages: list[tuple[str, str]] = field(default_factory=list)
    cleared: list[Cleared] = field(default_factory=list)


def subscriptions(
    layout: TopicLayout, ghosts: Sequence[Ghost], homie_root: str | None
) -> list[str]:
    """The filters whose retained messages show what the ghosts left."""
    patterns = [layout.unit_tree(ghost.unit_id) for ghost in ghosts]
    if homie_root is not None:
        patterns += [node_tree(homie_root, g.homie_node) for g in ghosts if g.homie_node]
        patterns.append(nodes_topic(homie_root))
    return patterns


def clearing_plan(
    retained: Mapping[str, str],
    layout: TopicLayout,
    ghosts: Sequence[Ghost],
    homie_root: str | None,
    *,
    rewrite_nodes: bool,
    live_elsewhere: Collection[str] = (),
) -> ClearingPlan:
    """What clears ``ghosts`` given the broker's ``retained`` topics (pure).

    Ids in ``live_elsewhere`` (another running bridge process publishes them now) are left alone.

    ``$nodes`` goes first, without the removed nodes (only with ``rewrite_nodes``: a running
    bridge's publisher writes its own), then the discovery configs, then every retained topic
    under each id and each node.
    """
    plan = ClearingPlan()
    ghosts = [ghost for ghost in ghosts if ghost.unit_id not in live_elsewhere]
    node_ids = [g.homie_node for g in ghosts if g.homie_node]
    if homie_root is not None and rewrite_nodes:
        current = retained.get(nodes_topic(homie_root))
        if current is not None:
            remaining = nodes_without(current, node_ids)
            if remaining != current:
                plan.messages.append((nodes_topic(homie_root), remaining))
    for ghost in ghosts:
        cleared = Cleared(ghost.unit_id)
        if ghost.clear_discovery:
            plan.messages += [(topic, "") for topic in ghost.discovery_topics]
        cleared.discovery = len(ghost.discovery_topics)
        unit_root = layout.unit(ghost.unit_id)
        own = sorted(
            topic for topic in retained if topic == unit_root or topic.startswith(f"{unit_root}/")
        )
        node: list[str] = []
        if homie_root is not None and ghost.homie_node:
            node = sorted(t for t in retained if is_node_topic(t, homie_root, ghost.homie_node))
            cleared.homie_node = ghost.homie_node if node else None
        plan.messages += [(topic, "") for topic in (*own, *node)]
        cleared.retained = len(own)
        plan.cleared.append(cleared)
    return plan


def foreign_publishers(
    retained: Mapping[str, str], layout: TopicLayout, ghosts: Sequence[Ghost]
) -> dict[str, str]:
    """Ghost id -> the state topic of another bridge process that says it publishes the id."""
    foreign: dict[str, str] = {}
    for ghost in ghosts:
        state_topic = retained.get(layout.publisher(ghost.unit_id))
        if (
            state_topic is not None
            and state_topic != layout.bridge_state
            and layout.is_bridge_state(state_topic)
        ):
            foreign[ghost.unit_id] = state_topic
    return foreign


async def collect_retained(
    config: MqttConfig,
    patterns: Sequence[str],
    identifier: str,
    quiet_s: float = QUIET_S,
    limit_s: float = LIMIT_S,
) -> dict[str, str]:
    """The retained messages under ``patterns``: until ``quiet_s`` pass without one, or the limit.

    Raises:
        MqttUnavailableError: the broker cannot be reached or dropped the connection.
    """
    retained: dict[str, str] = {}
    async with subscribe(config, patterns, identifier=identifier) as subscription:
        deadline = time.monotonic() + limit_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(min(quiet_s, left)):
                    message = await subscription.next()
            except TimeoutError:
                break
            if message.retained and message.payload:
                retained[message.topic] = message.payload.decode("utf-8", "replace")
    return retained


async def clear_ghosts(
    config: MqttConfig,
    layout: TopicLayout,
    ghosts: Sequence[Ghost],
    *,
    homie_root: str | None,
    rewrite_nodes: bool,
    identifier: str,
    quiet_s: float = QUIET_S,
) -> list[Cleared]:
    """Clear what ``ghosts`` left on the broker; one log line per id; return the ids settled.

    Raises:
        MqttUnavailableError: the broker cannot be reached or dropped the connection.
    """
    if not ghosts:
        return []
    patterns = subscriptions(layout, ghosts, homie_root)
    retained = await collect_retained(config, patterns, identifier, quiet_s)
    # A unit moved to another process's configuration is that process's now, while it runs.
    foreign = foreign_publishers(retained, layout, ghosts)
    states = (
        await collect_retained(config, sorted(set(foreign.values())), identifier, quiet_s)
        if foreign
        else {}
    )
    live_elsewhere = {uid for uid, topic in foreign.items() if states.get(topic) == "online"}
    for unit_id in sorted(live_elsewhere):
        logger.info(
            "unit %s is published by another bridge process (%s online): left as it is",
            escaped(unit_id),
            escaped(foreign[unit_id]),
        )
    plan = clearing_plan(
        retained,
        layout,
        ghosts,
        homie_root,
        rewrite_nodes=rewrite_nodes,
        live_elsewhere=live_elsewhere,
    )
    qos1 = (f"{homie_root}/",) if homie_root is not None else ()
    await publish_retained(config, plan.messages, identifier, qos1_prefixes=qos1)
    for cleared in plan.cleared:
        logger.info("%s", cleared.describe())
    # Settled either way: cleared here, or another running process's unit now.
    return [*plan.cleared, *(Cleared(unit_id) for unit_id in sorted(live_elsewhere))]
