"""Twin detection: noticing another live bridge process that publishes the same state topic.

Each run publishes a random run token, retained, at its instance's ``owner`` topic and reads that
topic and its own state topic back. A token that is not ours while the state topic last said
``online`` belongs to a live twin. A token left by an earlier run that stopped or crashed is
stale: its state topic says ``offline`` (its clean exit, or the broker publishing its Will). The
state topic is subscribed first, so its retained value is known before the retained token.

Nothing here publishes anything in answer: two twins report each other once and carry on, rather
than fight over the topic.
"""

from __future__ import annotations

import secrets
from typing import Final

ONLINE: Final = "online"
TOKEN_BYTES: Final = 8


def new_run_token() -> str:
    """A random token naming this run of the process."""
    return secrets.token_hex(TOKEN_BYTES)


def is_live_twin(own_token: str, seen_token: str, last_state: str | None) -> bool:
    """Whether ``seen_token`` on the owner topic shows another running process.

    ``last_state`` is the state topic's latest payload as seen before the token arrived; the
    token of a process whose state says anything but ``online`` is stale. An empty token (a
    deleted topic) is nobody's.
    """
    if not seen_token or seen_token == own_token:
        return False
    return last_state == ONLINE


class TwinWatch:
    """Reads the state and owner topics of one instance; reports each twin token once."""

    def __init__(self, own_token: str) -> None:
        """``own_token``: this run's token, as published at the owner topic."""
        self.own_token = own_token
        self.last_state: str | None = None
        self.reported: set[str] = set()

    def state_seen(self, payload: str) -> None:
        """The state topic said ``payload`` (retained or live)."""
        self.last_state = payload

    def owner_seen(self, token: str) -> bool:
        """The owner topic said ``token``: ``True`` the first time it shows a live twin."""
        if token in self.reported or not is_live_twin(self.own_token, token, self.last_state):
            return False
        self.reported.add(token)
        return True
