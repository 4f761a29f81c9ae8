"""Turning one unit's readings into retained topics: the whole body and one topic per field."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any, Final

from bridge.core.models import ParsedBody
from bridge.core.names import field_level
from bridge.core.outbox import Outbox
from bridge.core.unit_values import Derived
from bridge.presentation.entities import ENTITIES
from bridge.presentation.topics import TopicLayout, compact_json, plain_payload

logger = logging.getLogger(__name__)

MAX_FIELDS_PER_BODY: Final = 256  # real bodies have under 30; bound what a broken unit can create
MAX_REMEMBERED_KEYS: Final = 4 * MAX_FIELDS_PER_BODY
_NOTHING: Final = object()
# Derived values whose topic says "null" while unknown (the entity table's nullable rows).
_NULL_WHEN_UNKNOWN: Final = frozenset(
    e.field for e in ENTITIES if e.endpoint == "derived" and e.nullable
)


class UnitTopics:
    """Topic names under ``<base>/<id>`` for one unit, and the values last put on them.

    ``last_values`` lets a poll skip every field whose value has not changed since it was last
    put, before formatting it: most fields of a body repeat from poll to poll. The outbox's
    :meth:`~bridge.core.outbox.Outbox.refresh_stale` still sends each topic again every few minutes.
    """

    def __init__(self, layout: TopicLayout, unit_id: str) -> None:
        self.unit_id = unit_id
        self.layout = layout
        self.root = layout.unit(unit_id)
        self.availability = layout.availability(unit_id)
        self.last_values: dict[str, object] = {}
        self._field_topics: dict[tuple[str, str], str | None] = {}

    def endpoint(self, endpoint: str) -> str:
        """The topic holding an endpoint's whole body as JSON."""
        return self.layout.body(self.unit_id, endpoint)

    def field(self, endpoint: str, level: str) -> str:
        """The topic holding one field's plain value."""
        return self.layout.field(self.unit_id, endpoint, level)

    def field_topic(self, endpoint: str, key: str) -> str | None:
        """The topic of a body key, or ``None`` when the key has no safe topic level."""
        try:
            return self._field_topics[endpoint, key]
        except KeyError:
            pass
        level = field_level(key)
        topic = None if level is None else self.field(endpoint, level)
        if len(self._field_topics) < MAX_REMEMBERED_KEYS:  # a unit inventing keys gets no more
            self._field_topics[endpoint, key] = topic
        return topic

    def retire_fields(
        self, outbox: Outbox, endpoint: str, keys: Iterable[str], admitted: Iterable[str]
    ) -> None:
        """Clear the field topics of ``keys`` on the broker and forget them.

        A topic another ``admitted`` key of the endpoint still maps to is kept.
        """
        kept = {self.field_topic(endpoint, key) for key in admitted}
        for key in keys:
            self._field_topics.pop((endpoint, key), None)
            level = field_level(key)
            topic = None if level is None else self.field(endpoint, level)
            if topic is None or topic in kept:
                continue
            self.last_values.pop(topic, None)
            outbox.delete(topic)

    def put_if_changed(self, outbox: Outbox, topic: str, value: object) -> None:
        """Put ``value`` as its plain payload unless it equals what was last put on ``topic``."""
        last = self.last_values.get(topic, _NOTHING)
        if last == value and type(last) is type(value):
            return
        payload = plain_payload(value)
        if payload is None:
            self.last_values.pop(topic, None)
            return
        if len(self.last_values) < MAX_REMEMBERED_KEYS:
            self.last_values[topic] = value
        outbox.put(topic, payload)

    def derived(self, name: str) -> str:
        """The topic of one derived value."""
        return self.layout.derived(self.unit_id, name)

    @property
    def event(self) -> str:
        """The non-retained event topic."""
        return self.layout.event(self.unit_id)

    def poller(self, name: str) -> str:
        """The topic of one of the bridge's own counters about this unit."""
        return self.layout.poller(self.unit_id, name)


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


def publish_body(
    outbox: Outbox, topics: UnitTopics, parsed: ParsedBody, refused: AbstractSet[str] = frozenset()
) -> int:
    """Put one successfully read body into the outbox; returns how many keys had no topic.

    The whole-body topic is refreshed on every successful poll, with every key; field topics when
    they change (and at least every few minutes, by the outbox's refresh rule), except for the
    ``refused`` keys (past the unit's :class:`~bridge.core.fieldbudget.FieldBudget`), which are only
    in the whole body and are not counted as skipped.
    """
    fields = parsed.fields
    outbox.put(topics.endpoint(parsed.endpoint), _body_json(fields), always=True)
    if refused:
        fields = {key: value for key, value in fields.items() if key not in refused}
    if len(fields) > MAX_FIELDS_PER_BODY:
        return _publish_odd_body(outbox, topics, parsed.endpoint, fields)
    used: set[str] = set()
    skipped = 0
    last_values = topics.last_values
    for key, value in fields.items():
        topic = topics.field_topic(parsed.endpoint, key)
        if topic is None or topic in used:
            skipped += 1
            continue
        used.add(topic)
        # put_if_changed, inlined for the common case: this loop runs for every key of every poll
        last = last_values.get(topic, _NOTHING)
        if last == value and type(last) is type(value):
            continue
        topics.put_if_changed(outbox, topic, value)
    return skipped


def _body_json(fields: dict[str, Any]) -> str:
    # Parsed bodies hold no NaN or infinity, so the checking walk of compact_json is not needed;
    # allow_nan=False still refuses one, should it ever get through.
    try:
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return compact_json(fields)


def _publish_odd_body(
    outbox: Outbox, topics: UnitTopics, endpoint: str, fields: dict[str, Any]
) -> int:
    # More keys than any real body: the slow, bounded path, remembering nothing.
    levels, skipped = field_messages(fields)
    for level, payload in levels.items():
        outbox.put(topics.field(endpoint, level), payload)
    return skipped


def publish_derived(outbox: Outbox, topics: UnitTopics, derived: Derived, now: float) -> None:
    """Put derived values (``derived/<name>``) and events (``event``) into the outbox.

    An unknown value of a nullable entity (a temperature whose sensor reads invalid) is published
    as ``null``, so consumers see it is unknown instead of a stale value; other unknown values are
    left unpublished.
    """
    for name, value in derived.values.items():
        if value is None and name in _NULL_WHEN_UNKNOWN:
            topics.put_if_changed(outbox, topics.derived(name), "null")
        else:
            topics.put_if_changed(outbox, topics.derived(name), value)
    if derived.events:
        timestamp = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds")
        for event in derived.events:
            body = {"type": event.type, "timestamp": timestamp.replace("+00:00", "Z")}
            body.update(event.details)
            body["unit"] = topics.unit_id
            outbox.event(topics.event, compact_json(body))
