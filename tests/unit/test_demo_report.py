"""The demo's report maths, on hand-made task records (fleetchat.demo.report)."""

from __future__ import annotations

import pytest

from fleetchat.demo.journal import DockGrant, OrderRecord
from fleetchat.demo.report import (
    allocation_quality,
    check_dock,
    check_orders,
    latencies,
    percentile,
    reassignments,
    recovery_times,
    utilisation,
)
from fleetchat.models import AgentInfo
from fleetchat.tasks.policy import AllocationPolicy
from fleetchat.tasks.records import Attempt, TaskRecord

PICK = {"pick": 1.0}
WELD = {"weld": 1.0}


def done(
    task_id: str, required: dict[str, float], *attempts: Attempt, at: float = 0.0
) -> TaskRecord:
    return TaskRecord(
        id=task_id, required=required, state="succeeded", attempts=list(attempts), created_at=at
    )


def ran(agent: str, offered: float, ended: float, outcome: str = "succeeded") -> Attempt:
    return Attempt(
        agent=agent,
        offered_at=offered,
        accepted_at=offered,
        started_at=offered,
        ended_at=ended,
        outcome=outcome,
    )


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(10, 0, -1)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (5, 9, 10)
    assert percentile([], 50) == 0.0


def test_latency_runs_from_submission_to_the_successful_attempts_end() -> None:
    tasks = [done("t1", PICK, ran("a1", 1.0, 3.5), at=0.5), TaskRecord(id="t2", required=PICK)]
    assert latencies(tasks) == [3.0]


def test_reassignments_count_the_attempts_beyond_the_first_by_how_the_one_before_ended() -> None:
    task = done(
        "t1",
        PICK,
        Attempt(agent="a1", offered_at=1.0, ended_at=1.1, outcome="rejected"),
        ran("a2", 1.2, 2.0, "agent_lost"),
        ran("a3", 2.1, 3.0),
    )
    assert reassignments([task, done("t2", PICK, ran("a1", 1, 2))]) == {
        "rejected": 1,
        "agent_lost": 1,
    }


def test_recovery_runs_from_the_death_to_the_next_attempt_that_started() -> None:
    task = done(
        "t1",
        PICK,
        ran("amr-1", 1.0, 5.1, "agent_lost"),
        Attempt(agent="amr-2", offered_at=5.1, ended_at=5.2, outcome="rejected"),
        ran("amr-3", 5.3, 6.0),
    )
    assert recovery_times([task], {"amr-1": 5.0}) == [pytest.approx(0.3)]


def test_utilisation_is_busy_time_over_the_time_each_kind_was_alive() -> None:
    tasks = [done("t1", PICK, ran("amr-1", 2.0, 4.0)), done("t2", PICK, ran("amr-2", 1.0, 3.0))]
    kinds = {"amr-1": "amr", "amr-2": "amr", "arm-1": "arm"}
    out = utilisation(tasks, kinds, 0.0, 10.0, deaths={"amr-2": 5.0})
    assert out == {"amr": pytest.approx(4 / 15), "arm": 0.0}


def test_quality_compares_each_round_of_first_offers_with_the_optimum_on_its_snapshot() -> None:
    agents = [
        AgentInfo(id="a1", capabilities={"pick": 1.0, "weld": 1.0}),
        AgentInfo(id="a2", capabilities={"pick": 0.95, "weld": 0.8}),
        AgentInfo(id="a3", capabilities={"pick": 1.0, "weld": 1.0}),  # dead before round 1
    ]
    tasks = [
        # round 1 (nothing ended between the offers): greedy 1.0 + 0.8, optimum 0.95 + 1.0
        done("t1", PICK, ran("a1", 1.0, 4.0)),
        done("t2", WELD, ran("a2", 1.1, 6.0)),
        # round 2, after t1 ended: a2 still holds t2, a1 is the only free slot: 1.0 of 1.0
        done("t3", PICK, ran("a1", 5.0, 7.0)),
    ]
    q = allocation_quality(tasks, agents, AllocationPolicy(), offline_at={"a3": 0.5})
    assert (q.decisions, q.rounds, q.below) == (3, 2, 1)
    assert (q.total, q.optimal) == (pytest.approx(2.8), pytest.approx(2.95))
    assert q.ratio == pytest.approx(2.8 / 2.95)


def test_quality_counts_only_first_offers_and_is_one_without_decisions() -> None:
    agents = [AgentInfo(id="a1", capabilities={"pick": 0.9}), AgentInfo(id="a2", capabilities=PICK)]
    retried = done("t1", PICK, ran("a2", 1.0, 2.0, "agent_lost"), ran("a1", 2.0, 3.0))
    q = allocation_quality([retried], agents, AllocationPolicy(), offline_at={"a2": 2.0})
    assert (q.decisions, q.total, q.optimal, q.ratio) == (1, 1.0, 1.0, 1.0)
    assert allocation_quality([], agents, AllocationPolicy()).ratio == 1.0


def test_the_dock_check_finds_overlaps_and_tokens_that_do_not_increase() -> None:
    clean = [DockGrant("r1", 1, 0.0, 2.0), DockGrant("r2", 2, 2.0, 3.0)]
    assert check_dock(clean) == check_dock(list(reversed(clean)))
    assert (check_dock(clean).overlaps, check_dock(clean).tokens_increasing) == (0, True)
    overlapping = [*clean, DockGrant("r3", 3, 2.5, 4.0), DockGrant("r4", 2, 5.0, None)]
    check = check_dock(overlapping)
    assert (check.grants, check.overlaps, check.tokens_increasing) == (4, 1, False)
    assert check_dock([DockGrant("r1", 1, 0.0), DockGrant("r2", 2, 1.0)]).overlaps == 1


def test_every_order_must_finish_exactly_once_with_each_step_succeeding_once() -> None:
    tasks = {
        "t1": done("t1", PICK, ran("a1", 0, 1)),
        "t2": TaskRecord(id="t2", required=PICK, state="failed"),
    }
    good = OrderRecord("o-1", "restock", ["pick"], completions=1, tasks=["t1"])
    twice = OrderRecord("o-2", "restock", ["pick"], completions=2, tasks=["t1"])
    failed = OrderRecord("o-3", "restock", ["pick"], completions=0, failed="pick ended failed")
    short = OrderRecord("o-4", "kit", ["pick", "transport"], completions=1, tasks=["t1"])
    bad_task = OrderRecord("o-5", "restock", ["pick"], completions=1, tasks=["t2"])
    assert check_orders([good], tasks) == []
    assert check_orders([twice, failed, short, bad_task], tasks) == [
        "o-2 finished 2 times",
        "o-3 finished 0 times: pick ended failed",
        "o-4 has 1 tasks for 2",
        "o-5: task t2 did not succeed exactly once",
    ]
