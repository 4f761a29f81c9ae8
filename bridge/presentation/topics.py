"""The bridge's own MQTT topics (:class:`TopicLayout` spells them all) and their payload text."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """Every topic the bridge publishes under its base topic, spelt here and nowhere else.

    ``<base>/bridge/state`` (``<base>/bridge/<instance>/state`` for a named instance, beside its
    ``owner`` topic), ``<base>/<unit>/availability``, ``<base>/<unit>/<endpoint>`` and its
    ``/<field>`` levels, ``<base>/<unit>/derived/<name>``, ``<base>/<unit>/event``,
    ``<base>/<unit>/poller/<name>``, ``<base>/group/<group>/<key>`` and the search counters
    ``<base>/bridge/discovery/<name>``. Home Assistant's discovery
    topics and Homie's belong to their own conventions (``discovery`` and ``homie`` modules).
    """

    base: str
    # ``[bridge] instance``: several bridge processes under one base topic each get their own
    # state topic, so one stopping never marks another's units unavailable.
    instance: str | None = None

    @property
    def bridge_root(self) -> str:
        """The root of this process's topics: ``<base>/bridge`` or ``<base>/bridge/<instance>``."""
        if self.instance:
            return f"{self.base}/bridge/{self.instance}"
        return f"{self.base}/bridge"

    @property
    def bridge_state(self) -> str:
        """The bridge's ``online``/``offline`` topic (also its MQTT Will)."""
        return f"{self.bridge_root}/state"

    @property
    def bridge_owner(self) -> str:
        """The retained run token of the process holding :attr:`bridge_state` (twin detection)."""
        return f"{self.bridge_root}/owner"

    def bridge_search(self, name: str) -> str:
        """A search counter of ``[discovery]``: ``<bridge_root>/discovery/<name>``."""
        return f"{self.bridge_root}/discovery/{name}"

    @property
    def every_instance_state(self) -> str:
        """A subscription filter for the state topic of every named instance."""
        return f"{self.base}/bridge/+/state"

    def parse_instance_state(self, topic: str) -> str | None:
        """The instance a bridge state topic belongs to: its name, ``""`` if unnamed, else None."""
        if topic == TopicLayout(self.base).bridge_state:
            return ""
        prefix = f"{self.base}/bridge/"
        if not topic.startswith(prefix) or not topic.endswith("/state"):
            return None
        name = topic[len(prefix) : -len("/state")]
        return name if name and "/" not in name else None

    def unit(self, unit_id: str) -> str:
        """The root of one unit's topics."""
        return f"{self.base}/{unit_id}"

    def unit_tree(self, unit_id: str) -> str:
        """A subscription filter for every topic of one unit (``<base>/<unit>/#``)."""
        return f"{self.base}/{unit_id}/#"

    def availability(self, unit_id: str) -> str:
        """Whether the unit answers: ``online``/``offline``."""
        return f"{self.base}/{unit_id}/availability"

    def body(self, unit_id: str, endpoint: str) -> str:
        """An endpoint's whole body as JSON."""
        return f"{self.base}/{unit_id}/{endpoint}"

    def field(self, unit_id: str, endpoint: str, level: str) -> str:
        """One field's plain value."""
        return f"{self.base}/{unit_id}/{endpoint}/{level}"

    def derived(self, unit_id: str, name: str) -> str:
        """One derived value."""
        return f"{self.base}/{unit_id}/derived/{name}"

    def event(self, unit_id: str) -> str:
        """The unit's non-retained events."""
        return f"{self.base}/{unit_id}/event"

    def poller(self, unit_id: str, name: str) -> str:
        """One of the bridge's own counters about the unit."""
        return f"{self.base}/{unit_id}/poller/{name}"

    def publisher(self, unit_id: str) -> str:
        """Which bridge process publishes the unit: that process's state topic."""
        return f"{self.base}/{unit_id}/poller/publisher"

    def is_bridge_state(self, topic: str) -> bool:
        """Whether ``topic`` is a bridge process's state topic under this base (no wildcards)."""
        return self.parse_instance_state(topic) is not None and not set(topic) & {"+", "#"}

    def group(self, group_id: str, key: str) -> str:
        """One value of a power-sharing group."""
        return f"{self.base}/group/{group_id}/{key}"

    def every_unit(self, *levels: str) -> str:
        """A subscription filter for the same topic of every unit (``<base>/+/…``)."""
        return "/".join((self.base, "+", *levels))

    def parse_unit_topic(self, topic: str) -> tuple[str, tuple[str, ...]] | None:
        """``(unit id, the levels after it)`` for a topic under the base, else ``None``."""
        prefix = f"{self.base}/"
        if not topic.startswith(prefix):
            return None
        unit_id, *levels = topic[len(prefix) :].split("/")
        return unit_id, tuple(levels)


def format_number(value: float) -> str | None:
    """Format a number as plain decimal text (``235.1``, ``0``), or ``None`` if not finite."""
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than int_max_str_digits allows in text
            return None
    if not math.isfinite(value):
        return None
    if value.is_integer() and abs(value) < 1e15:  # noqa: PLR2004 - beyond that floats lose units
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def plain_payload(value: Any) -> str | None:  # noqa: ANN401 - any JSON value
    """Format one field value as the text of its own topic.

    Numbers in decimal, booleans ``true``/``false``, strings as they are, lists and objects as
    compact JSON. Returns ``None`` for values that must not be published on their own topic:
    null, non-finite numbers and empty strings (an empty retained payload deletes the topic).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, str):
        return value or None
    return compact_json(value)


def compact_json(value: Any) -> str:  # noqa: ANN401 - any JSON value
    """Serialise to compact JSON; non-finite floats become ``null``, never ``NaN``.

    So do integers too long to write as text (past ``int_max_str_digits``).
    """
    try:
        return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return json.dumps(_finite(value, writable=True), separators=(",", ":"), ensure_ascii=False)


def _finite(value: Any, *, writable: bool = False) -> Any:  # noqa: ANN401 - any JSON value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if writable and isinstance(value, int) and format_number(value) is None:
        return None
    if isinstance(value, list | tuple):
        return [_finite(item, writable=writable) for item in value]
    if isinstance(value, dict):
        return {str(key): _finite(item, writable=writable) for key, item in value.items()}
    return value
