"""``twc3-bridge watch``: a live table of every connector, read back from the broker.

The topic → state reduction (:func:`apply`) and the table (:func:`render`) are pure functions; the
rest subscribes through :mod:`bridge.adapters.mqtt` and redraws the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, TextIO

from bridge.adapters.mqtt import MqttUnavailableError, Subscription, subscribe
from bridge.core.config import MqttConfig
from bridge.presentation.topics import TopicLayout

UNKNOWN: Final = "–"  # an en dash: the table's "no value yet"
RESERVED_IDS: Final = frozenset({"bridge", "group"})
DERIVED_FIELDS: Final = ("status", "power_w", "current_a", "session_energy_kwh", "last_seen")
MAX_VALUE_CHARS: Final = 24
MAX_ID_CHARS: Final = 48
MAX_PAYLOAD_BYTES: Final = 256

ONCE_QUIET_S: Final = 0.5
ONCE_LIMIT_S: Final = 4.0
RECONNECT_DELAY_S: Final = 2.0
FIRST_DRAW_DELAY_S: Final = 0.3

CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"
CURSOR_HOME: Final = "\x1b[H"
CLEAR_TO_END_OF_LINE: Final = "\x1b[K"
CLEAR_TO_END_OF_SCREEN: Final = "\x1b[J"


@dataclass
class UnitView:
    """What the watcher knows about one connector; values are display-safe text or ``None``."""

    availability: str | None = None
    status: str | None = None
    power_w: str | None = None
    current_a: str | None = None
    session_energy_kwh: str | None = None
    last_seen: float | None = None  # epoch seconds, from derived/last_seen
    received: float | None = None  # epoch seconds of the last live (non-retained) message


@dataclass
class WatchState:
    """Everything read under one base topic."""

    base_topic: str = "twc3"
    bridge_state: str | None = None  # the process without ``[bridge] instance``
    # Each named instance's state (``<base>/bridge/<instance>/state``), by display-safe name.
    instances: dict[str, str] = field(default_factory=dict)
    units: dict[str, UnitView] = field(default_factory=dict)

    def listed(self) -> list[tuple[str, UnitView]]:
        """Connectors that have an availability topic, sorted by id."""
        return sorted(
            ((uid, unit) for uid, unit in self.units.items() if unit.availability is not None),
            key=lambda item: item[0],
        )


def subscriptions(base_topic: str) -> tuple[str, ...]:
    """The topic filters the watcher needs."""
    layout = TopicLayout(base_topic)
    return (
        layout.bridge_state,
        layout.every_instance_state,
        layout.every_unit("availability"),
        *(layout.every_unit("derived", name) for name in DERIVED_FIELDS),
    )


def clean_text(raw: bytes | str, limit: int = MAX_VALUE_CHARS) -> str | None:
    """Display-safe text: UTF-8 with replacement, no control characters, at most ``limit`` chars.

    An empty payload (a deleted retained topic) gives ``None``.
    """
    if isinstance(raw, bytes):
        text = raw[:MAX_PAYLOAD_BYTES].decode("utf-8", errors="replace")
    else:
        text = raw[: MAX_PAYLOAD_BYTES * 4]
    text = "".join(
        ch if unicodedata.category(ch)[0] not in {"C", "Z"} or ch == " " else "?"
        for ch in text.strip()
    )
    # Wide and combining characters would break the column alignment; keep the text anyway.
    if not text:
        return None
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _parse_timestamp(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _watched_value(layout: TopicLayout, topic: str) -> tuple[str, str] | None:
    """``(unit id, "availability" or a derived name)`` for a topic the table shows, else None."""
    parsed = layout.parse_unit_topic(topic)
    if parsed is None:
        return None
    unit_id, levels = parsed
    if not unit_id or unit_id in RESERVED_IDS or "+" in unit_id or "#" in unit_id:
        return None
    if topic == layout.availability(unit_id):
        return unit_id, "availability"
    name = levels[-1]
    if name in DERIVED_FIELDS and topic == layout.derived(unit_id, name):
        return unit_id, name
    return None


def apply(
    state: WatchState,
    topic: str,
    payload: bytes,
    *,
    now: float | None = None,
    retained: bool = True,
) -> bool:
    """Fold one message into ``state``; ``True`` when it concerned the table.

    ``now`` (epoch seconds, default the current time) stamps live messages: a retained message may
    be hours old, so only ``derived/last_seen`` or a live message give a unit its age.
    """
    layout = TopicLayout(state.base_topic)
    instance = layout.parse_instance_state(topic)
    if instance == "":
        state.bridge_state = clean_text(payload)
        return True
    if instance is not None:
        return _apply_instance(state, instance, payload)
    watched = _watched_value(layout, topic)
    if watched is None:
        return False
    unit_id, name = watched
    unit = state.units.get(unit_id)
    if unit is None:
        if not payload:
            return False  # a deleted topic of a unit never seen: nothing to show
        unit = state.units[unit_id] = UnitView()
    value = clean_text(payload)
    if name == "last_seen":
        unit.last_seen = _parse_timestamp(value)
    else:
        setattr(unit, name, value)
    if not retained:
        unit.received = time.time() if now is None else now
    return True


def _apply_instance(state: WatchState, instance: str, payload: bytes) -> bool:
    name = clean_text(instance, MAX_ID_CHARS)
    if name is None or "+" in instance or "#" in instance:
        return False
    value = clean_text(payload)
    if value is None:  # a deleted state topic: that instance is gone
        return state.instances.pop(name, None) is not None
    state.instances[name] = value
    return True


def bridge_line(state: WatchState) -> str:
    """``bridge: online``, or with named instances ``bridge: barn offline, garage online``."""
    parts = [f"{name} {value}" for name, value in sorted(state.instances.items())]
    if state.bridge_state is not None or not parts:
        parts.insert(0, state.bridge_state or UNKNOWN)
    return "bridge: " + ", ".join(parts)


def format_age(seconds: float | None) -> str:
    """``4s``, ``2m 05s``, ``3h 07m``, ``2d 04h``; ``–`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return UNKNOWN
    total = max(0, int(seconds))
    if total < 60:  # noqa: PLR2004
        return f"{total}s"
    if total < 3600:  # noqa: PLR2004
        return f"{total // 60}m {total % 60:02d}s"
    if total < 86400:  # noqa: PLR2004
        return f"{total // 3600}h {total % 3600 // 60:02d}m"
    return f"{total // 86400}d {total % 86400 // 3600:02d}h"


def unit_age(unit: UnitView, now: float) -> float | None:
    """Seconds since the newest of ``last_seen`` and the last live message, or ``None``."""
    moments = [moment for moment in (unit.last_seen, unit.received) if moment is not None]
    return now - max(moments) if moments else None


COLUMNS: Final = (
    ("ID", "<"),
    ("AVAILABILITY", "<"),
    ("STATUS", "<"),
    ("POWER W", ">"),
    ("CURRENT A", ">"),
    ("SESSION kWh", ">"),
    ("AGE", ">"),
)


def render(state: WatchState, now: float) -> str:
    """The table: the bridge state, then one row per connector sorted by id (``now``: epoch s)."""
    rows: list[tuple[str, ...]] = [
        (
            clean_text(uid, MAX_ID_CHARS) or UNKNOWN,
            unit.availability or UNKNOWN,
            unit.status or UNKNOWN,
            unit.power_w or UNKNOWN,
            unit.current_a or UNKNOWN,
            unit.session_energy_kwh or UNKNOWN,
            format_age(unit_age(unit, now)),
        )
        for uid, unit in state.listed()
    ]
    header = tuple(title for title, _ in COLUMNS)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            cell.ljust(width) if align == "<" else cell.rjust(width)
            for cell, width, (_, align) in zip(cells, widths, COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [bridge_line(state), "", line(header)]
    out.extend(line(row) for row in rows)
    if not rows:
        out.append(f"(no connector under {clean_text(state.base_topic, 200)}/+/availability yet)")
    return "\n".join(out) + "\n"


class Screen:
    """Writes tables: redrawn in place on a terminal, one after another (blank line) otherwise."""

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._drawn = 0

    def show(self, table: str) -> None:
        """Draw one table."""
        if self.tty:
            prefix = CLEAR_SCREEN if self._drawn == 0 else CURSOR_HOME
            body = "".join(f"{row}{CLEAR_TO_END_OF_LINE}\n" for row in table.splitlines())
            self.out.write(prefix + body + CLEAR_TO_END_OF_SCREEN)
        else:
            self.out.write(("\n" if self._drawn else "") + table)
        self.out.flush()
        self._drawn += 1


def _identifier() -> str:
    return f"twc3-watch-{os.getpid()}-{secrets.token_hex(3)}"


async def _next(subscription: Subscription, timeout_s: float) -> tuple[str, bytes, bool] | None:
    """The next message, or ``None`` when none came within ``timeout_s``."""
    try:
        async with asyncio.timeout(max(timeout_s, 0.0)):
            return await subscription.next()
    except TimeoutError:
        return None


async def watch_once(config: MqttConfig, out: TextIO, err: TextIO) -> int:
    """Collect the retained state until the flow goes quiet, print one table."""
    state = WatchState(config.base_topic)
    try:
        async with subscribe(
            config, subscriptions(config.base_topic), identifier=_identifier()
        ) as subscription:
            deadline = time.monotonic() + ONCE_LIMIT_S
            while (left := deadline - time.monotonic()) > 0:
                message = await _next(subscription, min(ONCE_QUIET_S, left))
                if message is None:
                    break
                topic, payload, retained = message
                apply(state, topic, payload, retained=retained)
    except MqttUnavailableError as error:
        print(f"error: broker {config.host}:{config.port}: {error}", file=err)
        return 1
    out.write(render(state, time.time()))
    out.flush()
    if not state.listed():
        filter_ = TopicLayout(config.base_topic).every_unit("availability")
        print(
            f"error: no connector seen under {filter_} on {config.host}:{config.port}",
            file=err,
        )
        return 1
    return 0


async def watch_live(
    config: MqttConfig, out: TextIO, err: TextIO, *, interval_s: float, tty: bool
) -> int:
    """Redraw the table every ``interval_s`` until interrupted; reconnect if the broker drops."""
    state = WatchState(config.base_topic)
    screen = Screen(out, tty=tty)
    connected_once = False
    while True:
        try:
            async with subscribe(
                config, subscriptions(config.base_topic), identifier=_identifier()
            ) as subscription:
                connected_once = True
                # Give the retained messages a moment, so the first table is not empty.
                next_draw = time.monotonic() + min(interval_s, FIRST_DRAW_DELAY_S)
                while True:
                    now = time.monotonic()
                    if now >= next_draw:
                        screen.show(render(state, time.time()))
                        next_draw = now + interval_s
                    message = await _next(subscription, next_draw - time.monotonic())
                    if message is not None:
                        topic, payload, retained = message
                        apply(state, topic, payload, retained=retained)
        except MqttUnavailableError as error:
            print(f"error: broker {config.host}:{config.port}: {error}", file=err)
            if not connected_once:
                return 1
            err.flush()
            await asyncio.sleep(RECONNECT_DELAY_S)


def run_watch(config: MqttConfig, *, once: bool, interval_s: float) -> int:
    """Entry point of the subcommand; Ctrl-C ends it with exit code 0."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    out, err = sys.stdout, sys.stderr
    try:
        if once:
            return asyncio.run(watch_once(config, out, err))
        return asyncio.run(watch_live(config, out, err, interval_s=interval_s, tty=out.isatty()))
    except KeyboardInterrupt:
        if out.isatty():
            out.write("\n")
        return 0
