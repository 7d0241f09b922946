"""Deadlock detection on the wait-for graph (leases/deadlock.py)."""

from __future__ import annotations

from fleetchat.leases.deadlock import find_victims
from fleetchat.leases.state import Resource, Waiter

T0 = 1000.0


def res(name: str, holder: str, *waits: tuple[str, str, float]) -> Resource:
    """``name`` held by ``holder`` with waiters (holder, priority, requested_at)."""
    return Resource(
        name=name,
        holder=holder,
        token=1,
        ticket=f"t-{holder}-{name}",
        expires_at=T0 + 60,
        waiters=tuple(
            Waiter(
                ticket=f"w-{who}-{name}",
                holder=who,
                priority=prio,
                requested_at=at,
                deadline=at + 30,
                ttl=30,
            )
            for who, prio, at in waits
        ),
    )


def test_no_waits_no_victims() -> None:
    assert find_victims([res("dock", "a"), Resource(name="free")]) == []


def test_a_chain_without_a_cycle_has_no_victim() -> None:
    found = find_victims([res("r1", "a", ("b", "normal", T0)), res("r2", "b", ("c", "normal", T0))])

    assert found == []


def test_two_agents_waiting_on_each_other_fail_the_lower_priority_wait() -> None:
    found = find_victims(
        [res("dock", "a", ("b", "high", T0)), res("door", "b", ("a", "low", T0 + 1))]
    )

    assert [(v.holder, v.resource, v.ticket) for v in found] == [("a", "door", "w-a-door")]
    assert found[0].cycle == ["a waits for b (door)", "b waits for a (dock)"]
    assert "'a'" in found[0].message()
    assert "lowest priority" in found[0].message()


def test_equal_priorities_fail_the_youngest_wait() -> None:
    found = find_victims(
        [res("dock", "a", ("b", "normal", T0 + 5)), res("door", "b", ("a", "normal", T0 + 1))]
    )

    assert [v.holder for v in found] == ["b"]


def test_a_three_agent_cycle_is_found() -> None:
    found = find_victims(
        [
            res("r1", "a", ("c", "normal", T0)),
            res("r2", "b", ("a", "normal", T0)),
            res("r3", "c", ("b", "low", T0)),
        ]
    )

    assert [(v.holder, len(v.cycle)) for v in found] == [("b", 3)]


def test_two_separate_cycles_give_two_victims() -> None:
    found = find_victims(
        [
            res("r1", "a", ("b", "normal", T0)),
            res("r2", "b", ("a", "low", T0)),
            res("r3", "c", ("d", "low", T0)),
            res("r4", "d", ("c", "normal", T0)),
        ]
    )

    assert sorted(v.holder for v in found) == ["a", "d"]


def test_failed_waits_are_not_edges() -> None:
    door = res("door", "b", ("a", "low", T0))
    failed = Resource(
        name="door",
        holder="b",
        token=1,
        waiters=tuple(
            Waiter(
                ticket=w.ticket,
                holder=w.holder,
                priority=w.priority,
                requested_at=w.requested_at,
                deadline=w.deadline,
                ttl=w.ttl,
                failed="deadlock",
            )
            for w in door.waiters
        ),
    )

    assert find_victims([res("dock", "a", ("b", "normal", T0)), failed]) == []


def test_a_cycle_reached_from_a_branch_is_found() -> None:
    # x waits for a; a and b wait on each other: the cycle does not include the root x.
    found = find_victims(
        [
            res("r0", "a", ("x", "normal", T0), ("b", "normal", T0)),
            res("r1", "b", ("a", "low", T0)),
        ]
    )

    assert [v.holder for v in found] == ["a"]
