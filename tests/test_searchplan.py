"""SearchPlan: when a lost unit is looked for, with the time passed in."""

from __future__ import annotations

from bridge.core.searchplan import SearchPlan

AFTER, EVERY = 300.0, 900.0


def _plan() -> SearchPlan:
    return SearchPlan(search_after_s=AFTER, search_every_s=EVERY)


def test_a_reachable_unit_is_never_due() -> None:
    plan = _plan()
    assert not plan.due(10_000.0, None, has_address=True)


def test_due_only_after_search_after_s_of_outage() -> None:
    plan = _plan()
    assert not plan.due(1000.0 + AFTER - 1, 1000.0, has_address=True)
    assert plan.due(1000.0 + AFTER, 1000.0, has_address=True)


def test_a_unit_with_no_address_is_due_at_once() -> None:
    plan = _plan()
    assert plan.due(50.0, 50.0, has_address=False)


def test_after_a_search_the_next_waits_search_every_s() -> None:
    plan = _plan()
    lost = 0.0
    plan.searched(AFTER)
    assert not plan.due(AFTER + EVERY - 1, lost, has_address=True)
    assert plan.due(AFTER + EVERY, lost, has_address=True)


def test_the_wait_doubles_while_lost_and_is_capped_at_eight_times() -> None:
    plan = _plan()
    waits = []
    now = AFTER
    for _ in range(6):
        plan.searched(now)
        assert plan.next_at is not None
        waits.append(plan.next_at - now)
        now = plan.next_at
    assert waits == [EVERY, 2 * EVERY, 4 * EVERY, 8 * EVERY, 8 * EVERY, 8 * EVERY]


def test_reachable_again_resets_the_plan() -> None:
    """A later outage is first searched after search_after_s again, then every search_every_s."""
    plan = _plan()
    for now in (AFTER, AFTER + EVERY, AFTER + 3 * EVERY):
        plan.searched(now)
    assert not plan.due(20_000.0, None, has_address=True)
    assert plan.next_at is None
    assert not plan.due(20_000.0 + AFTER - 1, 20_000.0, has_address=True)
    assert plan.due(20_000.0 + AFTER, 20_000.0, has_address=True)
    plan.searched(20_000.0 + AFTER)
    assert plan.next_at == 20_000.0 + AFTER + EVERY


def test_a_unit_with_no_address_still_waits_between_searches() -> None:
    plan = _plan()
    plan.searched(0.0)
    assert not plan.due(EVERY - 1, 0.0, has_address=False)
    assert plan.due(EVERY, 0.0, has_address=False)
