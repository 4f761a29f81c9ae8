"""The published words: each vocabulary has one owner, and everything that shows it agrees."""

from __future__ import annotations

import errno
import socket
from typing import get_args

import pytest

from bridge.adapters.twc import _connect_reason
from bridge.core.config import ConnectorConfig
from bridge.core.derived import EVSE_STATE_NAMES
from bridge.core.vocabulary import (
    REACHABILITIES,
    UNREACHABLE,
    PhaseMode,
    Reachability,
    Role,
    Status,
    Wiring,
    reachability,
    unreachable_reason,
)
from bridge.presentation.entities import ENTITIES, EVSE_STATE_UNKNOWN, entity_for


@pytest.mark.parametrize(
    ("field", "vocabulary"),
    [
        ("status", Status),
        ("role", Role),
        ("reachability", Reachability),
        # The wiring in use is published; "auto" is only ever a setting.
        ("phase_mode", Wiring),
    ],
)
def test_enum_entities_offer_exactly_their_vocabulary(field: str, vocabulary: object) -> None:
    assert entity_for("derived", field).options == get_args(vocabulary)


def test_every_enum_entity_takes_its_options_from_an_owner() -> None:
    """No enum row spells its own options: each is a vocabulary or the evse_state names."""
    owners = {
        get_args(Status),
        get_args(Role),
        get_args(Reachability),
        get_args(Wiring),
        (*dict.fromkeys(EVSE_STATE_NAMES.values()), EVSE_STATE_UNKNOWN),
    }
    enums = [entity for entity in ENTITIES if entity.device_class == "enum"]
    assert len(enums) == len(owners)
    for entity in enums:
        assert entity.options in owners, entity.key


def test_phase_mode_setting_is_auto_or_a_wiring() -> None:
    assert get_args(PhaseMode) == ("auto", *get_args(Wiring))
    assert ConnectorConfig(host="192.0.2.1", phase_mode="split_phase").phase_mode == "split_phase"
    with pytest.raises(ValueError, match="three_phase"):
        ConnectorConfig(host="192.0.2.1", phase_mode="two_phase")


def test_reachability_is_reachable_moved_or_a_reason_category() -> None:
    assert ("reachable", "moved", *UNREACHABLE) == REACHABILITIES


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("connection refused", "connection refused"),
        ("timeout", "timeout"),
        ("no route", "no route"),
        ("unexpected response: HTTP 500", "unexpected response"),
        ("unexpected response: unparsable body", "unexpected response"),
        ("host name not found", "host name not found"),
        ("not found", "not found"),
        ("connection dropped (ReadError)", "connection failed"),
        ("request failed (DecodingError)", "connection failed"),
    ],
)
def test_reachability_reasons(reason: str, category: str) -> None:
    """Failure reasons map to the short reachability categories."""
    assert reachability(reason) == category


def test_a_reason_with_detail_keeps_its_category() -> None:
    for category in UNREACHABLE:
        assert reachability(unreachable_reason(category, "detail")) == category
        assert reachability(unreachable_reason(category)) == category


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (ConnectionRefusedError(), "connection refused"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "host name not found"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "no route"),
        (OSError("something else"), "connection failed"),
    ],
)
def test_client_connect_reasons_are_categories(error: OSError, category: str) -> None:
    """What the HTTP client says about a failed connection is a reachability word as is."""
    reason = _connect_reason(error)
    assert reason == category
    assert reachability(reason) == reason
