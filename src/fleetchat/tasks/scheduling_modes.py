"""The scheduler's other allocation modes: batch, auctions, and pre-emption.

``SchedulingModes`` is a mixin of :class:`fleetchat.tasks.scheduler.Scheduler`: the default
``best`` mode is the scheduler's own pass; these run from it when a task (or the settings) asks.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.errors import FleetchatError
from fleetchat.models import AgentInfo
from fleetchat.tasks import lifecycle
from fleetchat.tasks.allocator import decide
from fleetchat.tasks.auction import Bid, rank_bids
from fleetchat.tasks.policy import AllocationPolicy, TaskSpec, Verdict
from fleetchat.tasks.records import HOLDING_STATES, TaskEvent, TaskRecord
from fleetchat.types import PRIORITY_RANK, Priority

if TYPE_CHECKING:
    from fleetchat.config import TaskSettings
    from fleetchat.registry.agents import AgentRegistry
    from fleetchat.tasks.service import TaskService
    from fleetchat.types import Clock

__all__ = ["SchedulingModes"]


class SchedulingModes:
    """Batch assignment, auctions (call for proposals, bids, fall-backs) and pre-emption."""

    settings: TaskSettings
    policy: AllocationPolicy
    _service: TaskService
    _registry: AgentRegistry
    _clock: Clock
    _view: dict[str, TaskRecord]
    _load: dict[str, int]

    if TYPE_CHECKING:

        async def _offer(self, task: TaskRecord, agent: str) -> None: ...

        async def _notify(self, target: str, body: dict[str, Any], priority: Priority) -> None: ...

        async def _stop_holder(
            self, agent: str, task_id: str, attempt: int, reason: str
        ) -> None: ...

        def kick(self) -> None: ...

    async def _batch(
        self, tasks: list[TaskRecord], agents: list[AgentInfo], load: dict[str, int]
    ) -> None:
        from fleetchat.tasks.batch import batch_assign  # scipy: loaded on first use

        specs = [TaskSpec(t.id, t.required, t.priority) for t in tasks]
        policy = AllocationPolicy(
            mode="batch",
            load_threshold=self.policy.load_threshold,
            min_confidence=self.policy.min_confidence,
        )
        by_id = {t.id: t for t in tasks}
        for decision in batch_assign(specs, agents, policy, load):
            if decision.agent_id is not None:
                load[decision.agent_id] = load.get(decision.agent_id, 0) + 1
                await self._offer(by_id[decision.task_id], decision.agent_id)

    # -- auctions -------------------------------------------------------------------------

    async def _open_auction(
        self, task: TaskRecord, agents: list[AgentInfo], load: dict[str, int]
    ) -> None:
        """Call for proposals: eligible agents (or the task's channel) are asked to bid."""
        now = self._clock.time()
        closes = now + self.settings.auction_window

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            if t.state != "queued" or t.auctions:
                return t, None
            return msgspec.structs.replace(t, auction_until=closes, bids=[], auctions=1), None

        opened = await self._service.change(task.id, fn)
        if opened.auction_until != closes:
            return
        body = {
            "action": "cfp",
            "task": task.id,
            "required": task.required,
            "payload": task.payload,
            "closes_at": closes,
        }
        if task.channel is not None:
            await self._notify(task.channel, body, task.priority)
            return
        spec = TaskSpec(task.id, task.required, task.priority)
        for agent in agents:
            if decide(spec, [agent], self.policy, load).verdict is Verdict.ASSIGNED:
                await self._notify("@" + agent.id, body, task.priority)

    def _next_bid(
        self, task: TaskRecord, agents: list[AgentInfo], load: dict[str, int]
    ) -> str | None:
        """The best bid whose agent is eligible now and has not had the task yet."""
        spec = TaskSpec(task.id, task.required, task.priority)
        tried = {a.agent for a in task.attempts}
        bids = [Bid(b.agent, b.cost, b.eta) for b in task.bids if b.agent not in tried]
        ranked = rank_bids(spec, bids, agents, self.policy, load)
        return ranked[0].agent_id if ranked else None

    async def _close_auction(self, task: TaskRecord) -> None:
        """Bidding is over: offer to the best bid; declined offers go to the next bids in
        order, then to the best-mode choice."""
        winner = self._next_bid(task, self._registry.list(), self._load)

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            if t.state != "queued" or t.auction_until is None:
                return t, None
            # Keep the bids (the fall-back order) but take no more.
            return msgspec.structs.replace(t, auction_until=None), None

        closed = await self._service.change(task.id, fn)
        if closed.state == "queued" and winner is not None:
            await self._offer(closed, winner)
        else:
            self.kick()

    # -- pre-emption ----------------------------------------------------------------------

    async def _preempt(self, task: TaskRecord, agents: list[AgentInfo]) -> None:
        """A critical task found every suitable agent busy: the lowest-priority task running on
        a suitable agent goes back to the queue (its retry budget untouched)."""
        spec = TaskSpec(task.id, task.required, task.priority)
        idle = dict.fromkeys(self._load, 0)
        suitable = {
            a.id for a in agents if decide(spec, [a], self.policy, idle).verdict is Verdict.ASSIGNED
        }
        victims = [
            t
            for t in self._view.values()
            if t.holder in suitable
            and t.state in HOLDING_STATES
            and PRIORITY_RANK[t.priority] > PRIORITY_RANK[task.priority]
        ]
        if not victims:
            return
        victim = max(victims, key=lambda t: (PRIORITY_RANK[t.priority], t.created_at))
        now = self._clock.time()

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            if t.version != victim.version:
                return t, None
            return lifecycle.fail_attempt(t, "preempted", f"for critical task {task.id}", now, 0)

        with contextlib.suppress(FleetchatError):
            moved = await self._service.change(victim.id, fn)
            if moved.state == "queued" and victim.holder is not None:
                # The holder hears it must stop before the critical task is offered to it.
                await self._stop_holder(victim.holder, victim.id, victim.attempt, "preempted")
