"""Power-sharing group totals: pure sums over what the members last reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MemberState:
    """What a group needs from one member."""

    online: bool
    power_w: float = 0.0
    current_a: float = 0.0
    charging: bool = False


def group_values(leader: str, members: dict[str, MemberState | None]) -> dict[str, Any]:
    """Totals for ``twc3/group/<name>/…``; members that are offline or unknown add nothing."""
    online = {name: state for name, state in members.items() if state is not None and state.online}
    return {
        "power_w": round(sum(state.power_w for state in online.values()), 1),
        "current_a": round(sum(state.current_a for state in online.values()), 1),
        "members_online": len(online),
        "members_configured": len(members),
        "members_charging": sum(1 for state in online.values() if state.charging),
        "leader": leader,
    }
