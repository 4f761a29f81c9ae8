"""The saved state (``state.json``): its typed, versioned schema and its only reader and writer.

What is kept: each unit's energy accumulator (found again by serial number and by connector key),
the serial number -> address book, what discovery announced, every unit id published (with the
connector key that published it, so ids of connectors no longer configured can be cleared), and
the units found in the networks and added by ``[discovery] add_new`` (serial number -> address).
The file is replaced atomically and never stops the bridge: a read-only or full directory warns
once (again only after a write succeeded in between); a file that cannot be used whole
(unreadable, not JSON, the wrong shape, an unknown version) is kept aside as
``state.json.bad-<UTC time>`` with one warning, and the bridge starts with whatever part of it is
valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from bridge.core.config import parse_host
from bridge.core.derived import SessionEnergy
from bridge.core.names import id_problem

logger = logging.getLogger(__name__)

STATE_VERSION: Final = 4
# Version 1 had no "version" key: {"energy": {serial: accumulator}, "addresses": {serial: host},
# "discovery": {"topics": {topic: owner}, "components": {owner: {key: platform}}}}.
# Version 2 made "energy" a list of records; version 3 added "published" ({unit id: owner});
# version 4 added "found_units" ({serial: host}).
# Older files read as having published nothing and added no found unit: their ids are recorded
# again as units publish, and a unit found again is added again.
FIRST_VERSION: Final = 1
KNOWN_KEYS: Final = frozenset(
    {"version", "energy", "addresses", "discovery", "published", "found_units"}
)
MAX_SET_ASIDE_TRIES: Final = 100
_SHOWN_CHARS: Final = 40  # of a file-supplied name quoted in the warning
MAX_KEY_LENGTH: Final = 256
MAX_TOPIC_BYTES: Final = 65535  # MQTT's limit


def _or_none(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    # A damaged side field of an accumulator costs its session base, never its total.
    try:
        return handler(value)
    except ValidationError:
        return None


Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
OrNone = WrapValidator(_or_none)


class EnergyRecord(BaseModel):
    """One unit's energy accumulator as saved, with both keys it is found again by.

    ``connector`` is the connector's configured id, else its configured address
    (``app.connector_owner``); ``serial`` the unit's serial number once known. The fields after
    them are :meth:`bridge.core.derived.SessionEnergy.to_json`.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    serial: Key | None = None
    connector: Key | None = None
    total_wh: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    last_session_wh: Annotated[Finite | None, OrNone] = None
    last_time: Annotated[Finite | None, OrNone] = None
    last_uptime_s: Annotated[int | None, OrNone] = None
    last_session_s: Annotated[int | None, OrNone] = None
    last_connected: Annotated[bool | None, OrNone] = None
    prev_time: Annotated[Finite | None, OrNone] = None
    reset_pending: Annotated[bool | None, OrNone] = False

    @model_validator(mode="after")
    def _findable(self) -> EnergyRecord:
        if self.serial is None and self.connector is None:
            msg = "a record needs a serial number or a connector key"
            raise ValueError(msg)
        return self

    @classmethod
    def of(cls, connector: str | None, serial: str | None, energy: SessionEnergy) -> EnergyRecord:
        """The record of a live accumulator."""
        return cls.model_validate({**energy.to_json(), "serial": serial, "connector": connector})

    def energy(self) -> SessionEnergy:
        """The accumulator this record saved, ready to go on counting."""
        return SessionEnergy.from_json(self.model_dump(exclude={"serial", "connector"}))


Topic = Annotated[str, StringConstraints(min_length=1, max_length=65535)]


class DiscoverySection(BaseModel):
    """What discovery announced: config topic -> owner, and device mode's components by owner."""

    model_config = ConfigDict(strict=True, extra="forbid")

    topics: dict[Topic, Key] = Field(default_factory=dict)
    components: dict[Key, dict[Key, Key]] = Field(default_factory=dict)


class SavedState(BaseModel):
    """The file as this version writes it (the reader checks it entry by entry, see parse_state)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    version: Literal[4] = STATE_VERSION
    energy: list[EnergyRecord] = Field(default_factory=list)
    addresses: dict[Key, Key] = Field(default_factory=dict)
    discovery: DiscoverySection = Field(default_factory=DiscoverySection)
    published: dict[Key, Key] = Field(default_factory=dict)  # unit id -> connector key
    found_units: dict[Key, Key] = Field(default_factory=dict)  # serial number -> host


@dataclass
class LoadedState:
    """The valid part of a state file."""

    energy: list[EnergyRecord] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    topics: dict[str, str] = field(default_factory=dict)
    components: dict[str, dict[str, str]] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    found_units: dict[str, str] = field(default_factory=dict)


def discovery_topic_problem(topic: str, prefix: str) -> str | None:
    """Why ``topic`` cannot be a discovery config topic of this bridge, or ``None``."""
    if not topic.startswith(f"{prefix}/"):
        return "outside the discovery prefix"
    if any(mark in topic for mark in ("+", "#", "\x00")):
        return "a wildcard or NUL"
    if "" in topic.split("/"):
        return "an empty level"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return "too long"
    return None


def _quoted(name: object) -> str:
    text = repr(name)  # escapes newlines and control characters a file may hold
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _dropped(count: int, what: str) -> str:
    return f"{count} invalid {what} entr{'y' if count == 1 else 'ies'} dropped"


def parse_state(data: object, discovery_prefix: str) -> tuple[LoadedState, list[str]]:
    """The valid part of a decoded state file, and what was wrong with the rest (pure).

    A section of the wrong type is dropped whole; an invalid entry is dropped alone.
    """
    loaded = LoadedState()
    if not isinstance(data, dict):
        return loaded, ["holds no JSON object"]
    version = data.get("version", FIRST_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        return loaded, [f"has a version that is no number ({_quoted(version)})"]
    if not FIRST_VERSION <= version <= STATE_VERSION:
        return loaded, [
            f"has version {version}, unknown to this bridge (it reads 1 to {STATE_VERSION})"
        ]
    problems = [f"unknown key {_quoted(key)} dropped" for key in data if key not in KNOWN_KEYS]
    loaded.energy = _parse_energy(data.get("energy"), version, problems)
    loaded.addresses = _parse_mapping(data.get("addresses"), "addresses", _valid_address, problems)
    loaded.published = _parse_mapping(
        data.get("published"), "published unit", _valid_published, problems
    )
    loaded.found_units = _parse_mapping(
        data.get("found_units"), "found unit", _valid_found_unit, problems
    )
    _parse_discovery(data.get("discovery"), discovery_prefix, loaded, problems)
    return loaded, problems


def _parse_energy(section: object, version: int, problems: list[str]) -> list[EnergyRecord]:
    if section is None:
        return []
    entries: list[object]
    if version == FIRST_VERSION:
        if not isinstance(section, dict):
            problems.append("energy is not an object; dropped")
            return []
        entries = [
            {**value, "serial": serial, "connector": None} if isinstance(value, dict) else value
            for serial, value in section.items()
        ]
    else:
        if not isinstance(section, list):
            problems.append("energy is not a list; dropped")
            return []
        entries = section
    records: list[EnergyRecord] = []
    invalid = 0
    for entry in entries:
        try:
            records.append(EnergyRecord.model_validate(entry))
        except ValidationError:
            invalid += 1
    if invalid:
        problems.append(_dropped(invalid, "energy"))
    return records


def _valid_address(serial: object, host: object) -> bool:
    return (
        isinstance(serial, str)
        and 0 < len(serial) <= MAX_KEY_LENGTH
        and isinstance(host, str)
        and 0 < len(host) <= MAX_KEY_LENGTH
    )


def _valid_found_unit(serial: object, host: object) -> bool:
    # The host becomes a connector's address at start: one that is no host must not load.
    if not _valid_address(serial, host):
        return False
    try:
        parse_host(str(host))
    except ValueError:
        return False
    return True


def _valid_published(unit_id: object, owner: object) -> bool:
    # The id becomes a subscription filter when it is cleared: a wildcard must never get there.
    return isinstance(unit_id, str) and id_problem(unit_id) is None and _valid_address("-", owner)


def _parse_mapping(
    section: object,
    name: str,
    valid: Callable[[object, object], object],
    problems: list[str],
) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        problems.append(f"{name} is not an object; dropped")
        return {}
    kept = {key: value for key, value in section.items() if valid(key, value)}
    if len(kept) < len(section):
        problems.append(_dropped(len(section) - len(kept), name))
    return kept


def _parse_discovery(
    section: object, prefix: str, loaded: LoadedState, problems: list[str]
) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        problems.append("discovery is not an object; dropped")
        return
    problems.extend(
        f"discovery key {_quoted(key)} dropped"
        for key in section
        if key not in {"topics", "components"}
    )

    def valid_topic(topic: object, owner: object) -> bool:
        return (
            isinstance(topic, str)
            and discovery_topic_problem(topic, prefix) is None
            and isinstance(owner, str)
            and bool(owner)
        )

    def valid_components(owner: object, components: object) -> bool:
        return (
            isinstance(owner, str)
            and bool(owner)
            and isinstance(components, dict)
            and all(
                isinstance(key, str) and key and isinstance(platform, str) and platform
                for key, platform in components.items()
            )
        )

    loaded.topics = _parse_mapping(section.get("topics"), "discovery topic", valid_topic, problems)
    loaded.components = _parse_mapping(
        section.get("components"), "discovery component", valid_components, problems
    )


def _highest(
    records: list[EnergyRecord], key: Callable[[EnergyRecord], str | None]
) -> dict[str, EnergyRecord]:
    best: dict[str, EnergyRecord] = {}
    for record in records:
        name = key(record)
        if name is not None and (name not in best or record.total_wh > best[name].total_wh):
            best[name] = record
    return best


def _live_key(record: EnergyRecord) -> str:
    return f"connector:{record.connector}" if record.connector else f"serial:{record.serial}"


@dataclass
class _Pending:
    """What one write puts on disk: copies taken in the event loop, rendered in the writer."""

    energy: list[EnergyRecord]
    addresses: dict[str, str]
    topics: dict[str, str]
    components: dict[str, dict[str, str]]
    published: dict[str, str]
    found_units: dict[str, str]

    def render(self) -> dict[str, object]:
        return {
            "version": STATE_VERSION,
            "energy": [record.model_dump() for record in self.energy],
            "addresses": self.addresses,
            "discovery": {"topics": self.topics, "components": self.components},
            "published": self.published,
            "found_units": self.found_units,
        }


_NO_FILE: Final = object()


class StateFile:
    """The state file: loaded once (lazily), changed in memory, written by :meth:`flush`.

    The setters change only memory: the bridge collects many small changes (one per unit at
    start) into one write, so a site of N units does not rewrite an O(N) file N times, and an SD
    card sees few writes. The energy records the file held at start stay available unchanged
    (``saved_energy_*``) however often the live ones are replaced.
    """

    def __init__(
        self,
        path: Path,
        discovery_prefix: str = "homeassistant",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = path
        self.discovery_prefix = discovery_prefix
        self._clock = clock
        self._failing = False
        self._loaded = False
        self._dirty = False
        self.writes = 0
        self._sequence = 0  # of the states rendered for writing
        self._sequence_on_disk = 0
        self._write_lock = threading.Lock()
        self.set_aside: Path | None = None  # where an unusable file was moved, if one was
        # Live state: what the next write puts on disk.
        self._energy: dict[str, EnergyRecord] = {}
        self._keys_by_serial: dict[str, set[str]] = {}
        self._addresses: dict[str, str] = {}
        self._topics: Mapping[str, str] = {}
        self._components: Mapping[str, Mapping[str, str]] = {}
        self._published: dict[str, str] = {}
        self._found_units: dict[str, str] = {}
        # As loaded at start: where a restarted unit finds its total.
        self._saved_by_connector: dict[str, EnergyRecord] = {}
        self._saved_by_serial: dict[str, EnergyRecord] = {}
        self._serial_at_host: dict[str, str] = {}

    # --- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file now, if it was not read yet (every accessor reads it when first used)."""
        if self._loaded:
            return
        self._loaded = True
        data, problem = self._read()
        if data is _NO_FILE:
            return  # the normal first start
        loaded, problems = (
            parse_state(data, self.discovery_prefix)
            if problem is None
            else (
                LoadedState(),
                [problem],
            )
        )
        self._adopt(loaded)
        if problems:
            self._report(problems, started_empty=not _any(loaded))

    def _read(self) -> tuple[object, str | None]:
        """The decoded file, or why it cannot be decoded; ``_NO_FILE`` when there is none."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _NO_FILE, None
        except OSError as error:
            return None, f"cannot be read ({error.strerror or error})"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "is not UTF-8 text"
        try:
            return json.loads(text), None
        except (ValueError, RecursionError):
            return None, "is not valid JSON"

    def _adopt(self, loaded: LoadedState) -> None:
        for record in loaded.energy:
            key = _live_key(record)
            current = self._energy.get(key)
            if current is None or record.total_wh > current.total_wh:
                self._put_record(key, record)
        self._addresses = dict(loaded.addresses)
        self._topics = loaded.topics
        self._components = loaded.components
        self._published = dict(loaded.published)
        self._found_units = dict(loaded.found_units)
        self._saved_by_connector = _highest(loaded.energy, lambda r: r.connector)
        self._saved_by_serial = _highest(loaded.energy, lambda r: r.serial)
        totals = {serial: r.total_wh for serial, r in self._saved_by_serial.items()}
        for serial, host in sorted(loaded.addresses.items(), key=lambda i: totals.get(i[0], -1.0)):
            self._serial_at_host[host] = serial  # the highest total wins a shared address

    def _report(self, problems: list[str], *, started_empty: bool) -> None:
        """One warning for everything wrong with the file, which is kept aside, never deleted."""
        kept, written_over = self._keep_aside()
        start = "starting empty" if started_empty else "starting with its valid part"
        logger.warning("state file %s: %s; %s; %s", self.path, "; ".join(problems), kept, start)
        if written_over:
            self._dirty = True  # the valid part goes back to disk with the next flush

    def _keep_aside(self) -> tuple[str, bool]:
        """What became of the file, and whether it may be written over now."""
        if not os.path.lexists(self.path):
            return "nothing to keep aside", True
        stamp = self._clock().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        for attempt in range(MAX_SET_ASIDE_TRIES):
            suffix = f".bad-{stamp}" + (f"-{attempt}" if attempt else "")
            target = self.path.with_name(self.path.name + suffix)
            if os.path.lexists(target):
                continue
            try:
                self.path.rename(target)
            except OSError as error:
                return f"could not be kept aside ({error.strerror or error})", False
            self.set_aside = target
            return f"kept aside as {target.name}", True
        return "could not be kept aside (too many set-aside files)", False

    # --- energy -------------------------------------------------------------------------------

    def saved_energy_for_connector(self, connector: str, host: str) -> EnergyRecord | None:
        """The record saved for this connector key, else for the serial last seen at ``host``.

        The second is how a file from before connector keys (or a renamed id at the same address)
        still gives a unit whose serial number is not known yet its total.
        """
        self.load()
        record = self._saved_by_connector.get(connector)
        if record is None and (serial := self._serial_at_host.get(host)) is not None:
            record = self._saved_by_serial.get(serial)
        return record

    def saved_energy_for_serial(self, serial: str) -> EnergyRecord | None:
        """The highest record saved for this serial number when the bridge started."""
        self.load()
        return self._saved_by_serial.get(serial)

    def keep_energy(self, connector: str, serial: str | None, energy: SessionEnergy) -> None:
        """Remember a unit's accumulator under its connector key (and serial number, if known).

        Records of the same serial under other keys that hold no more are superseded and go.
        """
        self.load()
        try:
            record = EnergyRecord.of(connector, serial, energy)
        except ValidationError:  # pragma: no cover - an accumulator only adds finite amounts
            logger.debug("energy of %s not savable: %s", connector, energy.to_json())
            return
        key = _live_key(record)
        if self._energy.get(key) == record:
            return
        self._put_record(key, record)
        if serial is not None:
            for other in list(self._keys_by_serial.get(serial, ())):
                if other != key and self._energy[other].total_wh <= record.total_wh:
                    self._drop_record(other)
        self._dirty = True

    def energy_records(self) -> list[EnergyRecord]:
        """Every energy record the next write saves."""
        self.load()
        return list(self._energy.values())

    def _put_record(self, key: str, record: EnergyRecord) -> None:
        self._drop_record(key)
        self._energy[key] = record
        if record.serial is not None:
            self._keys_by_serial.setdefault(record.serial, set()).add(key)

    def _drop_record(self, key: str) -> None:
        old = self._energy.pop(key, None)
        if old is not None and old.serial is not None:
            keys = self._keys_by_serial.get(old.serial, set())
            keys.discard(key)
            if not keys:
                self._keys_by_serial.pop(old.serial, None)

    # --- addresses ----------------------------------------------------------------------------

    def address_of(self, serial: str) -> str | None:
        """Where the unit with this serial number answered last."""
        self.load()
        return self._addresses.get(serial)

    def keep_address(self, serial: str, host: str) -> None:
        """Remember where the unit with this serial number answers."""
        self.load()
        if self._addresses.get(serial) != host:
            self._addresses[serial] = host
            self._dirty = True

    # --- discovery ----------------------------------------------------------------------------

    def announced_topics(self) -> dict[str, str]:
        """Every discovery config topic announced, and its owner (a copy)."""
        self.load()
        return dict(self._topics)

    def announced_components(self) -> dict[str, dict[str, str]]:
        """Device mode's announced components by owner: key -> platform (a copy)."""
        self.load()
        return {owner: dict(components) for owner, components in self._components.items()}

    def keep_announced(
        self, topics: Mapping[str, str], components: Mapping[str, Mapping[str, str]]
    ) -> None:
        """Remember what discovery announced.

        The announcer hands its live mappings, not copies (copying is O(units) per unit at
        start); a write copies what they hold then. They must be changed in the event loop only.
        """
        self.load()
        self._topics = topics
        self._components = components
        self._dirty = True

    # --- published unit ids -------------------------------------------------------------------

    def published_units(self) -> dict[str, str]:
        """Every unit id published and the connector key that published it last (a copy)."""
        self.load()
        return dict(self._published)

    def keep_published(self, unit_id: str, owner: str) -> None:
        """Remember that the connector keyed ``owner`` publishes under ``unit_id``."""
        self.load()
        if self._published.get(unit_id) != owner:
            self._published[unit_id] = owner
            self._dirty = True

    def forget_published(self, unit_id: str) -> None:
        """Drop ``unit_id`` once its topics are cleared from the broker."""
        self.load()
        if self._published.pop(unit_id, None) is not None:
            self._dirty = True

    # --- units found and added (``[discovery] add_new``) -------------------------------------

    def found_units(self) -> dict[str, str]:
        """Every unit added because it was found: serial number -> host it was found at (a copy)."""
        self.load()
        return dict(self._found_units)

    def keep_found_unit(self, serial: str, host: str) -> None:
        """Remember that the unit with this serial number was found at ``host`` and added."""
        self.load()
        if self._found_units.get(serial) != host:
            self._found_units[serial] = host
            self._dirty = True

    def forget_found_unit(self, serial: str) -> None:
        """Stop adding this unit at start (a connector of the configuration claims it now)."""
        self.load()
        if self._found_units.pop(serial, None) is not None:
            self._dirty = True

    # --- writing ------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Whether memory holds changes not yet written."""
        return self._dirty

    def flush(self) -> bool:
        """Write pending changes atomically (temporary file, fsync, rename); ``False`` if failed.

        The data is kept in memory either way, so a failed write loses nothing while running;
        it stays pending, and the next flush tries again.
        """
        pending = self._take()
        if pending is None:
            return True
        return self._written(self._write(*pending))

    async def flush_in_thread(self) -> bool:
        """:meth:`flush`, the encoding, disk write and fsync in a worker thread.

        What is written is a copy of what memory holds now, taken here (a few ms at 1000 units).
        The file is ~7 MB at 1000 units: encoded and written in the event loop, it had stalled the
        bridge for 100-280 ms every few seconds while discovery changed.
        """
        pending = self._take()
        if pending is None:
            return True
        try:
            error = await asyncio.to_thread(self._write, *pending)
        except asyncio.CancelledError:
            self._dirty = True  # the write may not have happened: the next flush makes sure
            raise
        return self._written(error)

    def _take(self) -> tuple[_Pending, int] | None:
        """A copy of the state to write now and its number, or ``None`` when nothing is pending."""
        if not self._dirty:
            return None
        self._dirty = False
        self._sequence += 1
        pending = _Pending(
            energy=list(self._energy.values()),  # records are immutable: sharing them is safe
            addresses=dict(self._addresses),
            topics=dict(self._topics),  # the large case (config topic -> owner), copied in C
            components={owner: dict(keys) for owner, keys in self._components.items()},
            published=dict(self._published),
            found_units=dict(self._found_units),
        )
        return pending, self._sequence

    def _write(self, pending: _Pending, sequence: int) -> OSError | None:
        """Replace the file with ``pending`` unless a later state is on disk; the error, if any."""
        # One writer at a time, and never an older state over a newer one: a flush in a thread
        # may still be running when the shutdown's own flush comes.
        with self._write_lock:
            if sequence <= self._sequence_on_disk:
                return None
            temporary: str | None = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                descriptor, temporary = tempfile.mkstemp(
                    prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
                )
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    # Streamed: the whole text at once would take ~3x the file's size in memory.
                    json.dump(
                        pending.render(), handle, indent=1, sort_keys=True, ensure_ascii=False
                    )
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(temporary).replace(self.path)
            except OSError as error:
                if temporary is not None:
                    with contextlib.suppress(OSError):
                        Path(temporary).unlink()
                return error
            self._sequence_on_disk = sequence
            return None

    def _written(self, error: OSError | None) -> bool:
        if error is not None:
            self._dirty = True  # try again at the next flush
            if not self._failing:
                self._failing = True
                logger.warning(
                    "cannot write state file %s (%s); keeping state in memory and retrying",
                    self.path,
                    error.strerror or error,
                )
            return False
        self.writes += 1
        if self._failing:
            self._failing = False
            logger.info("state file %s is writable again", self.path)
        return True


def _any(loaded: LoadedState) -> bool:
    return bool(
        loaded.energy
        or loaded.addresses
        or loaded.topics
        or loaded.components
        or loaded.published
        or loaded.found_units
    )
