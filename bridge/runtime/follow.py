"""Following units that moved: the searches over ``[discovery]`` networks and what they find."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from bridge.adapters.survey import Found, ScanReport, survey
from bridge.core.config import DiscoveryConfig, parse_host
from bridge.core.logtext import escaped
from bridge.core.networks import IPAddress, parse_network, probe_source
from bridge.core.outbox import Outbox
from bridge.core.searchplan import SearchPlan
from bridge.presentation.topics import TopicLayout

logger = logging.getLogger(__name__)

# How often the follower looks whether a unit is due; searches themselves are far rarer.
CHECK_EVERY_S: Final = 1.0


class FollowedUnit(Protocol):
    """What the follower needs of a polled unit (``ConnectorPoller`` offers it)."""

    label: str

    @property
    def wanted_serial(self) -> str | None:
        """The configured serial, else the one learned; ``None``: the unit cannot be followed."""

    @property
    def address(self) -> str | None:
        """``host`` or ``host:port`` polled now; ``None`` while not found yet."""

    @property
    def source_address(self) -> str | None:
        """The local address the unit is polled from, if one is configured."""

    def unreachable_since(self) -> float | None:
        """When the current outage began (``None`` while reachable; no address: its start)."""

    def move_to(self, host: str) -> bool:
        """Poll at ``host`` from now on; False if the unit cannot be moved there."""


class AddressBook(Protocol):
    """Where a unit's new address is remembered across restarts (``StateFile``)."""

    def keep_address(self, serial: str, host: str) -> None:
        """Remember ``serial`` at ``host``."""


class Survey(Protocol):
    """:func:`bridge.adapters.survey.survey`, or a fake of it."""

    def __call__(
        self,
        addresses: Sequence[IPAddress],
        port: int,
        timeout_s: float,
        concurrency: int,
        *,
        source_address: str | None = None,
    ) -> Awaitable[ScanReport]:
        """Probe every address, ``concurrency`` at a time."""


@dataclass(slots=True)
class SearchCounters:
    """Cumulative over the process's life; published on the bridge's discovery topics."""

    searches: int = 0
    addresses_asked: int = 0
    units_found: int = 0  # Wall Connectors that answered, once per search they answered


def same_address(polled: str | None, found: Found) -> bool:
    """Whether ``polled`` (``host`` or ``host:port``) is where ``found`` answered.

    Addresses are compared as addresses (``::1`` is ``0:0::1``); a host name never matches.
    """
    if polled is None:
        return False
    try:
        host, port = parse_host(polled)
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address == found.address and port == found.port


class Follower:
    """Searches the configured networks when a unit is due and dispatches what answered.

    One task runs every search, so searches never overlap; the survey bounds the concurrency
    within one. A unit is moved only to an address that answered with its own serial.
    """

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        units: Callable[[], Sequence[FollowedUnit]],
        outbox: Outbox,
        layout: TopicLayout,
        state_file: AddressBook,
        on_unclaimed: Callable[[Found], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        survey: Survey = survey,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        """``units`` is called before every check, so units added at run time are followed."""
        self._config = config
        self._units = units
        self._outbox = outbox
        self._layout = layout
        self._state_file = state_file
        self._on_unclaimed = on_unclaimed
        self._clock = clock
        self._sleep = sleep
        self._survey = survey
        # New units are looked for only once every connector had its chance to tell its
        # serial: before that, a configured unit could pass for a new one.
        self._ready = ready
        self._plans: dict[int, SearchPlan] = {}
        self._lock = asyncio.Lock()
        self.counters = SearchCounters()
        # With ``add_new`` the networks are also searched for new units: at start, then at most
        # once per ``search_every_s``, whether or not a unit is lost.
        self._next_new_search: float | None = clock() if config.add_new else None

    async def run(self) -> None:
        """Check for due units every second, search when one is; ends when cancelled."""
        self._publish_counters()
        while True:
            if self.due_units(self._clock()) or self.new_units_due(self._clock()):
                await self.search()
            await self._sleep(CHECK_EVERY_S)

    def new_units_due(self, now: float) -> bool:
        """Whether ``add_new`` asks for a search for new units now."""
        return self._next_new_search is not None and now >= self._next_new_search and self._ready()

    def _plan(self, unit: FollowedUnit) -> SearchPlan:
        plan = self._plans.get(id(unit))
        if plan is None:
            plan = self._plans[id(unit)] = SearchPlan(
                self._config.search_after_s, self._config.search_every_s
            )
        return plan

    def due_units(self, now: float) -> list[FollowedUnit]:
        """The followable units whose plan says to look for them now."""
        return [
            unit
            for unit in self._units()
            if unit.wanted_serial is not None
            and self._plan(unit).due(
                now, unit.unreachable_since(), has_address=unit.address is not None
            )
        ]

    async def search(self) -> list[Found]:
        """One search over every network (never two at once), then dispatch what answered."""
        async with self._lock:
            due = self.due_units(self._clock())
            for unit in due:
                self._plan(unit).searched(self._clock())
            if self._next_new_search is not None:
                self._next_new_search = self._clock() + self._config.search_every_s
            sought = ", ".join(unit.label for unit in due) or "new units"
            found: list[Found] = []
            asked = 0
            sources = [unit.source_address for unit in self._units()]
            for network in self._config.networks:
                report = await self._survey(
                    parse_network(network),
                    self._config.port,
                    self._config.timeout_s,
                    self._config.concurrency,
                    source_address=probe_source(network, sources),
                )
                asked += report.scanned
                found.extend(report.found)
            self.counters.searches += 1
            self.counters.addresses_asked += asked
            self.counters.units_found += len(found)
            logger.info(
                "discovery: searched %d address(es) for %s: %d Wall Connector(s) answered",
                asked,
                escaped(sought),
                len(found),
            )
            self._publish_counters()
            self._dispatch(found)
            return found

    def _dispatch(self, found: Sequence[Found]) -> None:
        units = self._units()
        handled: set[str] = set()
        unclaimed: list[Found] = []
        for answer in found:
            if answer.serial in handled:
                continue  # the same serial at two addresses: the first one found wins
            handled.add(answer.serial)
            owner = next(
                (unit for unit in units if (unit.wanted_serial or "").strip() == answer.serial),
                None,
            )
            if owner is None:
                unclaimed.append(answer)
                continue
            if owner.unreachable_since() is None or any(
                same_address(owner.address, other)
                for other in found
                if other.serial == answer.serial
            ):
                # It answers where it is polled (perhaps by a host name): nothing to follow.
                continue
            if owner.move_to(answer.host):
                self._state_file.keep_address(answer.serial, answer.host)
        # After the moves: a stranger at a unit's old address is judged by where units are now.
        for answer in unclaimed:
            self._on_unclaimed(answer)

    def _publish_counters(self) -> None:
        for name in ("searches", "addresses_asked", "units_found"):
            self._outbox.put(self._layout.bridge_search(name), str(getattr(self.counters, name)))
