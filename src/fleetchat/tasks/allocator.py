"""The allocator: which agent gets a task. Pure logic over a snapshot of the registry.

Candidates come from the registry's matching (:mod:`fleetchat.registry.matching`): an agent is
eligible while online, not draining, its load before the assignment (active tasks / capacity)
below ``load_threshold`` and its match score at least ``min_confidence``; candidates rank by
score, then performance, then lower load, then id. This module adds the decision for one task
(``best`` mode) with the difference between a task that waits and one that can never run,
greedy allocation of many tasks, and the :class:`TaskAllocator` facade over every mode.
Offering the task, waiting for accept and counting active tasks belong to the scheduler.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from fleetchat.models import AgentInfo
from fleetchat.registry.matching import confident, eligible_agents, match_score, rank_key
from fleetchat.tasks.auction import Bid, BidRule, ScoredBid, lowest_cost, rank_bids
from fleetchat.tasks.policy import (
    AllocationPolicy,
    Decision,
    TaskSpec,
    Verdict,
    unknown_capabilities,
)

__all__ = [
    "TaskAllocator",
    "allocate_best",
    "by_priority",
    "could_ever_match",
    "decide",
    "pick_best",
]


def pick_best(
    task: TaskSpec,
    agents: Iterable[AgentInfo],
    policy: AllocationPolicy,
    active: Mapping[str, int] | None = None,
) -> tuple[AgentInfo, float] | None:
    """The top eligible agent for ``task`` with its score, or None when nobody is eligible.

    The same agent ``rank_agents(...)[0]`` would give, found in one pass without sorting.
    ``active`` overrides the agents' active task counts (see ``matching.agent_load``).
    """
    best: tuple[AgentInfo, float] | None = None
    best_key: tuple[float, float, float, str] | None = None
    for agent, score, load in eligible_agents(
        agents,
        task.required,
        min_confidence=policy.min_confidence,
        load_threshold=policy.load_threshold,
        active=active,
    ):
        key = rank_key(agent, score, load)
        if best_key is None or key < best_key:
            best, best_key = (agent, score), key
    return best


def could_ever_match(task: TaskSpec, agents: Iterable[AgentInfo], policy: AllocationPolicy) -> bool:
    """Whether some registered agent reaches min_confidence for ``task`` at all: busy, offline
    and draining agents count, since they may come back free."""
    return any(
        confident(match_score(a.capabilities, task.required), policy.min_confidence) for a in agents
    )


def decide(
    task: TaskSpec,
    agents: Collection[AgentInfo],
    policy: AllocationPolicy,
    active: Mapping[str, int] | None = None,
) -> Decision:
    """``best`` mode for one task: ASSIGNED to the top candidate, else WAITING or IMPOSSIBLE.

    IMPOSSIBLE means no registered agent could take the task even idle and online (unknown
    capability names, or proficiencies too low for min_confidence); the scheduler turns it into
    a typed error. Only an unassignable task pays the extra pass over the agents.
    """
    found = pick_best(task, agents, policy, active)
    if found is not None:
        agent, score = found
        return Decision(task.id, Verdict.ASSIGNED, agent_id=agent.id, score=score)
    if could_ever_match(task, agents, policy):
        return Decision(task.id, Verdict.WAITING)
    return Decision(task.id, Verdict.IMPOSSIBLE, unknown=unknown_capabilities(task, agents))


def by_priority(tasks: Iterable[TaskSpec]) -> list[TaskSpec]:
    """Critical first, then high, normal, low; queue order kept within a priority."""
    return sorted(tasks, key=lambda t: t.rank)


def allocate_best(
    tasks: Iterable[TaskSpec],
    agents: Collection[AgentInfo],
    policy: AllocationPolicy,
    active: Mapping[str, int] | None = None,
) -> list[Decision]:
    """``best`` mode over a queue: one :func:`decide` per task, critical tasks first, each
    assignment counted in the load of the next decisions (greedy, task by task).

    Decisions come back in the order they were made (by priority). ``active`` is not changed.
    """
    counts = {a.id: a.active_tasks for a in agents}
    if active is not None:
        counts.update(active)
    decisions = []
    for task in by_priority(tasks):
        decision = decide(task, agents, policy, counts)
        if decision.agent_id is not None:
            counts[decision.agent_id] += 1
        decisions.append(decision)
    return decisions


class TaskAllocator:
    """The allocator with its policy and auction rule, for the scheduler to hold.

    Args:
        policy: mode, load threshold and min confidence (SPEC.md defaults).
        bid_rule: orders auction bids, smallest key first (default :func:`lowest_cost`).
    """

    def __init__(
        self, policy: AllocationPolicy | None = None, *, bid_rule: BidRule = lowest_cost
    ) -> None:
        self.policy = policy if policy is not None else AllocationPolicy()
        self.bid_rule = bid_rule

    def decide(
        self,
        task: TaskSpec,
        agents: Collection[AgentInfo],
        active: Mapping[str, int] | None = None,
    ) -> Decision:
        """One task, ``best`` mode (see :func:`decide`)."""
        return decide(task, agents, self.policy, active)

    def allocate(
        self,
        tasks: Sequence[TaskSpec],
        agents: Collection[AgentInfo],
        active: Mapping[str, int] | None = None,
    ) -> list[Decision]:
        """Decisions for waiting tasks: optimal (``batch``) or greedy (``best``).

        Under ``auction`` this is the greedy allocation too: the fall-back when a call for
        proposals gets no usable bid.
        """
        if self.policy.mode == "batch":
            # scipy loads only when batch mode is used (about 1 s of import time).
            from fleetchat.tasks.batch import batch_assign

            return batch_assign(tasks, agents, self.policy, active)
        return allocate_best(tasks, agents, self.policy, active)

    def rank_bids(
        self,
        task: TaskSpec,
        bids: Iterable[Bid],
        agents: Collection[AgentInfo],
        active: Mapping[str, int] | None = None,
    ) -> list[ScoredBid]:
        """Eligible bids, winner first, then the ones to try when it declines."""
        return rank_bids(task, bids, agents, self.policy, active, rule=self.bid_rule)
