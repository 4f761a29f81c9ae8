"""How many field topics one unit may have: a cap per endpoint, and retirement of names gone quiet.

Real firmware sends under 30 keys per body, the same ones on every read. A broken or hostile unit
may invent new names on every read; each would become a retained topic, a discovery config and a
Homie property, forever. The budget admits at most ``cap`` names per endpoint; names past it are
*refused* (published only inside the endpoint's JSON body topic). An admitted name that is absent
for ``retire_after_s`` seconds *and* from ``retire_after_reads`` successful reads of its endpoint
is *retired* (its topics are cleared), which makes room for new names. Both conditions must hold,
so an endpoint read hourly does not lose its fields between two reads, and a unit read every
second does not lose a field missing from a few bodies.

Pure: time is passed in. The common read (no new name, no sweep due) costs two C-level dict
operations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Final

FIELD_CAP: Final = 128  # per endpoint; real bodies have under 30 keys
RETIRE_AFTER_S: Final = 600.0
RETIRE_AFTER_READS: Final = 3
# Names are checked for retirement this often (a fraction of retire_after_s): a name may be
# retired up to this much later than due, and the check walks at most ``cap`` names.
SWEEPS_PER_RETIREMENT: Final = 10


@dataclass(frozen=True, slots=True)
class Admission:
    """What the budget decided about one body."""

    refused: frozenset[str] = frozenset()  # names of this body kept out of field topics
    retired: tuple[str, ...] = ()  # admitted names of this endpoint retired at this read
    first_refusal: bool = False  # this endpoint refused a name for the first time


_ALL_ADMITTED: Final = Admission()


class _Endpoint:
    """One endpoint's admitted names, each with the number of the read it was last seen in."""

    __slots__ = ("checkpoints", "last_seen", "next_sweep", "reads", "refused_once")

    def __init__(self) -> None:
        self.last_seen: dict[str, int] = {}  # in admission order
        self.reads = 0
        # (read number, time) at past sweeps: every name last seen at or before that read was
        # last seen at or before that time. Holds about SWEEPS_PER_RETIREMENT entries.
        self.checkpoints: deque[tuple[int, float]] = deque()
        self.next_sweep = float("-inf")
        self.refused_once = False


class FieldBudget:
    """One unit's field-name budget, per endpoint."""

    def __init__(
        self,
        cap: int = FIELD_CAP,
        retire_after_s: float = RETIRE_AFTER_S,
        retire_after_reads: int = RETIRE_AFTER_READS,
    ) -> None:
        self.cap = cap
        self.retire_after_s = retire_after_s
        self.retire_after_reads = max(1, retire_after_reads)  # the current read never retires
        self._sweep_every_s = retire_after_s / SWEEPS_PER_RETIREMENT
        self._endpoints: dict[str, _Endpoint] = {}
        self.refused_total = 0  # field values kept out of field topics, over all reads
        # Changes whenever an endpoint's admitted names change: callers rebuild what they
        # derive from the names (discovery, Homie) only then.
        self.generation = 0

    def admitted(self, endpoint: str) -> list[str]:
        """The admitted names of ``endpoint``, in the order they were first admitted."""
        state = self._endpoints.get(endpoint)
        return list(state.last_seen) if state is not None else []

    def admit(self, endpoint: str, fields: Mapping[str, object], now: float) -> Admission:
        """Record one successful read of ``endpoint`` whose body has the keys of ``fields``."""
        state = self._endpoints.get(endpoint)
        if state is None:
            state = self._endpoints[endpoint] = _Endpoint()
        state.reads += 1
        last_seen = state.last_seen
        keys = fields.keys()
        if keys <= last_seen.keys():  # the common case: no new name
            last_seen.update(zip(keys, repeat(state.reads)))
            if now < state.next_sweep:
                return _ALL_ADMITTED
            retired = self._sweep(state, now)
            return Admission(retired=retired) if retired else _ALL_ADMITTED
        for key in keys & last_seen.keys():
            last_seen[key] = state.reads
        retired = self._sweep(state, now) if now >= state.next_sweep else ()
        refused: list[str] = []
        admitted_any = False
        for key in keys:
            if key in last_seen:
                continue
            if len(last_seen) < self.cap:
                last_seen[key] = state.reads
                admitted_any = True
            else:
                refused.append(key)
        if admitted_any:
            self.generation += 1
        first_refusal = bool(refused) and not state.refused_once
        if refused:
            state.refused_once = True
            self.refused_total += len(refused)
        return Admission(frozenset(refused), retired, first_refusal)

    def _sweep(self, state: _Endpoint, now: float) -> tuple[str, ...]:
        """Retire names quiet for long enough; note a checkpoint for later sweeps."""
        state.next_sweep = now + self._sweep_every_s
        checkpoints = state.checkpoints
        checkpoints.append((state.reads, now))
        quiet_since = now - self.retire_after_s
        # Keep only the newest checkpoint old enough, and the newer ones.
        while len(checkpoints) > 1 and checkpoints[1][1] <= quiet_since:
            checkpoints.popleft()
        oldest_read, oldest_time = checkpoints[0]
        if oldest_time > quiet_since:
            return ()
        last_read = min(oldest_read, state.reads - self.retire_after_reads)
        retired = tuple(key for key, read in state.last_seen.items() if read <= last_read)
        for key in retired:
            del state.last_seen[key]
        if retired:
            self.generation += 1
        return retired
