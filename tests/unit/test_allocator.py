"""The task allocator: eligibility, ranking, best / batch / auction, performance, quality.

Every expectation is computed by hand in the comments; match score = sum(weight x
proficiency) / sum(weights) (SPEC.md section 2).
"""

from __future__ import annotations

from typing import Any

import pytest

from fleetchat.errors import InvalidInputError
from fleetchat.models import AgentInfo
from fleetchat.registry.matching import rank_agents
from fleetchat.tasks import (
    AllocationPolicy,
    Bid,
    Outcome,
    ScoredBid,
    TaskAllocator,
    TaskSpec,
    Verdict,
    allocate_best,
    assignment_quality,
    batch_assign,
    decide,
    optimal_total,
    pick_best,
    rank_bids,
    update_performance,
    weighted_rule,
)
from fleetchat.tasks.batch import free_slots

POLICY = AllocationPolicy()  # load_threshold 0.8, min_confidence 0.8


def agent(agent_id: str, **kwargs: Any) -> AgentInfo:
    kwargs.setdefault("capabilities", {"nav": 1.0})
    return AgentInfo(id=agent_id, **kwargs)


def task(task_id: str = "t1", required: dict[str, float] | None = None, **kwargs: Any) -> TaskSpec:
    return TaskSpec(task_id, required or {"nav": 1.0}, **kwargs)


def assigned(decisions: list[Any]) -> dict[str, str | None]:
    return {d.task_id: d.agent_id for d in decisions}


# -- eligibility ------------------------------------------------------------------------------


def test_load_exactly_at_the_threshold_is_not_eligible() -> None:
    # 4 active / capacity 5 = 0.8, not below 0.8.
    busy = agent("busy", capacity=5, active_tasks=4)

    decision = decide(task(), [busy], POLICY)

    assert decision.verdict is Verdict.WAITING


def test_load_just_below_the_threshold_is_eligible() -> None:
    # 79 active / capacity 100 = 0.79 < 0.8.
    almost = agent("almost", capacity=100, active_tasks=79)

    decision = decide(task(), [almost], POLICY)

    assert (decision.verdict, decision.agent_id) == (Verdict.ASSIGNED, "almost")


def test_score_exactly_at_min_confidence_is_eligible() -> None:
    # (2 x 0.9 + 1 x 0.6) / 3 = 2.4 / 3 = 0.8 (0.7999999999999999 in floats).
    exact = agent("exact", capabilities={"nav": 0.9, "lift": 0.6})

    decision = decide(task(required={"nav": 2, "lift": 1}), [exact], POLICY)

    assert decision.agent_id == "exact"
    assert decision.score == pytest.approx(0.8)


def test_score_just_below_min_confidence_is_not_eligible() -> None:
    # 1 x 0.79 / 1 = 0.79 < 0.8, even idle: nobody could ever take it.
    weak = agent("weak", capabilities={"nav": 0.79})

    decision = decide(task(), [weak], POLICY)

    assert (decision.verdict, decision.unknown) == (Verdict.IMPOSSIBLE, ())


def test_active_counts_override_the_agents_own() -> None:
    # a: capacity 1, 1 active by the override -> load 1.0; b: not in the override, its own
    # active_tasks 0 -> load 0.
    a = agent("a", capabilities={"nav": 1.0})
    b = agent("b", capabilities={"nav": 0.9})

    decision = decide(task(), [a, b], POLICY, active={"a": 1})

    assert decision.agent_id == "b"


# -- ranking ----------------------------------------------------------------------------------


def test_higher_score_wins_over_higher_performance() -> None:
    # a: score 0.9, performance 1.0; b: score 0.95, performance 0.1.
    agents = [
        agent("a", capabilities={"nav": 0.9}),
        agent("b", capabilities={"nav": 0.95}, performance=0.1),
    ]

    assert decide(task(), agents, POLICY).agent_id == "b"


def test_equal_scores_go_to_the_better_performer() -> None:
    agents = [agent("a", performance=0.7), agent("b", performance=0.9)]

    assert decide(task(), agents, POLICY).agent_id == "b"


def test_equal_score_and_performance_go_to_the_lower_load() -> None:
    # a: 1 / 4 = 0.25; b: 1 / 2 = 0.5.
    agents = [agent("b", capacity=2, active_tasks=1), agent("a", capacity=4, active_tasks=1)]

    assert decide(task(), agents, POLICY).agent_id == "a"


def test_full_ties_go_to_the_smallest_id() -> None:
    agents = [agent("r2"), agent("r1"), agent("r3")]

    assert decide(task(), agents, POLICY).agent_id == "r1"


def test_pick_best_is_the_head_of_rank_agents() -> None:
    agents = [
        agent("a", capabilities={"nav": 0.9}, performance=0.5),
        agent("b", capabilities={"nav": 0.9}, performance=0.6, capacity=3, active_tasks=1),
        agent("c", capabilities={"nav": 0.85}),
        agent("d", capabilities={"nav": 0.9}, performance=0.6, capacity=3, active_tasks=2),
    ]
    ranked = rank_agents(agents, {"nav": 1.0}, min_confidence=0.8, load_threshold=0.8)

    best = pick_best(task(), agents, POLICY)

    assert best is not None
    assert [a.id for a, _ in ranked] == ["b", "d", "a", "c"]
    assert best[0].id == "b"


# -- impossible or waiting --------------------------------------------------------------------


def test_unknown_capability_is_impossible_and_named() -> None:
    agents = [agent("a", capabilities={"nav": 1.0})]

    decision = decide(task(required={"nav": 1, "weld": 1, "glue": 1}), agents, POLICY)

    assert decision.verdict is Verdict.IMPOSSIBLE
    assert decision.unknown == ("glue", "weld")


def test_weak_partial_match_is_impossible_without_unknown_names() -> None:
    # (1 x 1.0 + 1 x 0.5) / 2 = 0.75 < 0.8 for the only agent that has both.
    agents = [agent("a", capabilities={"nav": 1.0, "lift": 0.5}), agent("b", capabilities={})]

    decision = decide(task(required={"nav": 1, "lift": 1}), agents, POLICY)

    assert (decision.verdict, decision.unknown) == (Verdict.IMPOSSIBLE, ())


@pytest.mark.parametrize(
    "state",
    [{"online": False}, {"draining": True}, {"capacity": 1, "active_tasks": 1}],
    ids=["offline", "draining", "busy"],
)
def test_a_capable_agent_that_is_unavailable_makes_the_task_wait(state: dict[str, Any]) -> None:
    decision = decide(task(), [agent("a", **state)], POLICY)

    assert (decision.verdict, decision.agent_id) == (Verdict.WAITING, None)


def test_no_agents_at_all_is_impossible() -> None:
    assert decide(task(), [], POLICY).verdict is Verdict.IMPOSSIBLE


# -- best over a queue ------------------------------------------------------------------------


def test_greedy_allocation_counts_its_own_assignments() -> None:
    # capacity 2: load 0 -> takes t1, 1/2 = 0.5 -> takes t2, 2/2 = 1.0 -> t3 waits.
    tasks = [task("t1"), task("t2"), task("t3")]

    decisions = allocate_best(tasks, [agent("a", capacity=2)], POLICY)

    assert assigned(decisions) == {"t1": "a", "t2": "a", "t3": None}
    assert decisions[2].verdict is Verdict.WAITING


def test_greedy_allocation_serves_critical_tasks_first() -> None:
    tasks = [task("low", priority="low"), task("crit", priority="critical"), task("norm")]

    decisions = allocate_best(tasks, [agent("a")], POLICY)

    assert [d.task_id for d in decisions] == ["crit", "norm", "low"]
    assert assigned(decisions) == {"crit": "a", "norm": None, "low": None}


def test_greedy_allocation_leaves_the_given_counts_alone() -> None:
    active = {"a": 0}

    allocate_best([task("t1")], [agent("a", capacity=2)], POLICY, active)

    assert active == {"a": 0}


# -- batch ------------------------------------------------------------------------------------

# x: nav 1.0, lift 0.9; y: nav 0.9.
# t1 {nav: 1}:          x = 1.0,                    y = 0.9
# t2 {nav: 1, lift: 1}: x = (1.0 + 0.9) / 2 = 0.95, y = 0.9 / 2 = 0.45 (ineligible)
# Greedy, t1 first: t1 -> x (1.0), then only x suits t2 and it is full: total 1.0.
# Optimal: t1 -> y (0.9), t2 -> x (0.95): total 1.85.
GREEDY_TRAP_AGENTS = [
    agent("x", capabilities={"nav": 1.0, "lift": 0.9}),
    agent("y", capabilities={"nav": 0.9}),
]
GREEDY_TRAP_TASKS = [task("t1"), task("t2", {"nav": 1, "lift": 1})]


def test_batch_finds_the_optimum_where_greedy_falls_short() -> None:
    greedy = allocate_best(GREEDY_TRAP_TASKS, GREEDY_TRAP_AGENTS, POLICY)
    batch = batch_assign(GREEDY_TRAP_TASKS, GREEDY_TRAP_AGENTS, POLICY)

    assert assigned(greedy) == {"t1": "x", "t2": None}
    assert assigned(batch) == {"t1": "y", "t2": "x"}
    assert all(d.assigned for d in batch)
    assert sum(d.score for d in batch) == pytest.approx(1.85)


def test_batch_decisions_follow_the_task_order() -> None:
    decisions = batch_assign(GREEDY_TRAP_TASKS[::-1], GREEDY_TRAP_AGENTS, POLICY)

    assert [d.task_id for d in decisions] == ["t2", "t1"]


@pytest.mark.parametrize(
    ("active", "capacity", "slots"),
    [(0, 5, 4), (3, 5, 1), (4, 5, 0), (0, 2, 2), (0, 1, 1), (1, 1, 0), (0, 100, 80)],
)
def test_free_slots_keep_the_load_before_each_assignment_below_the_threshold(
    active: int, capacity: int, slots: int
) -> None:
    # capacity 5: loads 0, 0.2, 0.4, 0.6 are below 0.8, 0.8 is not -> 4 slots from idle.
    # capacity 2: loads 0, 0.5 -> 2 slots; capacity 100: 0 .. 0.79 -> 80 slots.
    assert free_slots(agent("a", capacity=capacity), active, 0.8, limit=1000) == slots


def test_free_slots_stop_at_the_limit_and_are_none_for_unavailable_agents() -> None:
    assert free_slots(agent("a", capacity=5), 0, 0.8, limit=2) == 2
    assert free_slots(agent("a", capacity=5, online=False), 0, 0.8, limit=9) == 0
    assert free_slots(agent("a", capacity=5, draining=True), 0, 0.8, limit=9) == 0
    assert free_slots(agent("a", capacity=0), 0, 0.8, limit=9) == 0


def test_batch_gives_an_agent_no_more_tasks_than_its_slots() -> None:
    # capacity 5, 1 active: loads 0.2, 0.4, 0.6 -> 3 slots; 5 tasks -> 3 assigned, 2 wait.
    tasks = [task(f"t{i}") for i in range(5)]

    decisions = batch_assign(tasks, [agent("a", capacity=5)], POLICY, active={"a": 1})

    assert [d.verdict for d in decisions].count(Verdict.ASSIGNED) == 3
    assert [d.verdict for d in decisions].count(Verdict.WAITING) == 2


def test_batch_spreads_equal_work_to_the_lower_load() -> None:
    # Same score and performance: a at 0/4 and b at 2/4; two slots are free on b (2/4, 3/4)
    # and three on a (0, 1/4, 2/4); one task goes to a's first slot.
    agents = [agent("b", capacity=4, active_tasks=2), agent("a", capacity=4, active_tasks=0)]

    assert assigned(batch_assign([task()], agents, POLICY)) == {"t1": "a"}


def test_batch_breaks_equal_scores_by_performance() -> None:
    agents = [agent("a", performance=0.5), agent("b", performance=0.9)]

    assert assigned(batch_assign([task()], agents, POLICY)) == {"t1": "b"}


def test_batch_never_assigns_an_ineligible_pair() -> None:
    # t1 {weld}: x = 1.0, y = 0 (has no weld). t2 {nav, lift}: x = 1.0, y = (1.0 + 0) / 2 =
    # 0.5 < 0.8. One slot on x, so one task waits; y is idle but must not get t2.
    agents = [agent("x", capabilities={"weld": 1.0, "nav": 1.0, "lift": 1.0}), agent("y")]
    tasks = [task("t1", {"weld": 1}), task("t2", {"nav": 1, "lift": 1})]

    decisions = batch_assign(tasks, agents, POLICY)

    assert "y" not in assigned(decisions).values()
    assert [d.verdict for d in decisions].count(Verdict.WAITING) == 1


def test_batch_tells_impossible_from_waiting() -> None:
    agents = [agent("a", capacity=1, active_tasks=1)]
    tasks = [task("busy"), task("never", {"weld": 1})]

    decisions = batch_assign(tasks, agents, POLICY)

    assert [(d.verdict, d.unknown) for d in decisions] == [
        (Verdict.WAITING, ()),
        (Verdict.IMPOSSIBLE, ("weld",)),
    ]


def test_batch_waits_when_the_only_capable_agent_is_offline() -> None:
    # "welder" could do it once back; "idle" is free but has no weld (score 0).
    agents = [agent("welder", capabilities={"weld": 1.0}, online=False), agent("idle")]

    decisions = batch_assign([task("t1", {"weld": 1})], agents, POLICY)

    assert (decisions[0].verdict, decisions[0].assigned) == (Verdict.WAITING, False)


def test_batch_of_nothing_and_batch_without_agents() -> None:
    assert batch_assign([], [agent("a")], POLICY) == []
    assert batch_assign([task()], [], POLICY)[0].verdict is Verdict.IMPOSSIBLE


def test_critical_task_keeps_the_agent_even_at_a_lower_total() -> None:
    # One slot. normal {nav}: 1.0; critical {nav, lift}: (1.0 + 0.8) / 2 = 0.9.
    # Highest total would be 1.0 (normal); the priority rule gives it to critical (0.9).
    agents = [agent("a", capabilities={"nav": 1.0, "lift": 0.8})]
    tasks = [task("normal"), task("crit", {"nav": 1, "lift": 1}, priority="critical")]

    decisions = batch_assign(tasks, agents, POLICY)

    assert assigned(decisions) == {"normal": None, "crit": "a"}


def test_lower_priorities_get_the_slots_left_over() -> None:
    # a: capacity 2 -> 2 slots (loads 0, 0.5) at score 1.0; b: 1 slot at 0.9. The high task
    # is solved first and takes a slot of a; the two low tasks share the two slots left.
    agents = [agent("a", capacity=2), agent("b", capabilities={"nav": 0.9})]
    tasks = [task("l1", priority="low"), task("h", priority="high"), task("l2", priority="low")]

    decisions = batch_assign(tasks, agents, POLICY)

    # h -> a (1.0); l1, l2 -> a's second slot (1.0) and b (0.9): all three assigned.
    assert assigned(decisions)["h"] == "a"
    assert sorted(str(d.agent_id) for d in decisions) == ["a", "a", "b"]


# -- quality ----------------------------------------------------------------------------------


def test_quality_of_greedy_against_the_optimum() -> None:
    # Greedy 1.0 against the optimal 1.85 (see GREEDY_TRAP_AGENTS): 1.0 / 1.85 = 0.5405.
    greedy = allocate_best(GREEDY_TRAP_TASKS, GREEDY_TRAP_AGENTS, POLICY)

    quality = assignment_quality(
        {d.task_id: d.agent_id for d in greedy if d.agent_id},
        GREEDY_TRAP_TASKS,
        GREEDY_TRAP_AGENTS,
        POLICY,
    )

    assert quality.total == pytest.approx(1.0)
    assert quality.optimal == pytest.approx(1.85)
    assert quality.ratio == pytest.approx(1.0 / 1.85)


def test_optimal_total_ignores_priorities() -> None:
    # The critical-first assignment above totals 0.9; the optimum regardless of priority 1.0.
    agents = [agent("a", capabilities={"nav": 1.0, "lift": 0.8})]
    tasks = [task("normal"), task("crit", {"nav": 1, "lift": 1}, priority="critical")]

    assert optimal_total(tasks, agents, POLICY) == pytest.approx(1.0)


def test_quality_is_one_when_nothing_could_be_assigned() -> None:
    quality = assignment_quality({}, [task()], [agent("a", online=False)], POLICY)

    assert (quality.optimal, quality.ratio) == (0.0, 1.0)
    assert optimal_total([], [agent("a")], POLICY) == 0.0


def test_quality_rejects_unknown_tasks_and_agents() -> None:
    with pytest.raises(InvalidInputError):
        assignment_quality({"t1": "ghost"}, [task()], [agent("a")], POLICY)


# -- auction ----------------------------------------------------------------------------------

BIDDERS = [
    agent("a", capabilities={"nav": 0.9}),
    agent("b", capabilities={"nav": 0.9}),
    agent("c", capabilities={"nav": 0.85}),
    agent("d", capabilities={"nav": 0.95}),
    agent("busy", capacity=1, active_tasks=1),
    agent("weak", capabilities={"nav": 0.5}),
]
BIDS = [
    Bid("a", cost=5, eta=10),
    Bid("b", cost=3, eta=20),
    Bid("c", cost=3, eta=10),
    Bid("d", cost=3, eta=10),
]


def test_default_rule_is_lowest_cost_then_eta_then_score() -> None:
    # cost 3: b, c, d; of those eta 10: c, d; c scores 0.85, d 0.95 -> d, c, b, then a (cost 5).
    ranked = rank_bids(task(), BIDS, BIDDERS, POLICY)

    assert [b.agent_id for b in ranked] == ["d", "c", "b", "a"]
    assert ranked[0].score == pytest.approx(0.95)


def test_bids_from_ineligible_or_unknown_agents_are_dropped() -> None:
    extra = [Bid("busy", cost=0, eta=0), Bid("weak", cost=0, eta=0), Bid("ghost", cost=0, eta=0)]

    ranked = rank_bids(task(), [*extra, *BIDS], BIDDERS, POLICY)

    assert [b.agent_id for b in ranked] == ["d", "c", "b", "a"]


def test_an_agents_last_bid_counts() -> None:
    ranked = rank_bids(task(), [*BIDS, Bid("a", cost=1, eta=99)], BIDDERS, POLICY)

    assert [b.agent_id for b in ranked] == ["a", "d", "c", "b"]


def test_weighted_rule_trades_cost_for_time() -> None:
    # cost + 0.5 x eta: a 5 + 5 = 10, b 3 + 10 = 13, c 3 + 5 = 8, d 3 + 5 = 8 (tie: d's
    # higher score) -> d, c, a, b.
    ranked = rank_bids(task(), BIDS, BIDDERS, POLICY, rule=weighted_rule(cost=1, eta=0.5))

    assert [b.agent_id for b in ranked] == ["d", "c", "a", "b"]


def test_a_custom_rule_picks_the_winner() -> None:
    def best_score(bid: ScoredBid) -> tuple[float, str]:
        return (-bid.score, bid.agent_id)

    allocator = TaskAllocator(bid_rule=best_score)

    ranked = allocator.rank_bids(task(), BIDS, BIDDERS)

    # Scores: d 0.95, a 0.9, b 0.9, c 0.85.
    assert [b.agent_id for b in ranked] == ["d", "a", "b", "c"]


@pytest.mark.parametrize("weights", [{"cost": -1.0}, {"cost": 0.0}, {"eta": float("inf")}], ids=str)
def test_weighted_rule_rejects_bad_weights(weights: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError):
        weighted_rule(**weights)


@pytest.mark.parametrize(
    "fields",
    [{"cost": -1.0}, {"eta": -0.5}, {"cost": float("nan")}, {"agent_id": ""}],
    ids=str,
)
def test_bad_bids_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        Bid(**{"agent_id": "a", "cost": 1.0, "eta": 1.0, **fields})


# -- performance ------------------------------------------------------------------------------


def test_a_failure_costs_a_fifth_of_the_score() -> None:
    # 0.8 x 1.0 + 0.2 x 0 = 0.8.
    assert update_performance(1.0, Outcome(succeeded=False)) == pytest.approx(0.8)


def test_an_on_time_success_moves_the_score_towards_one() -> None:
    # 0.8 x 0.5 + 0.2 x 1 = 0.6; 9 s against an estimate of 10 s counts as on time.
    outcome = Outcome(succeeded=True, duration=9.0, estimate=10.0)

    assert update_performance(0.5, outcome) == pytest.approx(0.6)


def test_a_late_success_counts_as_estimate_over_duration() -> None:
    # 20 s against 10 s -> 0.5; 0.8 x 0.9 + 0.2 x 0.5 = 0.72 + 0.1 = 0.82.
    outcome = Outcome(succeeded=True, duration=20.0, estimate=10.0)

    assert update_performance(0.9, outcome) == pytest.approx(0.82)


def test_the_weight_sets_how_fast_the_score_moves() -> None:
    # 0.5 x 0.4 + 0.5 x 1 = 0.7.
    assert update_performance(0.4, Outcome(succeeded=True), weight=0.5) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "call",
    [
        lambda: update_performance(1.5, Outcome(succeeded=True)),
        lambda: update_performance(0.5, Outcome(succeeded=True), weight=0),
        lambda: Outcome(succeeded=True, duration=-1.0),
        lambda: Outcome(succeeded=True, estimate=float("inf")),
    ],
    ids=["score", "weight", "duration", "estimate"],
)
def test_bad_performance_input_is_rejected(call: Any) -> None:
    with pytest.raises(InvalidInputError):
        call()


# -- policy, tasks and the facade -------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"mode": "fastest"}, {"load_threshold": 0}, {"load_threshold": 1.5}, {"min_confidence": -0.1}],
    ids=str,
)
def test_bad_policies_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        AllocationPolicy(**fields)


@pytest.mark.parametrize(
    ("task_id", "required", "priority"),
    [
        ("t1", {"nav": -1.0}, "normal"),
        ("t1", {}, "normal"),
        ("t1", {"nav": 1.0}, "urgent"),
        ("", {"nav": 1.0}, "normal"),
    ],
    ids=["negative weight", "no capability", "unknown priority", "no id"],
)
def test_bad_tasks_are_rejected(task_id: str, required: dict[str, float], priority: str) -> None:
    with pytest.raises(InvalidInputError):
        TaskSpec(task_id, required, priority=priority)  # type: ignore[arg-type]


def test_allocator_follows_its_mode() -> None:
    best = TaskAllocator(AllocationPolicy(mode="best"))
    batch = TaskAllocator(AllocationPolicy(mode="batch"))

    assert assigned(best.allocate(GREEDY_TRAP_TASKS, GREEDY_TRAP_AGENTS)) == {
        "t1": "x",
        "t2": None,
    }
    assert assigned(batch.allocate(GREEDY_TRAP_TASKS, GREEDY_TRAP_AGENTS)) == {
        "t1": "y",
        "t2": "x",
    }
    assert best.decide(task(), GREEDY_TRAP_AGENTS).agent_id == "x"
