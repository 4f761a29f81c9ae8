"""The outbox: latest value per retained topic, change detection, refresh, and bounded events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bridge.adapters.mqtt import OutboxSignal
from bridge.core.outbox import MAX_QUEUED_EVENTS, REFRESH_S, Deferred, Message, Outbox


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


def _outbox(
    refresh_s: float = REFRESH_S, max_events: int = MAX_QUEUED_EVENTS
) -> tuple[Outbox, FakeClock]:
    clock = FakeClock()
    return Outbox(clock=clock, refresh_s=refresh_s, max_events=max_events), clock


async def _waits_until(outbox: Outbox, wake: Callable[[], object]) -> None:
    """Waiting for the outbox still blocks a moment later, and returns once ``wake()`` ran."""
    async with asyncio.timeout(2):
        waiter = asyncio.create_task(OutboxSignal(outbox).wait())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        wake()
        await waiter


def _send_all(outbox: Outbox) -> list[Message]:
    batch = outbox.pending()
    for message in batch:
        outbox.mark_sent(message)
    return batch


# --- retained values ----------------------------------------------------------------------------


def test_new_value_is_pending_and_retained() -> None:
    """A first put is pending as a retained message and readable with get()."""
    outbox, _ = _outbox()
    outbox.put("twc3/a/vitals/grid_v", "241.3")
    assert outbox.pending() == [Message("twc3/a/vitals/grid_v", "241.3", retain=True)]
    assert outbox.get("twc3/a/vitals/grid_v") == "241.3"
    assert outbox.retained_topics() == ["twc3/a/vitals/grid_v"]


def test_sent_value_is_no_longer_pending() -> None:
    """mark_sent removes a published value from pending()."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    assert _send_all(outbox) == [Message("t", "1")]
    assert outbox.pending() == []
    assert outbox.get("t") == "1"


def test_unchanged_value_not_republished_before_refresh() -> None:
    """The same value again within 300 s is not published again."""
    outbox, clock = _outbox()
    outbox.put("t", "1")
    _send_all(outbox)
    clock.advance(REFRESH_S - 0.001)
    outbox.put("t", "1")
    assert outbox.pending() == []


def test_unchanged_value_republished_after_refresh() -> None:
    """The same value is published again once 300 s have passed since it was sent."""
    outbox, clock = _outbox()
    outbox.put("t", "1")
    _send_all(outbox)
    clock.advance(REFRESH_S)
    outbox.put("t", "1")
    assert outbox.pending() == [Message("t", "1")]


def test_refresh_counts_from_the_send_not_the_put() -> None:
    """The 300 s run from when the value reached the broker, not from when it was put."""
    outbox, clock = _outbox()
    outbox.put("t", "1")
    clock.advance(100)
    _send_all(outbox)  # sent at +100
    clock.advance(250)  # +350: only 250 s after the send
    outbox.put("t", "1")
    assert outbox.pending() == []
    clock.advance(50)  # +400: 300 s after the send
    outbox.put("t", "1")
    assert outbox.pending() == [Message("t", "1")]


def test_refresh_stale_marks_only_topics_sent_long_ago() -> None:
    """refresh_stale() re-sends what was last sent refresh_s ago, without anyone putting it."""
    outbox, clock = _outbox()
    outbox.put("old", "1")
    _send_all(outbox)
    clock.advance(200)
    outbox.put("recent", "2")
    outbox.put("never-sent", "3")
    _send_all(outbox)
    outbox.put("never-sent", "4")  # pending already: not counted twice
    assert outbox.refresh_stale() == 0
    clock.advance(REFRESH_S - 200)
    assert outbox.refresh_stale() == 1
    assert outbox.pending() == [Message("never-sent", "4"), Message("old", "1")]
    _send_all(outbox)
    assert outbox.refresh_stale() == 0
    outbox.delete("recent")
    clock.advance(REFRESH_S)
    assert {m.topic for m in outbox.pending()} == {"recent"}  # the deletion only
    assert outbox.refresh_stale() == 2
    assert {(m.topic, m.payload) for m in outbox.pending()} == {
        ("recent", ""),
        ("old", "1"),
        ("never-sent", "4"),
    }


def test_refresh_stale_keeps_to_its_prefix() -> None:
    outbox, clock = _outbox()
    outbox.put("twc3/garage/vitals/grid_v", "230")
    outbox.put("homeassistant/sensor/x/config", "{}")
    _send_all(outbox)
    clock.advance(REFRESH_S)
    assert outbox.refresh_stale(prefix="twc3/") == 1
    assert outbox.pending() == [Message("twc3/garage/vitals/grid_v", "230")]


def test_refresh_interval_is_configurable() -> None:
    """A custom refresh_s is honoured."""
    outbox, clock = _outbox(refresh_s=10)
    outbox.put("t", "1")
    _send_all(outbox)
    clock.advance(9)
    outbox.put("t", "1")
    assert outbox.pending() == []
    clock.advance(1)
    outbox.put("t", "1")
    assert outbox.pending() == [Message("t", "1")]


def test_changed_value_published_at_once() -> None:
    """A new value is published however recently the old one was sent."""
    outbox, clock = _outbox()
    outbox.put("t", "1")
    _send_all(outbox)
    clock.advance(1)
    outbox.put("t", "2")
    assert outbox.pending() == [Message("t", "2")]


def test_always_publishes_unchanged_value() -> None:
    """always=True publishes even an unchanged, fresh value (the whole-body topic)."""
    outbox, clock = _outbox()
    outbox.put("t", "{}", always=True)
    _send_all(outbox)
    clock.advance(1)
    outbox.put("t", "{}", always=True)
    assert outbox.pending() == [Message("t", "{}")]


def test_latest_value_wins_before_sending() -> None:
    """Several puts before a send leave only the newest value pending."""
    outbox, _ = _outbox()
    for value in ("1", "2", "3"):
        outbox.put("t", value)
    assert outbox.pending() == [Message("t", "3")]


def test_pending_keeps_arrival_order() -> None:
    """Retained values are published in the order they were first put."""
    outbox, _ = _outbox()
    for topic in ("c", "a", "b"):
        outbox.put(topic, "x")
    outbox.put("c", "y")
    assert [message.topic for message in outbox.pending()] == ["c", "a", "b"]


@pytest.mark.parametrize("always", [False, True])
def test_empty_payload_refused(always: bool) -> None:
    """An empty payload would delete the topic: put() raises ValueError and stores nothing."""
    outbox, _ = _outbox()
    with pytest.raises(ValueError, match="empty payload"):
        outbox.put("t", "", always=always)
    assert outbox.pending() == []
    assert outbox.get("t") is None


# --- deletions ----------------------------------------------------------------------------------


def test_delete_produces_empty_retained_message() -> None:
    """delete() queues an empty retained payload and forgets the value."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    _send_all(outbox)
    outbox.delete("t")
    assert outbox.pending() == [Message("t", "", retain=True)]
    assert outbox.get("t") is None
    assert outbox.retained_topics() == []
    _send_all(outbox)
    assert outbox.pending() == []


def test_delete_of_unsent_value_sends_only_the_deletion() -> None:
    """Deleting a value never sent drops it and sends the deletion only."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    outbox.delete("t")
    assert outbox.pending() == [Message("t", "")]


def test_put_after_delete_cancels_the_deletion() -> None:
    """A new value after delete() replaces the pending deletion."""
    outbox, _ = _outbox()
    outbox.delete("t")
    outbox.put("t", "2")
    assert outbox.pending() == [Message("t", "2")]


def test_same_value_after_delete_is_published_again() -> None:
    """After a deletion, putting the old value again is published, however fresh it was."""
    outbox, clock = _outbox()
    outbox.put("t", "1")
    _send_all(outbox)
    outbox.delete("t")
    _send_all(outbox)
    clock.advance(1)
    outbox.put("t", "1")
    assert outbox.pending() == [Message("t", "1")]


def test_deletions_come_before_values_and_events() -> None:
    """pending() lists deletions, then retained values, then events."""
    outbox, _ = _outbox()
    outbox.event("ev", "e1")
    outbox.put("keep", "1")
    outbox.delete("gone")
    assert outbox.pending() == [
        Message("gone", ""),
        Message("keep", "1"),
        Message("ev", "e1", retain=False),
    ]


# --- events -------------------------------------------------------------------------------------


def test_events_are_not_retained() -> None:
    """event() queues a non-retained message, also for repeated identical payloads."""
    outbox, _ = _outbox()
    outbox.event("twc3/bridge/log", "hello")
    outbox.event("twc3/bridge/log", "hello")
    assert outbox.pending() == [Message("twc3/bridge/log", "hello", retain=False)] * 2
    assert outbox.get("twc3/bridge/log") is None
    assert outbox.retained_topics() == []


def test_sent_event_leaves_the_queue() -> None:
    """mark_sent on the oldest event removes exactly that one."""
    outbox, _ = _outbox()
    outbox.event("e", "1")
    outbox.event("e", "2")
    outbox.mark_sent(Message("e", "1", retain=False))
    assert outbox.pending() == [Message("e", "2", retain=False)]


def test_mark_sent_of_unknown_event_changes_nothing() -> None:
    """An event that is not at the head of the queue (already dropped) is not removed."""
    outbox, _ = _outbox()
    outbox.event("e", "2")
    outbox.mark_sent(Message("e", "1", retain=False))
    assert outbox.pending() == [Message("e", "2", retain=False)]


def test_events_are_bounded_and_drops_counted() -> None:
    """Beyond max_events the oldest events are dropped and dropped_events counts them."""
    outbox, _ = _outbox(max_events=3)
    for index in range(5):
        outbox.event("e", str(index))
    assert [message.payload for message in outbox.pending()] == ["2", "3", "4"]
    assert outbox.dropped_events == 2


def test_no_drops_within_the_bound() -> None:
    """Filling the queue exactly does not count a drop."""
    outbox, _ = _outbox(max_events=3)
    for index in range(3):
        outbox.event("e", str(index))
    assert outbox.dropped_events == 0
    assert len(outbox.pending()) == 3


def test_handed_events_are_not_pending_until_requeued() -> None:
    """A handed-over event is skipped by pending(); after a drop it is pending again, in order."""
    outbox, _ = _outbox()
    for payload in ("1", "2", "3"):
        outbox.event("e", payload)
    outbox.mark_handed(Message("e", "1", retain=False))
    outbox.mark_handed(Message("e", "2", retain=False))
    assert outbox.pending() == [Message("e", "3", retain=False)]
    assert outbox.unconfirmed_events == 2
    outbox.requeue_unconfirmed_events()
    assert [message.payload for message in outbox.pending()] == ["1", "2", "3"]
    assert outbox.unconfirmed_events == 0


def test_confirmed_events_leave_the_queue_and_the_handed_count() -> None:
    """mark_sent after mark_handed removes the event; the rest stays as it was."""
    outbox, _ = _outbox()
    for payload in ("1", "2", "3"):
        outbox.event("e", payload)
    for payload in ("1", "2"):
        outbox.mark_handed(Message("e", payload, retain=False))
    outbox.mark_sent(Message("e", "1", retain=False))
    assert outbox.unconfirmed_events == 1
    assert outbox.pending() == [Message("e", "3", retain=False)]
    outbox.requeue_unconfirmed_events()
    assert [message.payload for message in outbox.pending()] == ["2", "3"]


def test_confirming_removes_exactly_the_handed_events() -> None:
    """A confirmed barrier takes every handed event out of the queue, and nothing else."""
    outbox, _ = _outbox(max_events=3)
    for payload in ("1", "2", "3"):
        outbox.event("e", payload)
    for payload in ("1", "2", "3"):
        outbox.mark_handed(Message("e", payload, retain=False))
    outbox.event("e", "4")  # drops the handed "1"
    outbox.confirm_handed_events()
    assert outbox.unconfirmed_events == 0
    outbox.requeue_unconfirmed_events()
    assert outbox.pending() == [Message("e", "4", retain=False)]


def test_handing_over_out_of_order_or_a_retained_value_changes_nothing() -> None:
    """Only the next unhanded event can be handed over; retained values are never counted."""
    outbox, _ = _outbox()
    outbox.event("e", "1")
    outbox.event("e", "2")
    outbox.put("t", "1")
    outbox.mark_handed(Message("e", "2", retain=False))
    outbox.mark_handed(Message("t", "1"))
    assert outbox.unconfirmed_events == 0


def test_dropping_a_handed_event_for_a_new_one_keeps_the_count_right() -> None:
    """A full queue drops its oldest event even when handed over; the new one is pending."""
    outbox, _ = _outbox(max_events=2)
    outbox.event("e", "1")
    outbox.event("e", "2")
    outbox.mark_handed(Message("e", "1", retain=False))
    outbox.event("e", "3")  # drops "1"
    assert outbox.unconfirmed_events == 0
    assert [message.payload for message in outbox.pending()] == ["2", "3"]
    outbox.mark_sent(Message("e", "1", retain=False))  # its confirmation comes late: no effect
    assert [message.payload for message in outbox.pending()] == ["2", "3"]


def test_events_can_carry_an_empty_payload() -> None:
    """An empty non-retained payload deletes nothing and is allowed."""
    outbox, _ = _outbox()
    outbox.event("e", "")
    assert outbox.pending() == [Message("e", "", retain=False)]


# --- republish_all and mark_sent ----------------------------------------------------------------


def test_republish_all_marks_everything_again() -> None:
    """After a reconnect every retained value is pending again, in put order."""
    outbox, _ = _outbox()
    outbox.put("a", "1")
    outbox.put("b", "2")
    _send_all(outbox)
    outbox.republish_all()
    assert outbox.pending() == [Message("a", "1"), Message("b", "2")]


def test_republish_all_skips_deleted_topics_and_keeps_events() -> None:
    """Deleted topics are not republished; queued events stay queued once."""
    outbox, _ = _outbox()
    outbox.put("a", "1")
    outbox.put("b", "2")
    _send_all(outbox)
    outbox.delete("b")
    _send_all(outbox)
    outbox.event("e", "x")
    outbox.republish_all()
    assert outbox.pending() == [Message("a", "1"), Message("e", "x", retain=False)]


def test_republish_all_on_empty_outbox_has_nothing_pending() -> None:
    """republish_all with nothing stored leaves nothing pending."""
    outbox, _ = _outbox()
    outbox.republish_all()
    assert outbox.pending() == []


def test_mark_sent_only_clears_if_not_superseded() -> None:
    """A value replaced while its publish was in flight stays pending with the new value."""
    outbox, clock = _outbox()
    outbox.put("t", "1")
    in_flight = outbox.pending()
    outbox.put("t", "2")
    for message in in_flight:
        outbox.mark_sent(message)
    assert outbox.pending() == [Message("t", "2")]
    # The stale send did not count as a send of "2": the next send of "2" starts the refresh.
    _send_all(outbox)
    clock.advance(1)
    outbox.put("t", "2")
    assert outbox.pending() == []


def test_superseded_send_does_not_start_the_refresh_for_the_old_value() -> None:
    """After a superseded send, putting the old value back publishes it."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    in_flight = outbox.pending()
    outbox.put("t", "2")
    for message in in_flight:
        outbox.mark_sent(message)
    _send_all(outbox)
    outbox.put("t", "1")
    assert outbox.pending() == [Message("t", "1")]


def test_mark_sent_of_deleted_value_does_not_clear_deletion() -> None:
    """A value deleted while in flight keeps its deletion pending."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    in_flight = outbox.pending()
    outbox.delete("t")
    for message in in_flight:
        outbox.mark_sent(message)
    assert outbox.pending() == [Message("t", "")]


def test_mark_sent_of_deletion_after_new_value_keeps_the_value() -> None:
    """A deletion in flight when a new value arrives does not drop the new value."""
    outbox, _ = _outbox()
    outbox.delete("t")
    in_flight = outbox.pending()
    outbox.put("t", "3")
    for message in in_flight:
        outbox.mark_sent(message)
    assert outbox.pending() == [Message("t", "3")]


# --- wait ---------------------------------------------------------------------------------------


async def test_wait_returns_when_something_is_put() -> None:
    """wait() blocks while nothing is pending and returns after a put."""
    outbox, _ = _outbox()
    await _waits_until(outbox, lambda: outbox.put("t", "1"))


@pytest.mark.parametrize("action", ["event", "delete", "put"])
async def test_wait_wakes_for_every_kind_of_message(action: str) -> None:
    """An event, a deletion or a value each wake a waiting drainer."""
    outbox, _ = _outbox()
    wake = {
        "event": lambda: outbox.event("e", "x"),
        "delete": lambda: outbox.delete("t"),
        "put": lambda: outbox.put("t", "1"),
    }[action]
    await _waits_until(outbox, wake)


async def test_wait_returns_at_once_when_already_pending() -> None:
    """wait() does not block when something is already pending."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    async with asyncio.timeout(1):
        await OutboxSignal(outbox).wait()


async def test_wait_blocks_again_once_everything_is_sent() -> None:
    """After everything is marked sent, wait() blocks until the next message."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    async with asyncio.timeout(1):
        await OutboxSignal(outbox).wait()
    _send_all(outbox)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await OutboxSignal(outbox).wait()


async def test_wait_ignores_an_unchanged_put() -> None:
    """A put that changes nothing (fresh, same value) does not wake the drainer."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    _send_all(outbox)
    outbox.put("t", "1")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await OutboxSignal(outbox).wait()


async def test_wait_wakes_after_republish_all() -> None:
    """republish_all after a reconnect wakes the drainer."""
    outbox, _ = _outbox()
    outbox.put("t", "1")
    _send_all(outbox)
    await _waits_until(outbox, outbox.republish_all)


async def test_wait_blocks_while_only_handed_events_are_queued() -> None:
    """Handed-over events are not work to do: wait() blocks until something else comes."""
    outbox, _ = _outbox()
    outbox.event("e", "1")
    outbox.mark_handed(Message("e", "1", retain=False))
    await _waits_until(outbox, outbox.requeue_unconfirmed_events)


# --- deferred payloads and bounded chunks ---------------------------------------------------------


class CountingRenderer:
    """Renders ``name=value`` and counts how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str, value: int) -> str:
        """The payload text."""
        self.calls += 1
        return f"{name}={value}"


def test_deferred_payload_is_rendered_when_published_and_once_per_publish() -> None:
    """A deferred payload is held unrendered; pending() renders it, confirming does not again."""
    outbox, _ = _outbox()
    render = CountingRenderer()
    outbox.put("cfg", Deferred(render, ("a", 1)))
    assert render.calls == 0
    assert _send_all(outbox) == [Message("cfg", "a=1")]
    assert render.calls == 1
    assert outbox.pending() == []
    assert outbox.get("cfg") == "a=1"


def test_equal_deferred_payload_is_no_change_and_a_different_one_is() -> None:
    """Same renderer and arguments mean the same text: nothing to send; new arguments are sent."""
    outbox, _ = _outbox()
    render = CountingRenderer()
    outbox.put("cfg", Deferred(render, ("a", 1)))
    _send_all(outbox)
    outbox.put("cfg", Deferred(render, ("a", 1)))
    assert outbox.pending() == []
    outbox.put("cfg", Deferred(render, ("a", 2)))
    assert outbox.pending() == [Message("cfg", "a=2")]


def test_deferred_payload_replaced_while_in_flight_stays_pending() -> None:
    """A config changed between rendering and confirmation is sent again, with the new text."""
    outbox, _ = _outbox()
    render = CountingRenderer()
    outbox.put("cfg", Deferred(render, ("a", 1)))
    [in_flight] = outbox.pending()
    outbox.put("cfg", Deferred(render, ("a", 2)))
    outbox.mark_sent(in_flight)
    assert outbox.pending() == [Message("cfg", "a=2")]


def test_deferred_and_plain_text_replace_each_other() -> None:
    """A topic may switch between a deferred payload and plain text."""
    outbox, _ = _outbox()
    outbox.put("cfg", Deferred(CountingRenderer(), ("a", 1)))
    _send_all(outbox)
    outbox.put("cfg", "plain")
    assert _send_all(outbox) == [Message("cfg", "plain")]
    outbox.put("cfg", Deferred(CountingRenderer(), ("a", 1)))
    assert _send_all(outbox) == [Message("cfg", "a=1")]


def test_pending_with_a_limit_gives_the_oldest_first_chunk_by_chunk() -> None:
    """pending(limit) returns deletions, values, then events, at most ``limit`` at a time."""
    outbox, _ = _outbox()
    outbox.put("gone", "x")
    _send_all(outbox)
    outbox.delete("gone")
    for n in range(5):
        outbox.put(f"t{n}", str(n))
    outbox.event("ev", "e1")
    render = CountingRenderer()
    outbox.put("cfg", Deferred(render, ("a", 1)))
    chunks: list[list[str]] = []
    while chunk := outbox.pending(3):
        chunks.append([message.topic for message in chunk])
        for message in chunk:
            outbox.mark_sent(message)
    assert chunks == [["gone", "t0", "t1"], ["t2", "t3", "t4"], ["cfg", "ev"]]
    assert render.calls == 1  # rendered only when its chunk came


# --- discarding a message the broker will not take ----------------------------------------------


def test_discarded_value_is_forgotten_not_deleted() -> None:
    outbox, _ = _outbox()
    outbox.put("t/big", "x" * 100)
    outbox.put("t/small", "1")
    big, small = outbox.pending()
    outbox.discard(big)
    assert outbox.pending() == [small]
    assert outbox.get("t/big") is None
    assert "t/big" not in outbox.retained_topics()
    outbox.republish_all()
    assert outbox.pending() == [small]  # no deletion either: the broker keeps what it had


def test_discarded_value_comes_back_when_put_again() -> None:
    outbox, _ = _outbox()
    outbox.put("t/big", "x" * 100)
    (big,) = outbox.pending()
    outbox.discard(big)
    outbox.put("t/big", "x" * 100)
    assert outbox.pending() == [big]


def test_discard_keeps_a_newer_value() -> None:
    outbox, _ = _outbox()
    outbox.put("t/a", "old")
    (old,) = outbox.pending()
    outbox.put("t/a", "new")
    outbox.discard(old)
    assert outbox.pending() == [Message("t/a", "new")]


def test_discard_of_a_deferred_value_compares_its_source() -> None:
    outbox, _ = _outbox()
    outbox.put("t/config", Deferred(str.upper, ("abc",)))
    (rendered,) = outbox.pending()
    outbox.discard(rendered)
    assert outbox.pending() == []


def test_discarded_event_leaves_the_queue_and_handed_events_stay_handed() -> None:
    outbox, _ = _outbox()
    outbox.event("t/e", "1")
    outbox.event("t/e", "2")
    outbox.event("t/e", "3")
    first, second, third = outbox.pending()
    outbox.mark_handed(first)
    outbox.discard(first)  # handed already: not the broker's refusal to make now
    outbox.discard(second)
    assert outbox.pending() == [third]
    outbox.mark_handed(third)
    outbox.confirm_handed_events()
    assert outbox.pending() == []
    assert outbox.unconfirmed_events == 0


def test_discarded_deletion_is_no_longer_pending() -> None:
    outbox, _ = _outbox()
    outbox.delete("t/gone")
    (deletion,) = outbox.pending()
    outbox.discard(deletion)
    assert outbox.pending() == []
