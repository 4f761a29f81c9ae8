"""Turning one unit's readings into retained topics: the whole body and one topic per field."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

from bridge.derivation import TEMPERATURE_FIELDS, Derived
from bridge.models import ParsedBody
from bridge.outbox import Outbox
from bridge.topics import compact_json, field_level, plain_payload

logger = logging.getLogger(__name__)

MAX_FIELDS_PER_BODY: Final = 256  # real bodies have under 30; bound what a broken unit can create


class UnitTopics:
    """Topic names under ``<base>/<id>`` for one unit."""

    def __init__(self, base_topic: str, unit_id: str) -> None:
        self.unit_id = unit_id
        self.root = f"{base_topic}/{unit_id}"
        self.availability = f"{self.root}/availability"

    def endpoint(self, endpoint: str) -> str:
        """The topic holding an endpoint's whole body as JSON."""
        return f"{self.root}/{endpoint}"

    def field(self, endpoint: str, level: str) -> str:
        """The topic holding one field's plain value."""
        return f"{self.root}/{endpoint}/{level}"

    def derived(self, name: str) -> str:
        """The topic of one derived value."""
        return f"{self.root}/derived/{name}"

    @property
    def event(self) -> str:
        """The non-retained event topic."""
        return f"{self.root}/event"

    def poller(self, name: str) -> str:
        """The topic of one of the bridge's own counters about this unit."""
        return f"{self.root}/poller/{name}"


def field_messages(
    body: dict[str, Any], max_fields: int = MAX_FIELDS_PER_BODY
) -> tuple[dict[str, str], int]:
    """Map a body to ``{topic level: plain payload}`` and count the keys left out.

    A null field has no topic of its own. Two keys that sanitise to one level keep the first.
    """
    levels: dict[str, str] = {}
    skipped = 0
    for key, value in body.items():
        level = field_level(key)
        if level is None or level in levels or len(levels) >= max_fields:
            skipped += 1
            continue
        payload = plain_payload(value)
        if payload is not None:
            levels[level] = payload
    return levels, skipped


def publish_body(outbox: Outbox, topics: UnitTopics, parsed: ParsedBody) -> int:
    """Put one successfully read body into the outbox; returns how many keys had no topic.

    The whole-body topic is refreshed on every successful poll; field topics when they change
    (and at least every few minutes, by the outbox's refresh rule).
    """
    outbox.put(topics.endpoint(parsed.endpoint), compact_json(parsed.fields), always=True)
    levels, skipped = field_messages(parsed.fields)
    for level, payload in levels.items():
        outbox.put(topics.field(parsed.endpoint, level), payload)
    return skipped


def publish_derived(outbox: Outbox, topics: UnitTopics, derived: Derived, now: float) -> None:
    """Put derived values (``derived/<name>``) and events (``event``) into the outbox.

    A temperature whose sensor reads invalid is published as ``null``, so consumers see it is
    unknown instead of a stale value; other unknown values are left unpublished.
    """
    for name, value in derived.values.items():
        payload = plain_payload(value)
        if payload is None and name in TEMPERATURE_FIELDS:
            payload = "null"
        if payload is not None:
            outbox.put(topics.derived(name), payload)
    if derived.events:
        timestamp = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds")
        for event in derived.events:
            body = {"type": event.type, "timestamp": timestamp.replace("+00:00", "Z")}
            body.update(event.details)
            body["unit"] = topics.unit_id
            outbox.event(topics.event, compact_json(body))
