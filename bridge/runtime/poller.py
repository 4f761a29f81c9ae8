"""One unit's polling loop: when to ask which endpoint, backoff, and debounced availability.

Requests to one unit never overlap: each is planned at least ``MIN_REQUEST_GAP_S`` after the
previous one was planned, starts at least ``MIN_START_GAP_S`` after it started, and at least
``MIN_IDLE_S`` after it ended. This is the only place that retries a unit: after a failure every
endpoint waits for the backoff delay.

A poller built with ``retarget`` can be moved (the follower finds its unit at a new address):
``move_to`` switches the next request there at once. Built so without an address, it asks
nothing and reports its unit "not found" until it is moved somewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from bridge.adapters.twc import TwcError, TwcUnreachableError
from bridge.core.backoff import Backoff
from bridge.core.config import PollingConfig, parse_host
from bridge.core.derived import Event
from bridge.core.failurelog import DEFAULT_SUMMARY_INTERVAL_S, FailureLog, Report
from bridge.core.fieldbudget import Admission, FieldBudget
from bridge.core.logtext import escaped
from bridge.core.models import (
    ENDPOINTS,
    Endpoint,
    ParsedBody,
    ParseError,
    Version,
    Vitals,
    parse_endpoint,
)
from bridge.core.names import id_problem, slugify
from bridge.core.outbox import Outbox
from bridge.core.parsing import value_excerpt
from bridge.core.unit_values import Derived, UnitDerivation
from bridge.core.vocabulary import (
    MOVED,
    NOT_FOUND,
    REACHABLE,
    reachability,
    unreachable_reason,
)
from bridge.presentation.publishing import UnitTopics, publish_body, publish_derived
from bridge.presentation.topics import TopicLayout

logger = logging.getLogger(__name__)

MIN_REQUEST_GAP_S: Final = 1.0
# Intervals count from when a request was planned, not from when it started or ended: a 1 s
# interval stays 1 s however long answers take (counted from the end, a busy bridge drifted to
# 1.1 s) and however late a busy event loop wakes up (counted from the start, 1000 units drifted to
# 1.03 s). A late start is not made up for by more than this, though:
MIN_START_GAP_S: Final = 0.9
# A slow unit still gets this rest after answering.
MIN_IDLE_S: Final = 0.25
# Endpoints due at the same moment go in this order; version first so the serial is known early.
_PRIORITY: Final[dict[Endpoint, int]] = {"version": 0, "vitals": 1, "lifetime": 2, "wifi_status": 3}
# Outages are already debounced (``offline_after``), so a few a summary interval are each worth
# their offline and online lines; past that the unit is flapping and only gets summaries.
AVAILABILITY_BURST: Final = 3


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


class Fetcher(Protocol):
    """What the poller needs from the HTTP side."""

    async def fetch(self, endpoint: Endpoint) -> bytes:
        """Return one endpoint's body or raise :class:`bridge.adapters.twc.TwcError`."""
        ...


class IdRegistry:
    """Topic ids in use across the bridge, so two units never share one."""

    def __init__(self, reserved: set[str] | None = None) -> None:
        self._owners: dict[str, str] = dict.fromkeys(reserved or set(), "config")

    def claim(self, unit_id: str, owner: str) -> str | None:
        """Take ``unit_id`` for ``owner``; returns the current owner if someone else has it."""
        current = self._owners.setdefault(unit_id, owner)
        return None if current == owner else current

    def owner_of(self, unit_id: str) -> str | None:
        """Who uses ``unit_id`` now, if anyone."""
        return self._owners.get(unit_id)


@dataclass
class UnitStatus:
    """What the poller knows about its unit, for logs and the ``poller/*`` topics."""

    online: bool | None = None
    failure_streak: int = 0
    last_error: str | None = None
    failed_requests: int = 0
    parse_errors: int = 0
    serial: str | None = None
    vehicle_connected: bool = False
    last_bodies: dict[Endpoint, ParsedBody] = field(default_factory=dict)
    derived: dict[str, object] = field(default_factory=dict)


class ConnectorPoller:
    """Polls one Wall Connector forever and writes what it learns into the outbox."""

    def __init__(
        self,
        *,
        label: str,
        configured_id: str | None,
        base_topic: str,
        polling: PollingConfig,
        fetcher: Fetcher,
        outbox: Outbox,
        registry: IdRegistry,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
        on_update: Callable[[ConnectorPoller], None] | None = None,
        serial_guard: Callable[[ConnectorPoller, str], bool] | None = None,
        derivation: UnitDerivation | None = None,
        wall_clock: Callable[[], float] = time.time,
        start_delay_s: float = 0.0,
        repeat_summary_s: float = DEFAULT_SUMMARY_INTERVAL_S,
        field_budget: FieldBudget | None = None,
        address: str | None = None,
        source_address: str | None = None,
        serial: str | None = None,
        retarget: Callable[[str], None] | None = None,
        following: bool = False,
        fallback: str | None = None,
    ) -> None:
        """``repeat_summary_s``: at most one line per interval about a unit that keeps failing.

        ``address``: the ``host`` or ``host:port`` the fetcher asks; ``retarget(address)`` points
        the fetcher elsewhere (given, the poller can be moved; given without ``address``, it waits
        to be). ``serial``: the configured serial number. ``following``: units are followed by
        serial, so an address answering with another serial is refused instead of adopted.
        ``fallback``: the configured host, when ``address`` is where the unit was last found
        instead; if the unit does not answer there, the configured host is tried at once.
        """
        self.label = label
        self._address = address
        self._source_address = source_address
        self._configured_serial = serial
        self._retarget = retarget
        self._following = following
        self._fallback = fallback if retarget is not None and fallback != address else None
        self._retarget_pending = False
        # Bumped by every move: an answer from before a move is not counted for either address.
        self._moves = 0
        self._moved_pending = False  # "moved" is shown until the next good answer
        # After an outage or a move, with following on, version is asked first: the serial
        # must match before anything is published from that address again.
        self._verify_serial = following
        self._sleeper: asyncio.Future[None] | None = None
        self._woken = False
        self.field_budget = field_budget or FieldBudget()
        self._on_update = on_update
        self._serial_guard = serial_guard
        self.duplicate = False
        self.derivation = derivation or UnitDerivation()
        self._wall_clock = wall_clock
        self._rejections_logged = False
        self._unusable_fields_logged: set[tuple[Endpoint, str]] = set()
        self.attempted: set[Endpoint] = set()
        self.polling = polling
        self.status = UnitStatus()
        self._layout = TopicLayout(base_topic)
        self._fetcher = fetcher
        self._outbox = outbox
        self._registry = registry
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff(
            initial=min(2.0, polling.backoff_max_s), maximum=polling.backoff_max_s
        )
        self._topics: UnitTopics | None = None
        self._waiting_logged = False
        # What the log says about repeated failures; the poller topics keep the exact counts.
        self._answer_logs = {name: FailureLog(repeat_summary_s) for name in ENDPOINTS}
        self._availability_log = FailureLog(repeat_summary_s, burst=AVAILABILITY_BURST)
        self._endpoint_backoff: dict[Endpoint, Backoff] = {}
        if configured_id is not None:
            self._adopt_id(configured_id)
        elif serial is not None and id_problem(slugify(serial)) is None:
            # The id its answers would give it, known now: a unit not found yet is visible.
            self._adopt_id(slugify(serial))
        # When the current outage began; a unit with nowhere to ask is lost from the start.
        self._failing_since: float | None = clock() if self._waits_to_be_found else None
        # Units of one bridge start spread over an interval, so their requests (and the work on
        # the answers) are spread evenly instead of arriving together every interval.
        now = clock() + start_delay_s
        self._due: dict[Endpoint, float] = dict.fromkeys(ENDPOINTS, now)
        self._not_before = now
        self.requests_made = 0

    @property
    def topics(self) -> UnitTopics | None:
        """The unit's topics, once its id is known."""
        return self._topics

    @property
    def wanted_serial(self) -> str | None:
        """The configured serial number, else the one learned; None: the unit cannot be followed."""
        return self._configured_serial or self.status.serial

    @property
    def address(self) -> str | None:
        """The ``host`` or ``host:port`` polled now; None while a unit has not been found."""
        return self._address

    @property
    def source_address(self) -> str | None:
        """The local address requests to this unit leave from, if one is configured."""
        return self._source_address

    @property
    def _waits_to_be_found(self) -> bool:
        return self._retarget is not None and self._address is None

    def unreachable_since(self) -> float | None:
        """Clock time the current outage began; None while the unit answers."""
        return self._failing_since

    def move_to(self, host: str) -> bool:
        """Poll the unit at ``host`` (``host`` or ``host:port``) from the next request on, at once.

        Said in one log line, on ``derived/reachability`` ("moved" until the next good answer)
        and as a ``moved`` event; topics, entities and the energy total stay as they are.
        False when it is not moved (a fixed client, a bad or the same address).
        """
        if self._retarget is None:
            logger.error("unit %s: cannot be moved (its client is fixed)", self.label)
            return False
        try:
            parse_host(host)
        except ValueError as error:
            logger.warning("unit %s: not moved to %s: %s", self.label, escaped(host), error)
            return False
        previous = self._address
        if host == previous:
            return False
        self._point_at(host)
        self._moved_pending = True
        self._failing_since = self._clock()  # a fresh start at the new address
        serial = escaped(self.wanted_serial) if self.wanted_serial else "unknown"
        permanent = f'to make it permanent set host = "{host}"'
        if previous is None:
            logger.info("unit %s (serial %s) found at %s; %s", self.label, serial, host, permanent)
        else:
            logger.info(
                "unit %s (serial %s) moved from %s to %s; topics, entities and energy total "
                "kept; %s",
                self.label,
                serial,
                previous,
                host,
                permanent,
            )
        if self._topics is not None:
            self.status.derived["reachability"] = MOVED
            self._outbox.put(self._topics.derived("reachability"), MOVED)
            moved = Event("moved", {"from": previous, "to": host})
            publish_derived(self._outbox, self._topics, Derived(events=[moved]), self._wall_clock())
        self._wake()
        return True

    def _wake(self) -> None:
        sleeper = self._sleeper
        if sleeper is not None and not sleeper.done():
            self._woken = True
            sleeper.cancel()

    async def _wait(self, delay: float) -> bool:
        """Sleep ``delay``; False when a move cut it short (what is due has changed)."""
        if self._retarget is None or (self.status.failure_streak == 0 and self._address):
            # Only a unit in trouble is moved: a healthy one's sleep costs no task.
            await self._sleep(delay)
            return True
        sleeper = self._sleeper = asyncio.ensure_future(self._sleep(delay))
        try:
            await sleeper
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._woken or (current is not None and current.cancelling()):
                raise
        finally:
            self._sleeper = None
        woken, self._woken = self._woken, False
        return not woken

    def _adopt_id(self, unit_id: str) -> bool:
        owner = self._registry.claim(unit_id, self.label)
        if owner is not None:
            logger.error(
                "unit %s: topic id %r is already used by %s; not publishing this unit",
                self.label,
                unit_id,
                owner,
            )
            return False
        self._topics = UnitTopics(self._layout, unit_id)
        return True

    def interval(self, endpoint: Endpoint) -> float:
        """Seconds between two successful reads of ``endpoint``."""
        if endpoint == "vitals":
            return (
                self.polling.vitals_s
                if self.status.vehicle_connected
                else self.polling.vitals_idle_s
            )
        seconds: float = getattr(self.polling, f"{endpoint}_s")
        return seconds

    def next_request(self) -> tuple[Endpoint, float]:
        """The endpoint to read next and the monotonic time to read it at."""
        if self._verify_serial:
            # Who answers at this address is checked before anything else is read from it.
            return "version", max(min(self._due.values()), self._not_before)
        endpoint = min(ENDPOINTS, key=lambda name: (self._due[name], _PRIORITY[name]))
        return endpoint, max(self._due[endpoint], self._not_before)

    async def run(self) -> None:
        """Poll until cancelled, or until this entry turns out to duplicate another unit."""
        while not self.duplicate:
            await self.poll_once()

    async def poll_once(self) -> None:
        """Wait for the next due request, make it, and record the outcome."""
        endpoint, planned = self.next_request()
        delay = planned - self._clock()
        moves = self._moves
        if delay > 0 and (not await self._wait(delay) or moves != self._moves):
            return  # moved while waiting: plan again for the new address (version first)
        started = self._clock()
        if self._waits_to_be_found:
            # Nothing can be asked until it is found: startup is not held up by it.
            self.attempted.update(ENDPOINTS)
            self._unit_failed(endpoint, NOT_FOUND, asked=False)
            return
        self.attempted.add(endpoint)
        if self._retarget_pending and self._retarget is not None and self._address is not None:
            self._retarget_pending = False
            self._retarget(self._address)
        self.requests_made += 1
        outcome: ParsedBody | TwcError | ParseError
        try:
            outcome = parse_endpoint(endpoint, await self._fetcher.fetch(endpoint))
        except (TwcError, ParseError) as error:
            outcome = error
        if moves != self._moves:
            return  # the old address answered (or not): that says nothing about the new one
        self._record(endpoint, outcome, planned)
        self._not_before = max(
            self._not_before,
            planned + MIN_REQUEST_GAP_S,
            started + MIN_START_GAP_S,
            self._clock() + MIN_IDLE_S,
        )

    def _record(
        self, endpoint: Endpoint, outcome: ParsedBody | TwcError | ParseError, planned: float
    ) -> None:
        if isinstance(outcome, TwcUnreachableError):
            self._unit_failed(endpoint, outcome.reason)
        elif isinstance(outcome, TwcError):
            self._bad_answer(endpoint, outcome.reason, outcome)
        elif isinstance(outcome, ParseError):
            self.status.parse_errors += 1
            self._publish_counters()
            self._bad_answer(
                endpoint, unreachable_reason("unexpected response", "unparsable body"), outcome
            )
        elif (refusal := self._refusal(outcome)) is not None:
            self._unit_failed(endpoint, refusal)
        else:
            self._succeeded(outcome, planned)

    def _refusal(self, parsed: ParsedBody) -> str | None:
        """Why an answer is not this unit's: another serial, or none, where this one is followed."""
        if not isinstance(parsed.model, Version):
            return None
        wanted = self.wanted_serial
        if not self._following or wanted is None:
            return None
        serial = (parsed.model.serial_number or "").strip()
        if serial == wanted.strip():
            return None
        if not serial:
            return unreachable_reason(
                "unexpected response", "a version answer with no serial number"
            )
        return unreachable_reason(
            "unexpected response",
            f"another Wall Connector (serial {escaped(serial)}) answers here",
        )

    def _bad_answer(self, endpoint: Endpoint, reason: str, error: TwcError | ParseError) -> None:
        detail = f": {escaped(repr(error.excerpt))}" if isinstance(error, ParseError) else ""
        report = self._answer_logs[endpoint].failed(self._clock(), f"{reason}{detail}")
        if report is not None:
            self._log_answers(endpoint, report)
        if endpoint == "vitals" or (endpoint == "version" and self._verify_serial):
            # Without usable vitals there is no live state, and while who answers here is being
            # checked, an answer that is no Wall Connector's is not this unit: count it against
            # availability (and its backoff), not as one endpoint's failure.
            self._unit_failed(endpoint, reason)
            return
        self.status.failed_requests += 1
        self._publish_counters()
        # Asked again after this endpoint's own backoff, not its interval: a version endpoint
        # failing once must not leave the serial number unknown for an hour.
        backoff = self._endpoint_backoff.setdefault(endpoint, self._backoff.fresh())
        self._due[endpoint] = self._clock() + backoff.next_delay()

    def _unit_failed(self, endpoint: Endpoint, reason: str, *, asked: bool = True) -> None:
        """One more failure in a row; ``asked``: a request was made (not so for "not found")."""
        status = self.status
        status.failure_streak += 1
        if asked:
            status.failed_requests += 1
        status.last_error = f"{endpoint}: {reason}"
        if self._failing_since is None:
            self._failing_since = self._clock()
        self._verify_serial = self._following
        delay = self._backoff.next_delay()
        self._not_before = self._clock() + delay
        logger.debug(
            "unit %s: %s failed (%s); next try in %.1f s", self.label, endpoint, reason, delay
        )
        if status.failure_streak >= self.polling.offline_after and status.online is not False:
            status.online = False
            report = self._availability_log.failed(self._clock(), reason)
            if report is not None:
                self._log_outages(report)
            if self._topics is not None:
                self._outbox.put(self._topics.availability, "offline")
        if status.online is False and self._topics is not None and not self._moved_pending:
            status.derived["reachability"] = reachability(reason)
            self._outbox.put(self._topics.derived("reachability"), reachability(reason))
        self._publish_counters()
        if self._fallback is not None and asked:
            self._try_fallback(self._fallback, reason)

    def _point_at(self, host: str) -> None:
        """Ask at ``host`` from the next request on, at once, the version (the serial) first."""
        self._address = host
        self._moves += 1  # an answer still on its way from the old address is not counted
        self._retarget_pending = True
        self._verify_serial = self._following
        self._due["version"] = min(self._due.values())
        self._backoff.reset()
        self._not_before = self._clock()

    def _try_fallback(self, fallback: str, reason: str) -> None:
        """The unit is not where it was last found: ask the configured host next, at once."""
        self._fallback = None
        logger.info(
            "unit %s: not answering at %s, where it was last found (%s); trying the configured "
            "host %s",
            self.label,
            self._address,
            reason,
            fallback,
        )
        self._point_at(fallback)

    def _succeeded(self, parsed: ParsedBody, planned: float) -> None:
        status = self.status
        endpoint = parsed.endpoint
        now = self._clock()
        answers = self._answer_logs[endpoint].succeeded(now)
        if answers is not None:
            self._log_answers(endpoint, answers)
        status.failure_streak = 0
        self._failing_since = None
        self._fallback = None  # it answers where it is polled
        self._moved_pending = False
        if endpoint == "version":
            self._verify_serial = False
        self._backoff.reset()
        self._endpoint_backoff.pop(endpoint, None)
        status.last_bodies[endpoint] = parsed
        if isinstance(parsed.model, Version) and parsed.model.serial_number:
            self._learn_serial(parsed.model.serial_number)
        if isinstance(parsed.model, Vitals) and parsed.model.vehicle_connected is not None:
            status.vehicle_connected = parsed.model.vehicle_connected
        if parsed.invalid_fields or parsed.out_of_range:
            self._warn_unusable_fields(parsed)
        self._due[endpoint] = max(planned + self.interval(endpoint), self._clock())
        outages = self._availability_log.succeeded(now)
        if status.online is None or (
            status.online is False and outages is not None and not outages.flapping
        ):
            logger.info("unit %s online (%s answered)", self.label, endpoint)
        elif outages is not None:
            self._log_outages(outages, endpoint)
        status.online = True
        if not self.duplicate:
            self._publish_success(parsed)

    def _warn_unusable_fields(self, parsed: ParsedBody) -> None:
        # Once per field for the poller's life: a unit sending the same odd value on every poll
        # says it once. Only known keys get here, so the set stays as small as the models.
        reasons = dict.fromkeys(parsed.invalid_fields, "has a value of unexpected type")
        reasons.update(dict.fromkeys(parsed.out_of_range, "has a value outside physical sense"))
        for key, reason in reasons.items():
            if (parsed.endpoint, key) in self._unusable_fields_logged:
                continue
            self._unusable_fields_logged.add((parsed.endpoint, key))
            logger.warning(
                "unit %s: %s field %s %s (%s); the raw value is still published on its topic, "
                "derived values treat it as unknown (not logged again)",
                self.label,
                parsed.endpoint,
                key,
                reason,
                value_excerpt(parsed.fields.get(key)),
            )

    def _publish_success(self, parsed: ParsedBody) -> None:
        status = self.status
        if self._topics is None:
            if not self._waiting_logged:
                self._waiting_logged = True
                logger.info("unit %s: waiting for its serial number to name its topics", self.label)
            return
        self._outbox.put(self._topics.availability, "online")
        seen = datetime.fromtimestamp(self._wall_clock(), tz=UTC).isoformat(timespec="seconds")
        status.derived["reachability"] = REACHABLE
        status.derived["last_seen"] = seen.replace("+00:00", "Z")
        self._outbox.put(self._topics.derived("reachability"), REACHABLE)
        self._outbox.put(self._topics.derived("last_seen"), seen.replace("+00:00", "Z"))
        self._derive(parsed)
        for body in status.last_bodies.values() if self._newly_named() else (parsed,):
            admission = self.field_budget.admit(body.endpoint, body.fields, self._clock())
            if admission.refused or admission.retired:
                self._apply_budget(body.endpoint, admission)
            skipped = publish_body(self._outbox, self._topics, body, admission.refused)
            if skipped:
                logger.debug(
                    "unit %s: %d keys of %s have no topic", self.label, skipped, body.endpoint
                )
        self._publish_counters()
        if self._on_update is not None:
            self._on_update(self)

    def _apply_budget(self, endpoint: Endpoint, admission: Admission) -> None:
        """Clear the topics of retired names; count and report refused ones."""
        topics = self._topics
        if topics is None:  # pragma: no cover - called only once topics are known
            return
        if admission.retired:
            topics.retire_fields(
                self._outbox, endpoint, admission.retired, self.field_budget.admitted(endpoint)
            )
            logger.debug(
                "unit %s: %d %s field(s) absent for %.0f s retired; their topics are cleared",
                self.label,
                len(admission.retired),
                endpoint,
                self.field_budget.retire_after_s,
            )
        if admission.refused:
            self._outbox.put(topics.poller("refused_fields"), str(self.field_budget.refused_total))
        if admission.first_refusal:
            logger.warning(
                "unit %s: %s has more than %d field names; names past that are published only "
                "in %s (counted in poller/refused_fields; not logged again)",
                self.label,
                endpoint,
                self.field_budget.cap,
                topics.endpoint(endpoint),
            )

    def _derive(self, parsed: ParsedBody) -> None:
        if self._topics is None:  # pragma: no cover - called only once topics are known
            return
        now = self._wall_clock()
        derived = self.derivation.feed(parsed, now)
        # Remember values once seen, so an entity is announced when it has something to show
        # and stays announced if the value is briefly unknown.
        self.status.derived.update((k, v) for k, v in derived.values.items() if v is not None)
        publish_derived(self._outbox, self._topics, derived, now)
        guard = self.derivation.lifetime
        if guard.rejected and not self._rejections_logged:
            self._rejections_logged = True
            logger.warning(
                "unit %s: lifetime energy_wh jumped implausibly (raw %s Wh); keeping %s Wh "
                "(counted in derived/rejected_energy_samples; not logged again)",
                self.label,
                guard.last_raw_wh,
                guard.guarded_wh,
            )

    def _newly_named(self) -> bool:
        # Bodies read before the id was known are published once, when it becomes known.
        if self._waiting_logged:
            self._waiting_logged = False
            return True
        return False

    def _learn_serial(self, serial: str) -> None:
        if self._serial_guard is not None and not self._serial_guard(self, serial):
            self.duplicate = True
            return
        if self.status.serial is not None and serial != self.status.serial:
            logger.warning(
                "unit %s: serial number changed from %s to %s (a different unit at this address?)",
                self.label,
                escaped(self.status.serial),
                escaped(serial),
            )
        self.status.serial = serial
        if self._topics is None:
            candidate = slugify(serial)
            problem = id_problem(candidate)
            if problem:
                logger.error(
                    "unit %s: serial '%s' gives no usable topic id (%s); set id",
                    self.label,
                    escaped(serial),
                    problem,
                )
                return
            self._adopt_id(candidate)

    def _log_answers(self, endpoint: Endpoint, report: Report) -> None:
        """One line about repeated bad answers of ``endpoint``, as the failure log decided."""
        if report.kind == "first":
            logger.warning("unit %s: %s from %s", self.label, report.reason, endpoint)
        elif report.kind == "recovered":
            since = (
                f" ({_count(report.failures, 'more bad answer')} in the last {report.span_s:.0f} s)"
                if report.failures
                else ""
            )
            logger.info("unit %s: %s answers normally again%s", self.label, endpoint, since)
        else:
            logger.warning(
                "unit %s: %s: %d more bad answers and %d good ones in the last %.0f s "
                "(last: %s); %s",
                self.label,
                endpoint,
                report.failures,
                report.successes,
                report.span_s,
                report.reason,
                self._summary_note(report),
            )

    def _log_outages(self, report: Report, endpoint: Endpoint = "vitals") -> None:
        """One line about a unit that keeps dropping out, as the availability log decided."""
        if report.kind == "first":
            logger.warning(
                "unit %s offline: %s (after %d failed requests; retrying, backoff up to %.0f s)",
                self.label,
                report.reason,
                self.status.failure_streak,
                self.polling.backoff_max_s,
            )
        elif report.kind == "recovered":
            logger.info(
                "unit %s online (%s answered); %d more outages in the last %.0f s",
                self.label,
                endpoint,
                report.failures,
                report.span_s,
            )
        else:
            logger.warning(
                "unit %s unreachable again and again: %d more outages in the last %.0f s "
                "(last: %s); %s",
                self.label,
                report.failures,
                report.span_s,
                report.reason,
                self._summary_note(report),
            )

    def _summary_note(self, report: Report) -> str:
        interval = self._availability_log.summary_interval_s
        if report.flapping:
            return f"while this goes on, one summary every {interval:.0f} s"
        return f"still failing; the next summary in {interval:.0f} s"

    def _publish_counters(self) -> None:
        if self._topics is None:
            return
        self._outbox.put(self._topics.poller("failed_requests"), str(self.status.failed_requests))
        self._outbox.put(self._topics.poller("parse_errors"), str(self.status.parse_errors))
        if self.status.last_error:
            self._outbox.put(self._topics.poller("last_error"), self.status.last_error)
