"""What agents report about the tasks they were offered or hold.

``AgentReports`` is a mixin of :class:`fleetchat.tasks.service.TaskService`: each report is a
transition of :mod:`fleetchat.tasks.lifecycle` applied by compare-and-set (``change``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.errors import ConflictError, InvalidInputError, TaskNotHeldError
from fleetchat.tasks import lifecycle
from fleetchat.tasks.records import BidRecord, TaskEvent, TaskRecord

if TYPE_CHECKING:
    from fleetchat.config import TaskSettings
    from fleetchat.types import Clock

__all__ = ["AgentReports"]

Events = TaskEvent | list[TaskEvent] | None
Change = Callable[[TaskRecord], tuple[TaskRecord, Events]]


class AgentReports:
    """accept, reject, start, progress, complete, fail, bid."""

    settings: TaskSettings
    _clock: Clock

    if TYPE_CHECKING:

        async def get(self, task_id: str) -> TaskRecord: ...

        async def change(
            self, task_id: str, fn: Change, current: TaskRecord | None = None
        ) -> TaskRecord: ...

    async def accept(self, task_id: str, agent: str, attempt: int | None = None) -> TaskRecord:
        now = self._clock.time()
        return await self.change(task_id, lambda t: lifecycle.accept(t, agent, attempt, now))

    async def reject(
        self, task_id: str, agent: str, attempt: int | None = None, reason: str | None = None
    ) -> TaskRecord:
        now = self._clock.time()

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            lifecycle.check_holder(t, agent, attempt, {"offered"})
            return lifecycle.reject(t, agent, "rejected", reason, now)

        return await self.change(task_id, fn)

    async def start(self, task_id: str, agent: str, attempt: int | None = None) -> TaskRecord:
        """The holder starts working; from ``offered`` this accepts it too, in one save with
        both transitions recorded."""
        now = self._clock.time()

        def fn(t: TaskRecord) -> tuple[TaskRecord, Events]:
            if t.state == "offered" and t.holder == agent:
                accepted, first = lifecycle.accept(t, agent, attempt, now)
                running, second = lifecycle.start(accepted, agent, attempt, now)
                return running, [first, second]
            return lifecycle.start(t, agent, attempt, now)

        return await self.change(task_id, fn)

    async def progress(
        self, task_id: str, agent: str, attempt: int | None = None, value: float | None = None
    ) -> TaskRecord:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
        ):
            raise InvalidInputError("progress must be a number in 0..1", field="progress")
        now = self._clock.time()
        return await self.change(
            task_id, lambda t: (lifecycle.progress(t, agent, attempt, value, now), None)
        )

    async def complete(
        self, task_id: str, agent: str, attempt: int | None = None, result: Any = None
    ) -> TaskRecord:
        """The holder's result: the task succeeds. Exactly one result is accepted; a late or
        repeated one is dropped, counted on the task (``dropped_results``), and answered with
        TaskNotHeldError, except the holder repeating its own accepted result (answered with
        the task, for a client that retries after a lost answer)."""
        now = self._clock.time()
        try:
            return await self.change(
                task_id, lambda t: lifecycle.complete(t, agent, attempt, result, now)
            )
        except TaskNotHeldError:
            task = await self._count_dropped(task_id)
            last = task.attempts[-1] if task.attempts else None
            repeated = last is not None and last.agent == agent and attempt in (None, task.attempt)
            if task.state == "succeeded" and repeated:
                return task
            raise

    async def fail(
        self,
        task_id: str,
        agent: str,
        attempt: int | None = None,
        error: str | None = None,
        *,
        retry: bool = True,
    ) -> TaskRecord:
        """The holder could not do it: retried on another agent within the budget (not at all
        with ``retry=False``), else failed."""
        now = self._clock.time()
        reason = None if error is None else str(error)[:500]

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            lifecycle.check_holder(t, agent, attempt, {"offered", "accepted", "running"})
            if not retry:
                t = msgspec.structs.replace(t, retries_used=t.max_retries)
            return lifecycle.fail_attempt(
                t, "failed", reason, now, self.settings.backoff(t.retries_used + 1)
            )

        try:
            return await self.change(task_id, fn)
        except TaskNotHeldError:
            await self._count_dropped(task_id)
            raise

    async def _count_dropped(self, task_id: str) -> TaskRecord:
        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            return msgspec.structs.replace(t, dropped_results=t.dropped_results + 1), None

        return await self.change(task_id, fn)

    async def bid(self, task_id: str, agent: str, cost: float, eta: float) -> TaskRecord:
        """A bid for a task being auctioned (its call for proposals is open)."""
        for value, name in ((cost, "cost"), (eta, "eta")):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise InvalidInputError(f"{name} must be a non-negative number", field=name)
        now = self._clock.time()

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            if t.state != "queued" or t.auction_until is None or now > t.auction_until:
                raise ConflictError(f"task {t.id!r} takes no bids now", task=t.id, state=t.state)
            bids = [b for b in t.bids if b.agent != agent]
            bids.append(BidRecord(agent=agent, cost=float(cost), eta=float(eta), at=now))
            return msgspec.structs.replace(t, bids=bids), None

        return await self.change(task_id, fn)
