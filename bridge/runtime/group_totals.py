"""Power-sharing groups at run time: their totals from the members' pollers, and their device."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.core.config import GroupConfig
from bridge.core.groups import MemberState, group_values
from bridge.core.outbox import Outbox
from bridge.presentation.discovery import DiscoveryMode, Site, UnitInfo, group_configs
from bridge.presentation.topics import TopicLayout, plain_payload
from bridge.runtime.announce import Announcer
from bridge.runtime.poller import ConnectorPoller


class GroupTotals:
    """Publishes each group's totals whenever one of its members was polled."""

    def __init__(
        self,
        *,
        pollers_by_id: Mapping[str, ConnectorPoller],
        outbox: Outbox,
        layout: TopicLayout,
        announcer: Announcer,
        site: Site,
        mode: DiscoveryMode,
    ) -> None:
        self._pollers = pollers_by_id
        self._outbox = outbox
        self._layout = layout
        self._announcer = announcer
        self._site = site
        self._mode = mode

    def update(self, group: GroupConfig) -> None:
        """Put the group's totals into the outbox and announce its device once."""
        members: dict[str, MemberState | None] = {}
        for member in group.members:
            poller = self._pollers.get(member)
            if poller is None or poller.status.online is None:
                members[member] = None
                continue
            derived = poller.status.derived
            members[member] = MemberState(
                online=bool(poller.status.online),
                power_w=float(derived.get("power_w", 0.0)),  # type: ignore[arg-type]
                current_a=float(derived.get("current_a", 0.0)),  # type: ignore[arg-type]
                charging=derived.get("charging") is True,
            )
        for key, value in group_values(group.leader, members).items():
            payload = plain_payload(value)
            if payload is not None:
                self._outbox.put(self._layout.group(group.group_id, key), payload)
        self._announcer.update_group(
            f"group:{group.group_id}",
            lambda: group_configs(self._site, group.group_id, group.name, self._mode),
        )

    def leader_identifier(self, poller: ConnectorPoller, group: GroupConfig | None) -> str | None:
        """A follower's device hangs off its leader's device, once the leader's serial is known."""
        if group is None or poller.derivation.role != "follower":
            return None
        leader = self._pollers.get(group.leader)
        if leader is None or leader is poller or leader.status.serial is None:
            return None
        return UnitInfo(unit_id=group.leader, serial=leader.status.serial).identifier
