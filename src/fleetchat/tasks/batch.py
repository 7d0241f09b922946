"""``batch`` mode: an optimal assignment of many waiting tasks at once, and its quality measure.

Every available agent offers as many *slots* as tasks it may still take: with ``a`` active
tasks, capacity ``c`` and threshold ``t``, slot ``i`` (from 0) exists while ``(a + i) / c < t``
(the same rule as one assignment at a time). Scores are computed for every task and agent at
once as a matrix product, and :func:`scipy.optimize.linear_sum_assignment` finds the pairs of
tasks and slots with the largest total score; a pair with a score under min_confidence is never
kept, and a task without a slot waits.

Priority rule: levels are solved one after another, critical first, each over the slots the
levels above left free. A task can therefore never lose an agent to a task of lower priority,
even when giving the agent to the lower task would raise the total score; within one level the
total score is maximal.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import bmat as sp_bmat
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from fleetchat.errors import InvalidInputError
from fleetchat.models import AgentInfo
from fleetchat.registry.matching import match_score
from fleetchat.tasks.policy import (
    AllocationPolicy,
    Decision,
    TaskSpec,
    Verdict,
    unknown_capabilities,
)

__all__ = ["Quality", "assignment_quality", "batch_assign", "free_slots", "optimal_total"]

#: Forgives float rounding at the min_confidence boundary, as ``matching.confident`` does.
_TOLERANCE = 1e-12
#: Tie-breaks added to an eligible pair's score: higher performance, then lower load, as in
#: ``rank_key``. Small enough not to matter against real score differences (at most 2e-6 per
#: task), large enough that an eligible pair always beats leaving the task unassigned.
_PERFORMANCE_TIE = 1e-6
_LOAD_TIE = 1e-8

Matrix = Any  # numpy arrays; numpy's own types would add nothing for mypy here


def free_slots(agent: AgentInfo, active: int, load_threshold: float, limit: int) -> int:
    """Tasks ``agent`` may still take, at most ``limit``: how many ``i`` from 0 keep the load
    before the assignment ``(active + i) / capacity`` below the threshold. Offline and draining
    agents have none."""
    if not agent.online or agent.draining or agent.capacity <= 0:
        return 0
    n = 0
    while n < limit and (active + n) / agent.capacity < load_threshold:
        n += 1
    return n


def _score_matrix(tasks: Sequence[TaskSpec], agents: Sequence[AgentInfo]) -> Matrix:
    """``scores[t, a] = match_score(agents[a].capabilities, tasks[t].required)``, as
    (tasks x weights) @ (proficiencies x agents) over the capabilities the tasks name."""
    names = sorted({name for task in tasks for name in task.required})
    column = {name: j for j, name in enumerate(names)}
    weights = np.zeros((len(tasks), len(names)))
    for i, task in enumerate(tasks):
        total = sum(task.required.values())
        for name, w in task.required.items():
            weights[i, column[name]] = w / total
    proficiency = np.zeros((len(names), len(agents)))
    for a, agent in enumerate(agents):
        for name, p in agent.capabilities.items():
            j = column.get(name)
            if j is not None:
                proficiency[j, a] = p
    return weights @ proficiency


@dataclass(slots=True)
class _Slots:
    """The free slots of one priority level: the agent index and load of each."""

    agent: Matrix
    load: Matrix


def _slots(
    agents: Sequence[AgentInfo], counts: list[int], policy: AllocationPolicy, limit: int
) -> _Slots:
    owner: list[int] = []
    load: list[float] = []
    for a, agent in enumerate(agents):
        for i in range(free_slots(agent, counts[a], policy.load_threshold, limit)):
            owner.append(a)
            load.append((counts[a] + i) / agent.capacity)
    return _Slots(np.array(owner, dtype=np.intp), np.array(load, dtype=float))


def _components(ok: Matrix) -> list[tuple[Matrix, Matrix]]:
    """The rows and columns of each connected part of the bipartite graph of eligible pairs,
    leaving out rows and columns without any eligible pair."""
    n_rows = ok.shape[0]
    count, labels = connected_components(_bipartite(csr_matrix(ok)), directed=False)
    row_labels, col_labels = labels[:n_rows], labels[n_rows:]
    live = np.zeros(count, dtype=bool)
    live[row_labels[ok.any(axis=1)]] = True
    return [
        (np.flatnonzero(row_labels == k), np.flatnonzero(col_labels == k))
        for k in np.flatnonzero(live)
    ]


def _bipartite(graph: Matrix) -> Matrix:
    """The square adjacency matrix of a bipartite graph given as its rows x columns matrix."""
    return sp_bmat([[None, graph], [graph.T, None]], format="csr")


def _maximise(weight: Matrix, ok: Matrix) -> tuple[Matrix, Matrix]:
    """Rows and columns of the eligible pairs (``ok``) of the assignment with the largest total
    ``weight``; ineligible pairs weigh as much as no assignment (they are dropped).

    The assignment is solved separately on each connected part of the graph of eligible pairs
    (in a factory, roughly one per kind of robot), and rows or columns with no eligible pair
    are left out: neither changes the optimum, but a square matrix whose full matching does not
    exist makes the solver search long (1,000 x 1,000 factory tasks over robots of capacity 1:
    300 ms in one piece).
    """
    found_rows, found_cols = [], []
    for part_rows, part_cols in _components(ok):
        part_ok = ok[np.ix_(part_rows, part_cols)]
        part = np.where(part_ok, weight[np.ix_(part_rows, part_cols)], 0.0)
        rows, cols = linear_sum_assignment(part, maximize=True)
        keep = part_ok[rows, cols]
        found_rows.append(part_rows[rows[keep]])
        found_cols.append(part_cols[cols[keep]])
    if not found_rows:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(found_rows), np.concatenate(found_cols)


def _solve(
    scores: Matrix, eligible: Matrix, agents: Sequence[AgentInfo], slots: _Slots
) -> tuple[Matrix, Matrix]:
    """Row and slot index of each pair assigned in one level (rows: its tasks)."""
    performance = np.array([a.performance for a in agents])[slots.agent]
    tie = _PERFORMANCE_TIE * (1.0 + performance) + _LOAD_TIE * (1.0 - np.minimum(slots.load, 1.0))
    return _maximise(scores[:, slots.agent] + tie, eligible[:, slots.agent])


def batch_assign(
    tasks: Sequence[TaskSpec],
    agents: Collection[AgentInfo],
    policy: AllocationPolicy,
    active: Mapping[str, int] | None = None,
) -> list[Decision]:
    """One decision per task, in the order of ``tasks``: the optimal assignment by level.

    See the module docstring for the slots and the priority rule. ``active`` overrides the
    agents' active task counts, as in ``matching.agent_load``.
    """
    if not tasks:
        return []
    pool = list(agents)
    counts = [a.active_tasks if active is None else active.get(a.id, a.active_tasks) for a in pool]
    scores = _score_matrix(tasks, pool)
    eligible = scores >= policy.min_confidence - _TOLERANCE
    possible = eligible.any(axis=1) if pool else np.zeros(len(tasks), dtype=bool)
    decisions: dict[int, Decision] = {}
    for rank in sorted({t.rank for t in tasks}):
        rows = np.array([i for i, t in enumerate(tasks) if t.rank == rank and possible[i]])
        if rows.size == 0:
            continue
        slots = _slots(pool, counts, policy, rows.size)
        if slots.agent.size == 0:
            break
        picked, cols = _solve(scores[rows], eligible[rows], pool, slots)
        for r, c in zip(picked.tolist(), cols.tolist(), strict=True):
            task, a = rows[r], int(slots.agent[c])
            decisions[task] = Decision(
                tasks[task].id, Verdict.ASSIGNED, agent_id=pool[a].id, score=float(scores[task, a])
            )
            counts[a] += 1
    return [
        _unassigned(t, pool, bool(possible[i])) if i not in decisions else decisions[i]
        for i, t in enumerate(tasks)
    ]


def _unassigned(task: TaskSpec, agents: Sequence[AgentInfo], possible: bool) -> Decision:
    if possible:
        return Decision(task.id, Verdict.WAITING)
    return Decision(task.id, Verdict.IMPOSSIBLE, unknown=unknown_capabilities(task, agents))


def optimal_total(
    tasks: Sequence[TaskSpec],
    agents: Collection[AgentInfo],
    policy: AllocationPolicy,
    active: Mapping[str, int] | None = None,
) -> float:
    """The largest total match score any valid assignment of ``tasks`` can reach, priorities
    ignored: one solve over every task and free slot, with the raw scores (no tie-breaks)."""
    pool = list(agents)
    if not tasks or not pool:
        return 0.0
    counts = [a.active_tasks if active is None else active.get(a.id, a.active_tasks) for a in pool]
    scores = _score_matrix(tasks, pool)
    slots = _slots(pool, counts, policy, len(tasks))
    if slots.agent.size == 0:
        return 0.0
    weight = scores[:, slots.agent]
    rows, cols = _maximise(weight, weight >= policy.min_confidence - _TOLERANCE)
    return float(weight[rows, cols].sum())


@dataclass(frozen=True, slots=True)
class Quality:
    """An assignment's total match score against the best possible one."""

    total: float
    optimal: float

    @property
    def ratio(self) -> float:
        """total / optimal, 1.0 when nothing could be assigned at all."""
        return self.total / self.optimal if self.optimal > 0 else 1.0


def assignment_quality(
    assignment: Mapping[str, str],
    tasks: Sequence[TaskSpec],
    agents: Collection[AgentInfo],
    policy: AllocationPolicy,
    active: Mapping[str, int] | None = None,
) -> Quality:
    """How good ``assignment`` ({task id: agent id}) is: its total match score over
    :func:`optimal_total` for the same tasks, agents and loads.

    The assignment is taken as given: one that breaks the eligibility rules (an agent over its
    slots, a score under min_confidence) can score above the optimum, so give it valid ones.

    Raises:
        InvalidInputError: the assignment names a task or an agent not in ``tasks``/``agents``.
    """
    by_task = {t.id: t for t in tasks}
    by_agent = {a.id: a for a in agents}
    total = 0.0
    for task_id, agent_id in assignment.items():
        task, agent = by_task.get(task_id), by_agent.get(agent_id)
        if task is None or agent is None:
            raise InvalidInputError(
                f"assignment names an unknown task or agent: {task_id!r} -> {agent_id!r}",
                field="assignment",
            )
        total += match_score(agent.capabilities, task.required)
    return Quality(total, optimal_total(tasks, agents, policy, active))
