"""What the broker should hold: the latest retained value per topic, plus a short event queue.

Producers (pollers) write here whether or not the broker is connected; the MQTT link drains it.
Only the newest value per topic is kept, so a long broker outage costs bounded memory and a
reconnect republishes exactly the current state. Large payloads that are rarely sent (discovery
configs) can be held as a :class:`Deferred`, rendered each time they are published.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from itertools import islice
from typing import Final

REFRESH_S: Final = 300.0
MAX_QUEUED_EVENTS: Final = 1000


@dataclass(frozen=True, slots=True)
class Deferred:
    """A payload rendered when it is published: ``render(*args)``, a pure function of ``args``.

    Equal ``render`` and ``args`` mean equal text, so putting an equal one again is no change.
    Kept instead of the text, a unit's ~80 discovery configs cost a few hundred bytes, not ~80 kB.
    """

    render: Callable[..., str]
    args: tuple[Hashable, ...]

    def text(self) -> str:
        """The payload as published."""
        return self.render(*self.args)


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish; an empty retained payload deletes the topic on the broker."""

    topic: str
    payload: str
    retain: bool = True
    # What a deferred payload was rendered from, so confirming it needs no second rendering.
    source: Deferred | None = field(default=None, compare=False, repr=False)


class Outbox:
    """Latest-value-wins store of retained topics, with change detection and periodic refresh."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = REFRESH_S,
        max_events: int = MAX_QUEUED_EVENTS,
    ) -> None:
        self._clock = clock
        self.refresh_s = refresh_s
        self._retained: dict[str, str | Deferred] = {}
        self._sent_at: dict[str, float] = {}
        self._dirty: dict[str, None] = {}  # an ordered set: publish in the order values arrived
        self._deletions: dict[str, None] = {}
        self._events: deque[Message] = deque(maxlen=max_events)
        # How many events at the head of the queue were handed to the broker, not yet confirmed:
        # pending() skips them; they leave the queue once confirmed, or go again after a drop.
        self._events_handed = 0
        self.dropped_events = 0
        # Told whenever something becomes pending (the MQTT link wakes its drain with it).
        self._on_change: Callable[[], None] = _nothing

    def put(self, topic: str, payload: str | Deferred, *, always: bool = False) -> None:
        """Set a retained topic; it is published if new, changed, stale, or ``always``."""
        if payload == "":
            raise ValueError(f"refusing an empty payload for {topic}: it would delete the topic")
        if (
            not always
            and self._retained.get(topic) == payload
            and self._clock() - self._sent_at.get(topic, float("-inf")) < self.refresh_s
        ):
            return
        self._retained[topic] = payload
        self._deletions.pop(topic, None)
        self._dirty[topic] = None
        self._on_change()

    def delete(self, topic: str) -> None:
        """Remove a retained topic from the broker (an empty retained payload)."""
        self._retained.pop(topic, None)
        self._sent_at.pop(topic, None)
        self._dirty.pop(topic, None)
        self._deletions[topic] = None
        self._on_change()

    def event(self, topic: str, payload: str) -> None:
        """Queue a non-retained message; the oldest are dropped beyond the queue bound."""
        if len(self._events) == self._events.maxlen:
            self.dropped_events += 1
            if self._events_handed:  # the oldest goes, and it was handed over
                self._events_handed -= 1
        self._events.append(Message(topic, payload, retain=False))
        self._on_change()

    @property
    def unconfirmed_events(self) -> int:
        """Events handed to the broker whose arrival it has not confirmed yet."""
        return self._events_handed

    def confirm_handed_events(self) -> None:
        """A barrier after them was confirmed: every event handed over reached the broker."""
        while self._events_handed:
            self.mark_sent(self._events[0])

    def requeue_unconfirmed_events(self) -> None:
        """The connection dropped: events handed over but not confirmed are pending again."""
        self._events_handed = 0
        if self._events:
            self._on_change()

    def get(self, topic: str) -> str | None:
        """The current retained value of a topic, published or not."""
        value = self._retained.get(topic)
        return value.text() if isinstance(value, Deferred) else value

    def delivered(self, topic: str) -> bool:
        """Whether nothing waits to be published for ``topic``: its value or deletion went out."""
        return topic not in self._dirty and topic not in self._deletions

    def retained_topics(self) -> list[str]:
        """Every topic currently held."""
        return list(self._retained)

    def refresh_stale(self, prefix: str = "") -> int:
        """Mark for publishing every retained topic under ``prefix`` last sent ``refresh_s`` ago.

        Producers may then skip putting values they know are unchanged; this keeps the promise
        that every topic is sent again at least every ``refresh_s``. Returns how many were marked.
        """
        oldest = self._clock() - self.refresh_s
        stale = [
            topic
            for topic, sent in self._sent_at.items()
            if sent <= oldest
            and topic.startswith(prefix)
            and topic not in self._dirty
            and topic in self._retained
        ]
        self._dirty.update(dict.fromkeys(stale))
        if stale:
            self._on_change()
        return len(stale)

    def republish_all(self, first_prefix: str | None = None) -> None:
        """Mark every retained topic for publishing again (after a broker reconnect).

        Topics under ``first_prefix`` go first (discovery configs before the states they describe).
        """
        topics = list(self._retained)
        if first_prefix is not None:
            topics.sort(key=lambda topic: not topic.startswith(first_prefix))
        self._dirty = dict.fromkeys(topics)
        if self._dirty:
            self._on_change()

    def pending(self, limit: int | None = None) -> list[Message]:
        """What still has to be published, oldest first: deletions, retained values, events.

        With ``limit``, only the first that many. Deferred payloads are rendered here, so only a
        chunk's worth of their text exists at a time.
        """
        if limit is None:
            limit = (
                len(self._deletions) + len(self._dirty) + len(self._events) - self._events_handed
            )
        batch = [Message(topic, "") for topic in islice(self._deletions, limit)]
        retained = self._retained
        for topic in islice(self._dirty, limit - len(batch)):
            value = retained[topic]
            if isinstance(value, Deferred):
                batch.append(Message(topic, value.text(), source=value))
            else:
                batch.append(Message(topic, value))
        first_event = self._events_handed
        batch.extend(islice(self._events, first_event, first_event + limit - len(batch)))
        return batch

    def mark_handed(self, message: Message) -> None:
        """Record that event ``message`` went to the broker unconfirmed: pending() skips it now.

        It leaves the queue once confirmed (:meth:`confirm_handed_events`), or is pending again
        after :meth:`requeue_unconfirmed_events`. Retained values need no such step.
        """
        handed = self._events_handed
        if not message.retain and handed < len(self._events) and self._events[handed] == message:
            self._events_handed += 1

    def mark_sent(self, message: Message) -> None:
        """Record that ``message`` reached the broker."""
        if not message.retain:
            if self._events and self._events[0] == message:
                self._events.popleft()
                if self._events_handed:
                    self._events_handed -= 1
            return
        if not message.payload:
            self._deletions.pop(message.topic, None)
            return
        value = self._retained.get(message.topic)
        if isinstance(value, Deferred):
            unchanged = value == message.source  # equal sources render equal text
        else:
            unchanged = value == message.payload
        if unchanged:
            self._dirty.pop(message.topic, None)
            self._sent_at[message.topic] = self._clock()

    def discard(self, message: Message) -> None:
        """Forget ``message`` without sending it or deleting its topic on the broker.

        For a message the broker will not take: a retained value is forgotten unless a newer one
        replaced it (putting it again makes it pending again); an event leaves the queue.
        """
        if not message.retain:
            for index in range(self._events_handed, len(self._events)):
                if self._events[index] == message:
                    del self._events[index]
                    return
            return
        if not message.payload:
            self._deletions.pop(message.topic, None)
            return
        value = self._retained.get(message.topic)
        if value == (message.source if isinstance(value, Deferred) else message.payload):
            del self._retained[message.topic]
            self._sent_at.pop(message.topic, None)
            self._dirty.pop(message.topic, None)

    def notify_on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever something may have become pending (one listener)."""
        self._on_change = callback

    def has_pending(self) -> bool:
        """Whether anything waits to be published."""
        return bool(self._dirty or self._deletions or len(self._events) > self._events_handed)


def _nothing() -> None:
    return None
