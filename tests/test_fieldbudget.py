"""A unit's field budget: cap, refusals, retirement; how topics, discovery and Homie follow."""

from __future__ import annotations

import json
import logging

import pytest

from bridge.core.fieldbudget import RETIRE_AFTER_READS, RETIRE_AFTER_S, Admission, FieldBudget
from bridge.core.models import parse_endpoint
from bridge.core.outbox import Message, Outbox
from bridge.presentation.homie import HomiePublisher
from bridge.presentation.publishing import UnitTopics, publish_body
from bridge.presentation.topics import TopicLayout
from bridge.runtime.announce import MAX_REMOVED_STUBS, Announcer, announced_fields
from tests.discovery_samples import GARAGE, SITE
from tests.test_poller import make_poller, poll_until

HOMIE_NODE = "homie/twc3-bridge/garage"


def _body(*names: str) -> dict[str, object]:
    return dict.fromkeys(names, 1)


def _send_all(outbox: Outbox) -> list[Message]:
    batch = outbox.pending()
    for message in batch:
        outbox.mark_sent(message)
    return batch


# --- the budget itself --------------------------------------------------------------------


def test_a_normal_body_is_admitted_whole_every_time() -> None:
    budget = FieldBudget(cap=8)
    body = _body("grid_v", "uptime_s", "evse_state")
    for second in range(100):
        assert budget.admit("vitals", body, float(second)) == Admission()
    assert budget.admitted("vitals") == ["grid_v", "uptime_s", "evse_state"]
    assert budget.generation == 1  # admitted once, never changed since
    assert budget.refused_total == 0


def test_names_past_the_cap_are_refused_and_counted_exactly() -> None:
    budget = FieldBudget(cap=3)
    first = budget.admit("vitals", _body("a", "b", "c", "d", "e"), 0.0)
    assert first.refused == {"d", "e"}
    assert first.first_refusal
    again = budget.admit("vitals", _body("a", "b", "c", "d", "e", "f"), 1.0)
    assert again.refused == {"d", "e", "f"}
    assert not again.first_refusal  # reported once per endpoint
    assert budget.refused_total == 5
    assert budget.admitted("vitals") == ["a", "b", "c"]
    # Each endpoint has its own cap.
    assert budget.admit("lifetime", _body("a", "b", "c"), 2.0) == Admission()


def test_a_name_is_retired_only_after_both_the_time_and_the_reads() -> None:
    """Absent for RETIRE_AFTER_S and from RETIRE_AFTER_READS reads, whichever comes last."""
    budget = FieldBudget()
    budget.admit("version", _body("serial_number", "odd"), 0.0)
    # An hourly endpoint: long absences, but too few reads without the name.
    for read in range(1, RETIRE_AFTER_READS):
        assert budget.admit("version", _body("serial_number"), read * 3600.0).retired == ()
    retired = budget.admit("version", _body("serial_number"), RETIRE_AFTER_READS * 3600.0)
    assert retired.retired == ("odd",)
    assert budget.admitted("version") == ["serial_number"]


def test_a_frequent_endpoint_keeps_a_name_for_the_whole_retirement_time() -> None:
    budget = FieldBudget()
    budget.admit("vitals", _body("grid_v", "odd"), 0.0)
    retired_at = None
    for second in range(1, 2 * int(RETIRE_AFTER_S)):
        if budget.admit("vitals", _body("grid_v"), float(second)).retired:
            retired_at = second
            break
    assert retired_at is not None
    # Never early; late by at most one sweep (a tenth of the retirement time) and a read.
    assert RETIRE_AFTER_S <= retired_at <= RETIRE_AFTER_S * 1.1 + 1
    assert budget.admitted("vitals") == ["grid_v"]


def test_a_name_seen_now_and_then_is_never_retired() -> None:
    budget = FieldBudget(retire_after_s=10.0)
    for second in range(200):
        body = _body("grid_v", "sometimes") if second % 9 == 0 else _body("grid_v")
        assert budget.admit("vitals", body, float(second)).retired == ()


def test_retirement_makes_room_and_a_retired_name_is_admitted_again() -> None:
    budget = FieldBudget(cap=2, retire_after_s=10.0)
    budget.admit("vitals", _body("keep", "old"), 0.0)
    assert budget.admit("vitals", _body("keep", "new"), 1.0).refused == {"new"}
    admission = Admission()
    for second in range(2, 30):
        admission = budget.admit("vitals", _body("keep", "new"), float(second))
        if not admission.refused:
            break
    assert admission.retired == ("old",)
    assert budget.admitted("vitals") == ["keep", "new"]
    generation = budget.generation
    for second in range(30, 60):
        if budget.admit("vitals", _body("keep", "old"), float(second)).retired:
            break
    assert budget.admitted("vitals") == ["keep", "old"]
    assert budget.generation > generation


def test_a_churning_endpoint_stays_within_the_cap() -> None:
    budget = FieldBudget(cap=50, retire_after_s=20.0)
    for read in range(300):
        body = _body("grid_v", *(f"churn_{read}_{i}" for i in range(200)))
        budget.admit("vitals", body, float(read))
        assert len(budget.admitted("vitals")) <= 50
        assert "grid_v" in budget.admitted("vitals")
    assert budget.refused_total > 200 * 300 - 50 * 300


# --- publishing ---------------------------------------------------------------------------


def test_refused_names_are_only_in_the_body_topic() -> None:
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    parsed = parse_endpoint("vitals", json.dumps({"grid_v": 230.0, "odd": 7}).encode())
    skipped = publish_body(outbox, topics, parsed, frozenset({"odd"}))
    sent = {m.topic: m.payload for m in _send_all(outbox)}
    assert skipped == 0
    assert json.loads(sent["twc3/garage/vitals"]) == {"grid_v": 230.0, "odd": 7}
    assert sent["twc3/garage/vitals/grid_v"] == "230"
    assert "twc3/garage/vitals/odd" not in sent
    assert "twc3/garage/vitals/odd" not in topics.last_values


def test_retired_fields_are_deleted_and_forgotten() -> None:
    outbox = Outbox()
    topics = UnitTopics(TopicLayout("twc3"), "garage")
    body = {"grid_v": 230.0, "old": 1, "odd.key": 2, "odd_key": 3}
    publish_body(outbox, topics, parse_endpoint("vitals", json.dumps(body).encode()))
    _send_all(outbox)
    # "odd.key" retires, but "odd_key" is still admitted and maps to the same topic.
    topics.retire_fields(outbox, "vitals", ("old", "odd.key"), ["grid_v", "odd_key"])
    batch = _send_all(outbox)
    assert batch == [Message("twc3/garage/vitals/old", "")]
    assert "twc3/garage/vitals/old" not in outbox.retained_topics()
    assert "twc3/garage/vitals/old" not in topics.last_values
    assert ("vitals", "old") not in topics._field_topics
    assert "twc3/garage/vitals/odd_key" in outbox.retained_topics()


# --- the poller ---------------------------------------------------------------------------


async def test_a_churning_unit_keeps_bounded_topics_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller, unit, time_source, outbox = make_poller(vitals_s=1, vitals_idle_s=1)
    poller.field_budget = FieldBudget(cap=40, retire_after_s=5.0)
    reads = 0

    async def churn(endpoint: str) -> bytes:
        nonlocal reads
        if endpoint != "vitals":
            return unit.bodies[endpoint]
        reads += 1
        body = {"grid_v": 230.0, **{f"churn_{reads}_{i}": i for i in range(100)}}
        return json.dumps(body).encode()

    poller._fetcher = type("Churn", (), {"fetch": staticmethod(churn)})()
    with caplog.at_level(logging.DEBUG, logger="bridge.runtime.poller"):
        for _ in range(6):
            await poll_until(poller, time_source, 10)
            held = [t for t in outbox.retained_topics() if t.startswith("twc3/garage/vitals/")]
            assert len(held) <= 40
            assert poller.topics is not None
            assert len(poller.topics.last_values) <= 80
    assert reads > 40
    assert "twc3/garage/vitals/grid_v" in outbox.retained_topics()
    assert outbox.get("twc3/garage/poller/refused_fields") == str(poller.field_budget.refused_total)
    assert poller.field_budget.refused_total > 0
    last_body = json.loads(outbox.get("twc3/garage/vitals") or "{}")
    assert f"churn_{reads}_99" in last_body  # every name is still in the body topic
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "more than 40 field names" in warnings[0].getMessage()
    assert "twc3/garage/vitals" in warnings[0].getMessage()
    deleted = {m.topic for m in outbox.pending() if m.payload == ""}
    assert any(topic.startswith("twc3/garage/vitals/churn_") for topic in deleted)


# --- Homie and discovery follow the admitted names ----------------------------------------


def test_homie_removes_a_property_no_longer_in_the_values() -> None:
    outbox = Outbox()
    homie = HomiePublisher(outbox, "homie", "twc3-bridge", "Bridge")
    homie.start()
    homie.update_unit("garage", None, {("vitals", "grid_v"): 240.5, ("vitals", "odd"): 3})
    assert outbox.get(f"{HOMIE_NODE}/$properties") == "grid-v,odd"
    _send_all(outbox)
    homie.update_unit("garage", None, {("vitals", "grid_v"): 240.5})
    batch = _send_all(outbox)
    deleted = {m.topic for m in batch if m.payload == ""}
    assert {f"{HOMIE_NODE}/odd", f"{HOMIE_NODE}/odd/$name", f"{HOMIE_NODE}/odd/$datatype"} <= (
        deleted
    )
    assert not any(t.startswith(f"{HOMIE_NODE}/odd") for t in outbox.retained_topics())
    assert outbox.get(f"{HOMIE_NODE}/$properties") == "grid-v"
    assert batch[-1] == Message("homie/twc3-bridge/$state", "ready")
    # A known name whose value is unknown just now keeps its property.
    homie.update_unit("garage", None, {("vitals", "grid_v"): None})
    assert outbox.get(f"{HOMIE_NODE}/$properties") == "grid-v"


async def test_discovery_drops_the_config_of_a_retired_field() -> None:
    poller, unit, time_source, outbox = make_poller(vitals_s=1, vitals_idle_s=1)
    poller.field_budget = FieldBudget(retire_after_s=5.0)
    announcer = Announcer(SITE, "entity", outbox, None, {"garage"})
    unit.bodies["vitals"] = json.dumps({"grid_v": 230.0, "mystery_field": 1}).encode()
    await poll_until(poller, time_source, 5)
    announcer.update_unit("garage", GARAGE, announced_fields(poller))
    before = set(announcer.announced_topics())
    mystery = {t for t in before if "mystery_field" in t}
    assert mystery
    _send_all(outbox)
    unit.bodies["vitals"] = json.dumps({"grid_v": 230.0}).encode()
    await poll_until(poller, time_source, 3)
    # Missing from a few bodies only: still announced.
    assert "mystery_field" in announced_fields(poller)["vitals"]
    await poll_until(poller, time_source, 10)
    assert "mystery_field" not in announced_fields(poller)["vitals"]
    announcer.update_unit("garage", GARAGE, announced_fields(poller))
    assert set(announcer.announced_topics()) == before - mystery
    deleted = {m.topic for m in _send_all(outbox) if m.payload == ""}
    assert mystery <= deleted
    assert "twc3/garage/vitals/mystery_field" in deleted


def test_device_mode_keeps_a_bounded_number_of_removed_stubs() -> None:
    """A unit that keeps retiring invented fields does not grow its device config forever."""
    outbox = Outbox()
    announcer = Announcer(SITE, "device", outbox, None, {"garage"})
    for round_ in range(3 * MAX_REMOVED_STUBS // 10):
        names = ["grid_v", *(f"churn_{round_}_{i}" for i in range(10))]
        announcer.update_unit("garage", GARAGE, {"vitals": names})
    (message,) = [m for m in _send_all(outbox) if m.topic.endswith("twc3_test0001/config")]
    components = json.loads(message.payload)["components"]
    stubs = [key for key, value in components.items() if value == {"platform": "sensor"}]
    assert len(stubs) == MAX_REMOVED_STUBS
    assert "vitals_churn_0_0" not in components  # the oldest stubs went first
    assert f"vitals_churn_{3 * MAX_REMOVED_STUBS // 10 - 2}_0" in stubs
