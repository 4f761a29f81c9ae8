"""Turning bodies into topics: unchanged fields are skipped, refreshes still happen, bounds hold."""

from __future__ import annotations

import json

from bridge.core.models import parse_endpoint
from bridge.core.outbox import REFRESH_S, Message, Outbox
from bridge.presentation.publishing import (
    MAX_FIELDS_PER_BODY,
    MAX_REMEMBERED_KEYS,
    UnitTopics,
    publish_body,
)
from bridge.presentation.topics import TopicLayout


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


def _vitals(**fields: object) -> bytes:
    return json.dumps(
        {"grid_v": 230.1, "uptime_s": 10, "vehicle_connected": False, **fields}
    ).encode()


def _sent(outbox: Outbox) -> dict[str, str]:
    batch = outbox.pending()
    for message in batch:
        outbox.mark_sent(message)
    return {m.topic: m.payload for m in batch}


def test_only_changed_fields_are_put_again() -> None:
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals()))
    first = _sent(outbox)
    assert first["twc3/garage/vitals/grid_v"] == "230.1"
    assert first["twc3/garage/vitals/vehicle_connected"] == "false"
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals(uptime_s=11)))
    assert _sent(outbox) == {
        "twc3/garage/vitals": '{"grid_v":230.1,"uptime_s":11,"vehicle_connected":false}',
        "twc3/garage/vitals/uptime_s": "11",
    }


def test_a_value_of_another_type_is_a_change() -> None:
    """0 and False, or 1 and 1.0, compare equal in Python but are different payloads."""
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals(vehicle_connected=0)))
    _sent(outbox)
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals(vehicle_connected=False)))
    assert _sent(outbox)["twc3/garage/vitals/vehicle_connected"] == "false"


def test_null_then_the_same_value_again_is_put() -> None:
    """A field that went null and came back with its old value is put again (it was forgotten)."""
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals()))
    _sent(outbox)
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals(grid_v=None)))
    assert "twc3/garage/vitals/grid_v" not in _sent(outbox)
    assert "twc3/garage/vitals/grid_v" not in topics.last_values
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals()))
    outbox_topics = {m.topic for m in outbox.pending()}
    assert "twc3/garage/vitals/grid_v" not in outbox_topics  # same payload as on the broker
    assert topics.last_values["twc3/garage/vitals/grid_v"] == 230.1


def test_skipped_fields_are_still_refreshed_by_the_outbox() -> None:
    clock = FakeClock()
    outbox = Outbox(clock=clock)
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals()))
    _sent(outbox)
    clock.now = REFRESH_S
    publish_body(outbox, topics, parse_endpoint("vitals", _vitals(uptime_s=11)))
    assert "twc3/garage/vitals/grid_v" not in _sent(outbox)
    outbox.refresh_stale()
    assert _sent(outbox)["twc3/garage/vitals/grid_v"] == "230.1"


def test_two_keys_with_one_level_keep_the_first() -> None:
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    body = b'{"odd.key": 1, "odd_key": 2}'
    skipped = publish_body(outbox, topics, parse_endpoint("vitals", body))
    assert skipped == 1
    assert _sent(outbox)["twc3/garage/vitals/odd_key"] == "1"


def test_a_unit_inventing_keys_costs_bounded_memory() -> None:
    """A body with new keys on every poll is published, but the remembered keys stay bounded."""
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    for poll in range(2 * MAX_REMEMBERED_KEYS // 100):
        body = {f"k{poll}_{i}": i for i in range(100)}
        publish_body(outbox, topics, parse_endpoint("vitals", json.dumps(body).encode()))
        assert _sent(outbox)[f"twc3/garage/vitals/k{poll}_99"] == "99"
    assert len(topics.last_values) <= MAX_REMEMBERED_KEYS
    assert len(topics._field_topics) <= MAX_REMEMBERED_KEYS


def test_an_oversized_body_is_published_up_to_the_field_bound() -> None:
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    body = {f"k{i}": i for i in range(MAX_FIELDS_PER_BODY + 10)}
    skipped = publish_body(outbox, topics, parse_endpoint("vitals", json.dumps(body).encode()))
    assert skipped == 10
    sent = _sent(outbox)
    assert len([t for t in sent if t.startswith("twc3/garage/vitals/")]) == MAX_FIELDS_PER_BODY
    assert Message("twc3/garage/vitals/k0", "0") in [Message(t, p) for t, p in sent.items()]
