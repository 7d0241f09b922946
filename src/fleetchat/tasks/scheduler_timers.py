"""The scheduler's timers, and what it does when an agent goes away. Leader only.

``SchedulerTimers`` is a mixin of :class:`fleetchat.tasks.scheduler.Scheduler`, built on
:class:`fleetchat.tasks.scheduling_modes.SchedulingModes` (the end of an auction's bidding is
one of its timers). One timer per task, on the injected clock, at the earliest of: the offer
window (the next candidate gets it), start-to-close and heartbeat (the attempt fails and is
retried with backoff), schedule-to-start (the task times out), the end of an auction's bidding,
and a retry's backoff; when it fires, what ran out is decided again on the stored record. An
agent that goes offline (missed heartbeats, or its last connection closed) has its tasks
retried elsewhere at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from fleetchat.errors import FleetchatError
from fleetchat.tasks import lifecycle
from fleetchat.tasks.records import HOLDING_STATES, TaskEvent, TaskRecord
from fleetchat.tasks.scheduling_modes import SchedulingModes

if TYPE_CHECKING:
    from fleetchat.registry.agents import EventStream
    from fleetchat.types import TimerHandle

__all__ = ["SchedulerTimers"]

log = logging.getLogger(__name__)


class SchedulerTimers(SchedulingModes):
    """Arms each task's timer, applies what ran out, and takes work back from lost agents."""

    _timers: dict[str, TimerHandle]
    _holders: dict[str, str]
    _running: bool

    if TYPE_CHECKING:

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        def observe(self, task: TaskRecord) -> None: ...

    # -- timers ---------------------------------------------------------------------------

    def _due_at(self, task: TaskRecord) -> float | None:
        times = []
        if task.deadline is not None:
            times.append(task.deadline)
        if task.state == "queued":
            if task.not_before > self._clock.time():
                times.append(task.not_before)
            if task.auction_until is not None:
                times.append(task.auction_until)
        s2s = task.timeouts.schedule_to_start
        if s2s is not None and task.state in ("queued", "offered"):
            times.append(task.created_at + s2s)
        return min(times) if times else None

    def _arm(self, task: TaskRecord) -> None:
        timer = self._timers.pop(task.id, None)
        if timer is not None:
            timer.cancel()
        due = None if task.terminal else self._due_at(task)
        if due is not None:
            delay = max(due - self._clock.time(), 0.0)
            self._timers[task.id] = self._clock.call_later(delay, lambda: self._due(task.id))

    def _arm_later(self, task: TaskRecord, at: float) -> None:
        if task.id not in self._timers:
            delay = max(at - self._clock.time(), 0.0)
            self._timers[task.id] = self._clock.call_later(delay, lambda: self._due(task.id))

    def _due(self, task_id: str) -> None:
        self._timers.pop(task_id, None)
        if self._running:
            self._spawn(self._expire(task_id))

    async def _expire(self, task_id: str) -> None:
        """Whatever ran out for ``task_id``, decided again on the stored record."""
        now = self._clock.time()

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            s2s = t.timeouts.schedule_to_start
            if s2s is not None and t.state in ("queued", "offered") and now >= t.created_at + s2s:
                return lifecycle.time_out(t, "schedule_to_start", now)
            if t.deadline is not None and now >= t.deadline:
                if t.state == "offered":
                    return lifecycle.reject(t, None, "offer_timeout", None, now)
                if t.state in ("accepted", "running"):
                    accepted = t.attempts[-1].accepted_at or now
                    late = now >= accepted + t.timeouts.start_to_close - 1e-9
                    outcome = "start_to_close" if late else "heartbeat"
                    backoff = self.settings.backoff(t.retries_used + 1)
                    return lifecycle.fail_attempt(t, outcome, None, now, backoff)
            return t, None

        try:
            task = await self._service.change(task_id, fn)
        except FleetchatError as exc:
            log.warning("task timeout not applied", extra={"task": task_id, "error": exc.code})
            return
        self.observe(task)  # unchanged here, maybe changed elsewhere: the view catches up
        if task.state == "queued" and task.auction_until is not None and now >= task.auction_until:
            await self._close_auction(task)
        elif task.state == "queued":
            self._arm(task)
            self.kick()

    # -- agents ---------------------------------------------------------------------------

    async def _watch_agents(self, events: EventStream) -> None:
        async for event in events:
            if event.kind in ("offline", "deregistered"):
                held = [tid for tid, who in self._holders.items() if who == event.agent_id]
                for task_id in held:
                    self._spawn(self.agent_lost(task_id, event.agent_id))
            else:
                self.kick()  # online, registered, updated: maybe room for queued work

    async def agent_lost(self, task_id: str, agent_id: str) -> None:
        """The holder went away: its attempt fails and the task is retried at once."""
        now = self._clock.time()

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            if t.holder != agent_id or t.state not in HOLDING_STATES:
                return t, None
            return lifecycle.fail_attempt(t, "agent_lost", f"{agent_id} went offline", now, 0.0)

        with contextlib.suppress(FleetchatError):
            await self._service.change(task_id, fn)
