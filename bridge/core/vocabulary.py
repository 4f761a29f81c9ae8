"""The words the bridge publishes as values: the one place each vocabulary is spelled.

Each is a ``Literal`` so mypy checks every use; tuples for people and Home Assistant's enum
options are derived from it with :func:`typing.get_args`, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# How a unit is wired, as detected from its voltages (bridge/core/derived.py, detect_wiring).
Wiring = Literal["three_phase", "split_phase", "single_phase"]
# What a person configures: a wiring, or "auto" to detect it (published as the wiring in use).
PhaseMode = Literal["auto", Wiring]
# derived/status: coarse state from the two unambiguous booleans.
Status = Literal["disconnected", "connected", "charging"]
# derived/role: a unit's place in a power-sharing group.
Role = Literal["leader", "follower", "standalone"]
# Why a unit did not answer, in short: every failure reason starts with one of these.
Unreachable = Literal[
    "connection refused",
    "timeout",
    "no route",
    "unexpected response",
    "host name not found",
    "connection failed",
    # No address to ask yet: a unit configured by serial alone, not found in [discovery] networks.
    "not found",
]
# derived/reachability: "reachable", why the unit did not answer, or "moved" from a unit found
# at a new address until its first answer there.
Reachability = Literal["reachable", "moved", Unreachable]

WIRINGS: Final[tuple[Wiring, ...]] = get_args(Wiring)
PHASE_MODES: Final[tuple[PhaseMode, ...]] = get_args(PhaseMode)
STATUSES: Final[tuple[Status, ...]] = get_args(Status)
ROLES: Final[tuple[Role, ...]] = get_args(Role)
REACHABILITIES: Final[tuple[Reachability, ...]] = get_args(Reachability)
UNREACHABLE: Final[tuple[Unreachable, ...]] = get_args(Unreachable)
REACHABLE: Final[Reachability] = "reachable"
MOVED: Final[Reachability] = "moved"
NOT_FOUND: Final[Unreachable] = "not found"
# What a reason that matches no category counts as.
CONNECTION_FAILED: Final[Unreachable] = "connection failed"


def unreachable_reason(category: Unreachable, detail: str = "") -> str:
    """A failure reason that starts with its category, e.g. ``unexpected response: HTTP 500``."""
    return f"{category}: {detail}" if detail else category


def reachability(reason: str) -> Unreachable:
    """The category a failure reason starts with, for ``derived/reachability``."""
    for category in UNREACHABLE:
        if reason.startswith(category):
            return category
    return CONNECTION_FAILED
