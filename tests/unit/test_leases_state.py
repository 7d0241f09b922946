"""The lease state machine of one resource (leases/state.py): pure functions, no clock."""

from __future__ import annotations

import pytest

from fleetchat.errors import FencedError
from fleetchat.leases import state
from fleetchat.leases.state import Lease, LeaseState, Resource, Waiter

T0 = 1000.0


def waiter(holder: str, at: float = T0, *, priority: str = "normal", wait: float = 10.0) -> Waiter:
    return Waiter(
        ticket=f"t-{holder}-{at}",
        holder=holder,
        priority=priority,
        requested_at=at,
        deadline=at + wait,
        ttl=30.0,
    )


def held_by(holder: str, at: float = T0) -> Resource:
    return state.request(Resource(name="dock"), waiter(holder, at), at)


def test_a_free_resource_is_granted_at_once_with_token_1() -> None:
    r = held_by("amr-1")

    assert (r.holder, r.token, r.expires_at, r.waiters) == ("amr-1", 1, T0 + 30.0, ())


def test_a_held_resource_queues_the_request() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1), T0 + 1)

    assert r.holder == "amr-1"
    assert [w.holder for w in r.waiters] == ["amr-2"]


def test_release_grants_the_next_waiter_with_a_larger_token() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1), T0 + 1)

    r = state.release(r, "amr-1", 1, T0 + 2)

    assert (r.holder, r.token, r.acquired_at, r.waiters) == ("amr-2", 2, T0 + 2, ())


def test_waiters_of_one_priority_are_served_in_request_order() -> None:
    r = held_by("amr-1")
    for i, who in enumerate(["c", "a", "b"], start=1):
        r = state.request(r, waiter(who, T0 + i), T0 + i)

    order = []
    for token in range(1, 4):
        r = state.release(r, r.holder or "", token, T0 + 5)
        order.append(r.holder)

    assert order == ["c", "a", "b"]


def test_a_higher_priority_waiter_goes_before_earlier_lower_ones() -> None:
    r = held_by("amr-1")
    r = state.request(r, waiter("slow", T0 + 1, priority="low"), T0 + 1)
    r = state.request(r, waiter("urgent", T0 + 2, priority="critical"), T0 + 2)

    r = state.release(r, "amr-1", 1, T0 + 3)

    assert r.holder == "urgent"


def test_settle_expires_a_lease_past_its_expiry_and_grants_the_queue() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1, wait=60), T0 + 1)

    r = state.settle(r, T0 + 30.0)

    assert (r.holder, r.token) == ("amr-2", 2)


def test_settle_changes_nothing_before_anything_is_due() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1), T0 + 1)

    assert state.settle(r, T0 + 5) is r


def test_a_waiter_past_its_deadline_is_dropped_and_never_granted() -> None:
    r = state.request(held_by("amr-1"), waiter("late", T0 + 1, wait=2), T0 + 1)

    r = state.settle(r, T0 + 31)

    assert (r.holder, r.waiters) == (None, ())


def test_the_holder_asking_again_gets_a_new_token_at_once() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1), T0 + 1)

    r = state.request(r, waiter("amr-1", T0 + 2), T0 + 2)

    assert (r.holder, r.token, [w.holder for w in r.waiters]) == ("amr-1", 2, ["amr-2"])


def test_renew_extends_the_lease_and_keeps_the_token() -> None:
    r = state.renew(held_by("amr-1"), "amr-1", 1, 60.0, T0 + 20)

    assert (r.token, r.expires_at, r.ttl) == (1, T0 + 80, 60.0)


@pytest.mark.parametrize(
    ("holder", "token", "now"),
    [("amr-2", 1, T0 + 1), ("amr-1", 7, T0 + 1), ("amr-1", 1, T0 + 30)],
    ids=["other-holder", "stale-token", "expired"],
)
def test_renew_and_release_refuse_anyone_but_the_current_holder(
    holder: str, token: int, now: float
) -> None:
    r = held_by("amr-1")

    with pytest.raises(FencedError) as caught:
        state.renew(r, holder, token, 30.0, now)
    with pytest.raises(FencedError):
        state.release(r, holder, token, now)

    assert caught.value.details["resource"] == "dock"


def test_a_stale_token_is_fenced_after_the_lease_passed_on() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1, wait=60), T0 + 1)
    r = state.settle(r, T0 + 31)

    with pytest.raises(FencedError, match="amr-2 holds it now with token 2"):
        state.release(r, "amr-1", 1, T0 + 31)


def test_cancel_withdraws_a_wait_and_an_unknown_ticket_changes_nothing() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1), T0 + 1)

    assert state.cancel(r, "nope", T0 + 2) is r
    assert state.cancel(r, waiter("amr-2", T0 + 1).ticket, T0 + 2).waiters == ()


def test_a_failed_waiter_is_skipped_when_granting() -> None:
    r = held_by("amr-1")
    r = state.request(r, waiter("a", T0 + 1), T0 + 1)
    r = state.request(r, waiter("b", T0 + 2), T0 + 2)
    r = state.fail(r, waiter("a", T0 + 1).ticket, "deadlock", "cycle")

    r = state.release(r, "amr-1", 1, T0 + 3)

    assert r.holder == "b"
    assert [(w.holder, w.failed) for w in r.waiters] == [("a", "deadlock")]


def test_fail_of_a_gone_or_already_failed_wait_changes_nothing() -> None:
    r = state.request(held_by("amr-1"), waiter("a", T0 + 1), T0 + 1)
    once = state.fail(r, waiter("a", T0 + 1).ticket, "deadlock", "cycle")

    assert state.fail(once, waiter("a", T0 + 1).ticket, "deadlock", "again") is once
    assert state.fail(r, "nope", "deadlock", "x") is r


def test_drop_holder_releases_its_lease_and_fails_its_waits() -> None:
    r = state.request(held_by("amr-1"), waiter("amr-2", T0 + 1), T0 + 1)
    other = state.request(held_by("amr-2"), waiter("amr-1", T0 + 1), T0 + 1)

    r = state.drop_holder(r, "amr-1", T0 + 5, T0 + 5)
    other = state.drop_holder(other, "amr-1", T0 + 5, T0 + 5)

    assert (r.holder, r.token) == ("amr-2", 2)
    assert [w.failed for w in other.waiters] == ["holder_lost"]


def test_drop_holder_keeps_a_lease_taken_after_the_loss() -> None:
    r = held_by("amr-1", T0 + 10)

    assert state.drop_holder(r, "amr-1", T0 + 5, T0 + 11) is r


def test_outcome_tells_granted_waiting_and_gone() -> None:
    w = waiter("amr-2", T0 + 1)
    r = state.request(held_by("amr-1"), w, T0 + 1)

    assert state.outcome(r, w.ticket) == w
    assert state.outcome(r, "gone") is None
    granted = state.outcome(state.release(r, "amr-1", 1, T0 + 2), w.ticket)
    assert isinstance(granted, Lease)
    assert (granted.holder, granted.token) == ("amr-2", 2)


def test_lease_state_shows_holder_and_queue_without_failed_waits() -> None:
    r = state.request(held_by("amr-1"), waiter("a", T0 + 1), T0 + 1)
    r = state.request(r, waiter("b", T0 + 2), T0 + 2)
    r = state.fail(r, waiter("a", T0 + 1).ticket, "deadlock", "x")

    view = LeaseState.of(r)

    assert (view.holder, view.token, view.expires_at) == ("amr-1", 1, T0 + 30)
    assert [w.holder for w in view.waiting] == ["b"]
    assert LeaseState.of(Resource(name="free")).acquired_at is None
