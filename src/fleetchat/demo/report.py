"""The demo's final report, computed from the hub's task records and the cell's journal.

Pure functions (no I/O), so the maths is unit-tested on hand-made records.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fleetchat.demo.journal import DockGrant, OrderRecord
from fleetchat.models import AgentInfo
from fleetchat.registry.matching import match_score
from fleetchat.tasks.batch import optimal_total
from fleetchat.tasks.policy import AllocationPolicy, TaskSpec
from fleetchat.tasks.records import TaskRecord

__all__ = [
    "AllocationQuality",
    "DockCheck",
    "Report",
    "allocation_quality",
    "check_dock",
    "check_orders",
    "latencies",
    "percentile",
    "reassignments",
    "recovery_times",
    "utilisation",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100): the smallest value with at least
    q % of the values at or below it; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latencies(tasks: Iterable[TaskRecord]) -> list[float]:
    """Seconds from submission to success, of every task that succeeded."""
    return [
        t.attempts[-1].ended_at - t.created_at
        for t in tasks
        if t.state == "succeeded" and t.attempts and t.attempts[-1].ended_at is not None
    ]


def reassignments(tasks: Iterable[TaskRecord]) -> Counter[str]:
    """Every attempt beyond a task's first, counted by how the attempt before it ended
    (``rejected``, ``agent_lost``, ``offer_timeout``, ``failed``, ``heartbeat``, ...)."""
    reasons: Counter[str] = Counter()
    for task in tasks:
        for before in task.attempts[:-1]:
            reasons[before.outcome or "unknown"] += 1
    return reasons


def recovery_times(tasks: Iterable[TaskRecord], deaths: Mapping[str, float]) -> list[float]:
    """Seconds from each robot's death to its task running on another agent."""
    out = []
    for task in tasks:
        for i, lost in enumerate(task.attempts):
            died = deaths.get(lost.agent)
            if lost.outcome != "agent_lost" or died is None:
                continue
            later = [a.started_at for a in task.attempts[i + 1 :] if a.started_at is not None]
            if later:
                out.append(later[0] - died)
    return out


def utilisation(
    tasks: Iterable[TaskRecord],
    kinds: Mapping[str, str],
    start: float,
    end: float,
    deaths: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per kind of agent: the time its agents held accepted work over the time they were
    alive between ``start`` and ``end`` (a dead agent's time ends at its death)."""
    busy: dict[str, float] = {}
    for task in tasks:
        for a in task.attempts:
            if a.accepted_at is not None:
                took = min(a.ended_at or end, end) - max(a.accepted_at, start)
                busy[a.agent] = busy.get(a.agent, 0.0) + max(0.0, took)
    out: dict[str, float] = {}
    for kind in sorted(set(kinds.values())):
        members = [agent for agent, k in kinds.items() if k == kind]
        alive = sum(max(0.0, min((deaths or {}).get(m, end), end) - start) for m in members)
        out[kind] = sum(busy.get(m, 0.0) for m in members) / alive if alive > 0 else 0.0
    return out


@dataclass(frozen=True, slots=True)
class AllocationQuality:
    total: float
    """Sum of the match scores of the agents the scheduler chose."""
    optimal: float
    """Sum, over the rounds, of the best total any assignment could have reached."""
    decisions: int
    rounds: int
    below: int
    """Rounds in which the scheduler's choice scored less than the optimum."""

    @property
    def ratio(self) -> float:
        return self.total / self.optimal if self.optimal > 0 else 1.0


def allocation_quality(
    tasks: Sequence[TaskRecord],
    agents: Sequence[AgentInfo],
    policy: AllocationPolicy,
    offline_at: Mapping[str, float] | None = None,
) -> AllocationQuality:
    """How good the scheduler's decisions were against the optimum on the same snapshots.

    The decisions are the first offers of the tasks (a retry deliberately avoids the agents
    that already tried, which an optimum on a snapshot knows nothing of). They are split into
    *rounds*: a run of offers with no attempt ending between two of them. Through a round the
    agents' free slots only shrink, so every choice the scheduler made in it was feasible on
    the snapshot at the round's start: the agents (online unless they died before it) with the
    loads their held attempts gave them then. For each round :func:`batch.optimal_total` gives
    the largest total match score any assignment of the same tasks to that snapshot could
    reach; the quality is the chosen scores' sum over the optimal sums. It compares the
    greedy, one-task-at-a-time ``best`` mode with an allocator that saw each round whole.
    """
    by_id = {a.id: a for a in agents}
    ends = sorted(a.ended_at for t in tasks for a in t.attempts if a.ended_at is not None)
    held = [(a.offered_at, a.ended_at, a.agent) for t in tasks for a in t.attempts]
    firsts = sorted(
        ((t.attempts[0].offered_at, t) for t in tasks if t.attempts and t.required),
        key=lambda pair: pair[0],
    )
    rounds: list[list[tuple[float, TaskRecord]]] = []
    for at, task in firsts:
        # a new round begins when an attempt ended since the last offer: a slot may have freed
        if rounds and not _ended_in(ends, rounds[-1][-1][0], at):
            rounds[-1].append((at, task))
        else:
            rounds.append([(at, task)])
    total = optimal = 0.0
    decisions = below = 0
    for group in rounds:
        t0 = group[0][0]
        load: Counter[str] = Counter(
            who for offered, ended, who in held if offered < t0 and (ended is None or ended > t0)
        )
        snapshot = [
            msgspec.structs.replace(
                a, online=(offline_at or {}).get(a.id, math.inf) > t0, draining=False
            )
            for a in agents
        ]
        specs = [TaskSpec(t.id, t.required, t.priority) for _, t in group]
        chosen = 0.0
        for _, t in group:
            agent = by_id.get(t.attempts[0].agent)
            chosen += match_score(agent.capabilities, t.required) if agent else 0.0
        best = optimal_total(specs, snapshot, policy, dict(load))
        total += chosen
        optimal += best
        decisions += len(group)
        below += chosen < best - 1e-9
    return AllocationQuality(total, optimal, decisions, len(rounds), below)


def _ended_in(ends: Sequence[float], after: float, until: float) -> bool:
    """Whether some end time lies in (after, until]."""
    i = bisect.bisect_right(ends, after)
    return i < len(ends) and ends[i] <= until


@dataclass(frozen=True, slots=True)
class DockCheck:
    grants: int
    tokens_increasing: bool
    overlaps: int
    """Grants that began before the previous holder unplugged."""


def check_dock(grants: Sequence[DockGrant]) -> DockCheck:
    """Whether the dock ever had two robots at once, from its own plug and unplug times, and
    whether every grant's fencing token was larger than the one before."""
    ordered = sorted(grants, key=lambda g: g.plugged_at)
    tokens = [g.token for g in ordered]
    overlaps = 0
    for before, after in itertools.pairwise(ordered):
        if before.unplugged_at is None or after.plugged_at < before.unplugged_at:
            overlaps += 1
    increasing = all(a < b for a, b in itertools.pairwise(tokens))
    return DockCheck(len(ordered), increasing, overlaps)


def check_orders(orders: Iterable[OrderRecord], tasks: Mapping[str, TaskRecord]) -> list[str]:
    """What is wrong with the orders: each must have finished exactly once, with one task per
    step that succeeded exactly once."""
    problems = []
    for order in orders:
        if order.completions != 1:
            why = f": {order.failed}" if order.failed else ""
            problems.append(f"{order.id} finished {order.completions} times{why}")
            continue
        if len(order.tasks) != len(order.steps):
            problems.append(f"{order.id} has {len(order.tasks)} tasks for {len(order.steps)}")
        for task_id in order.tasks:
            task = tasks.get(task_id)
            wins = sum(a.outcome == "succeeded" for a in task.attempts) if task else 0
            if task is None or task.state != "succeeded" or wins != 1:
                problems.append(f"{order.id}: task {task_id} did not succeed exactly once")
    return problems


@dataclass(slots=True)
class Report:
    """Everything the demo prints at the end (and as ``RESULT {json}`` when headless)."""

    seconds: float
    orders: int
    orders_done: int
    tasks: int
    tasks_done: int
    task_states: dict[str, int]
    latency_p50: float
    latency_p99: float
    reassigned: int
    reasons: dict[str, int]
    utilisation: dict[str, float]
    charging_share: float
    quality: AllocationQuality
    dock: DockCheck
    dock_waiting_max: int
    declines: int
    deaths: list[str]
    recovery: list[float]
    """Seconds from a robot's death to its task running elsewhere."""
    health: str = "ok"
    """The hub's health status at the end (``GET /v1/health``)."""
    incidents: list[dict[str, Any]] = field(default_factory=list)
    """Agent losses the failure detector recorded on ``$ops``: agent, took, ok."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        q = self.quality
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "orders": self.orders,
            "orders_done": self.orders_done,
            "orders_exactly_once": not any("finished" in p for p in self.problems),
            "tasks": self.tasks,
            "tasks_done": self.tasks_done,
            "task_states": self.task_states,
            "latency_p50_s": round(self.latency_p50, 3),
            "latency_p99_s": round(self.latency_p99, 3),
            "reassigned": self.reassigned,
            "reassigned_by_reason": self.reasons,
            "utilisation": {k: round(v, 3) for k, v in self.utilisation.items()},
            "quality": round(q.ratio, 4),
            "quality_decisions": q.decisions,
            "quality_rounds": q.rounds,
            "dock_grants": self.dock.grants,
            "dock_tokens_increasing": self.dock.tokens_increasing,
            "dock_overlaps": self.dock.overlaps,
            "dock_waiting_max": self.dock_waiting_max,
            "declines": self.declines,
            "deaths": self.deaths,
            "recovery_s": [round(r, 3) for r in self.recovery],
            "health": self.health,
            "incidents": self.incidents,
            "problems": self.problems,
        }
