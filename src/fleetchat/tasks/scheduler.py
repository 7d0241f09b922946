"""The scheduler: offers queued tasks to agents and enforces every timeout. Leader only.

It keeps a view of the unfinished tasks (loaded from the Store when this node starts leading,
then kept current by the TaskService's change notices) and the number each agent holds, which
is the agent's load. A pass over the queue runs whenever something may have freed or added
work (a submission, a finished or failed attempt, an agent coming online); it allocates with
the task's mode and offers each chosen agent its task in its inbox (a ``task`` message).
Every change it makes goes through :meth:`TaskService.change` (compare-and-set), so a deposed
leader acting on an old view changes nothing.

This module holds :class:`Scheduler` itself: its lifecycle, keeping the view and the loads,
and the passes (the default ``best`` mode and the offer). Its timers (offer window,
start-to-close, heartbeat, schedule-to-start, auction bidding, retry backoff) and an agent
going offline are in :mod:`fleetchat.tasks.scheduler_timers`; batch, auctions and
pre-emption in :mod:`fleetchat.tasks.scheduling_modes`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fleetchat.background import Background
from fleetchat.chat.metrics import Histogram
from fleetchat.errors import FleetchatError
from fleetchat.models import AgentInfo
from fleetchat.tasks import lifecycle
from fleetchat.tasks.allocator import pick_best
from fleetchat.tasks.performance import Outcome, update_performance
from fleetchat.tasks.policy import TaskSpec
from fleetchat.tasks.records import HOLDING_STATES, TaskEvent, TaskRecord
from fleetchat.tasks.scheduler_timers import SchedulerTimers
from fleetchat.types import PRIORITY_RANK, Priority

if TYPE_CHECKING:
    from fleetchat.registry.agents import AgentRegistry, EventStream
    from fleetchat.tasks.service import TaskService
    from fleetchat.types import Clock, TimerHandle

__all__ = ["Scheduler", "Send"]

log = logging.getLogger(__name__)

Send = Callable[[str, dict[str, Any], Priority], Awaitable[None]]
"""Post a task notice (offer, cancel, call for proposals) to an agent's inbox, or to a
channel when the name has no ``@``."""
_RETRYABLE_FAILURES = ("failed", "start_to_close", "heartbeat")
_NOT_COUNTED = ("preempted", "cancelled")
_RESYNC_INTERVAL = 5.0  # seconds between full reads of the unfinished tasks (a backstop)


class Scheduler(SchedulerTimers):
    """Runs on the leading node between :meth:`start` and :meth:`stop`."""

    def _reconfigured(self) -> None:
        self.settings = self._service.settings
        self.policy = self._service.policy

    def __init__(
        self, service: TaskService, registry: AgentRegistry, clock: Clock, send: Send
    ) -> None:
        self._service = service
        self._registry = registry
        self._clock = clock
        self._send = send
        self.settings = service.settings
        self.policy = service.policy
        service.reconfigured.append(self._reconfigured)
        self._view: dict[str, TaskRecord] = {}
        self._holders: dict[str, str] = {}  # task id -> the agent holding it
        self._load: dict[str, int] = {}  # agent -> tasks it holds
        self._timers: dict[str, TimerHandle] = {}
        self._work = Background(log, "scheduler work")
        self._events: EventStream | None = None
        self._running = False
        self._kicked = False
        self._passing = False
        self.passes = 0
        self.decisions = Histogram()
        """Seconds each allocation decision took (``/metrics``)."""

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._service.on_change = self.observe
        self._service.on_remote_change = self._changed_elsewhere
        self._events = self._registry.events()
        self._spawn(self._watch_agents(self._events))
        await self._resync()
        self._spawn(self._resync_loop())
        self.kick()

    async def _resync(self) -> None:
        """Bring the view in line with the store: a change made on another node reaches the
        leader by a broadcast, which may be lost; this catches it up."""
        active = {t.id: t for t in await self._service.load_active()}
        for task in active.values():
            self.observe(task)
        for task_id in [i for i in self._view if i not in active]:
            await self._reload(task_id)  # finished meanwhile: drops out of the view

    async def _resync_loop(self) -> None:
        while self._running:
            await self._clock.sleep(_RESYNC_INTERVAL)
            try:
                await self._resync()
            except FleetchatError as exc:
                log.warning("scheduler resync failed", extra={"error": exc.code})

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._service.on_change = None
        self._service.on_remote_change = None
        if self._events is not None:
            self._events.close()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self._work.cancel()
        self._view.clear()
        self._holders.clear()
        self._load.clear()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._work.spawn(coro)

    def load(self, agent_id: str) -> int:
        """Tasks ``agent_id`` holds (offered, accepted or running)."""
        return self._load.get(agent_id, 0)

    def view(self) -> list[TaskRecord]:
        return list(self._view.values())

    # -- keeping the view -----------------------------------------------------------------

    def observe(self, task: TaskRecord) -> None:
        """A saved change of ``task`` (by anyone): update the view, timers and loads."""
        if not self._running:
            return
        old = self._view.get(task.id)
        if old is not None and old.version >= task.version:
            return
        if task.terminal:
            self._view.pop(task.id, None)
        else:
            self._view[task.id] = task
        self._hold(task.id, task.holder if task.state in HOLDING_STATES else None)
        self._arm(task)
        if old is not None and old.state in HOLDING_STATES and task.state not in HOLDING_STATES:
            self._ended(old, task)
        if task.state == "queued" or task.terminal:
            self.kick()

    def _changed_elsewhere(self, task_id: str, version: int) -> None:
        known = self._view.get(task_id)
        if known is None or known.version < version:
            self._spawn(self._reload(task_id))

    async def _reload(self, task_id: str) -> None:
        task = await self._service.find(task_id)
        if task is not None:
            self.observe(task)

    def _hold(self, task_id: str, agent: str | None) -> None:
        before = self._holders.get(task_id)
        if before == agent:
            return
        for who, delta in ((before, -1), (agent, +1)):
            if who is None:
                continue
            self._load[who] = max(self._load.get(who, 0) + delta, 0)
            if who in self._registry:
                self._registry.set_load(who, self._load[who])
        if agent is None:
            self._holders.pop(task_id, None)
        else:
            self._holders[task_id] = agent

    def _ended(self, old: TaskRecord, new: TaskRecord) -> None:
        """An attempt ended: tell a cancelled holder to stop; score the agent's work."""
        agent = old.holder
        last = new.attempts[-1] if new.attempts else None
        if agent is None or last is None:
            return
        if new.state == "cancelled" or last.outcome in ("start_to_close", "heartbeat"):
            reason = new.reason or last.outcome or "cancelled"
            self._spawn(self._stop_holder(agent, new.id, old.attempt, reason))
        if last.outcome == "succeeded" or last.outcome in _RETRYABLE_FAILURES:
            took = None if last.accepted_at is None else (last.ended_at or 0) - last.accepted_at
            outcome = Outcome(last.outcome == "succeeded", max(took or 0.0, 0.0), new.estimate)
            self._spawn(self._score(agent, outcome))

    async def _score(self, agent_id: str, outcome: Outcome) -> None:
        if agent_id in self._registry:
            current = self._registry.get(agent_id).performance
            await self._registry.update(
                agent_id, performance=round(update_performance(current, outcome), 6)
            )

    async def _stop_holder(self, agent: str, task_id: str, attempt: int, reason: str) -> None:
        """Tell ``agent`` to stop working on ``task_id``: ahead of anything else queued for
        it (critical priority), since it should stop at once."""
        notice = {"action": "cancel", "task": task_id, "attempt": attempt, "reason": reason}
        await self._notify("@" + agent, notice, Priority.CRITICAL)

    async def _notify(self, target: str, body: dict[str, Any], priority: Priority) -> None:
        try:
            await self._send(target, body, priority)
        except FleetchatError as exc:
            log.warning("task notice not sent", extra={"target": target, "error": exc.code})

    # -- allocation -----------------------------------------------------------------------

    def kick(self) -> None:
        """Run a pass over the queue soon (once, however many kicks come first). One pass
        runs at a time: a kick during a pass makes one more pass after it, on a fresh view."""
        if not self._running or self._kicked:
            return
        self._kicked = True
        if not self._passing:
            asyncio.get_running_loop().call_soon(self._spawn, self._passes())

    async def _passes(self) -> None:
        self._passing = True
        try:
            while self._kicked and self._running:
                self._kicked = False
                await self._pass()
        finally:
            self._passing = False

    async def _pass(self) -> None:
        self.passes += 1
        now = self._clock.time()
        queued = sorted(
            (
                t
                for t in self._view.values()
                if t.state == "queued" and t.not_before <= now and t.auction_until is None
            ),
            key=lambda t: (PRIORITY_RANK[t.priority], t.created_at, t.id),
        )
        if not queued:
            return
        agents = self._registry.list()
        load = dict(self._load)
        batch = [t for t in queued if t.mode == "batch" and t.agent_id is None]
        if len(batch) > 1:
            await self._batch(batch, agents, load)
            queued = [t for t in queued if t not in batch]
        # Only agents with room can take anything: the pass ends when none is left (a long
        # queue then costs nothing per pass), and each decision looks at those only.
        free = [a for a in agents if self._has_room(a, load)]
        for task in queued:
            if not free and not (self.settings.preemption and task.priority == Priority.CRITICAL):
                break
            current = self._view.get(task.id)
            if current is None or current.version != task.version:
                continue  # changed during this pass (an offer waited for its commit)
            if task.mode == "auction" and task.agent_id is None and not task.auctions:
                await self._open_auction(task, agents, load)
                continue
            agent = self._next_bid(task, free, load) if task.bids else None
            started = time.perf_counter()
            agent = agent or self._choose(task, free, load)
            self.decisions.record(time.perf_counter() - started)
            if agent is not None:
                load[agent] = load.get(agent, 0) + 1
                free = [a for a in free if a.id != agent or self._has_room(a, load)]
                await self._offer(task, agent)
            elif self.settings.preemption and task.priority == Priority.CRITICAL:
                await self._preempt(task, agents)

    def _has_room(self, agent: AgentInfo, load: dict[str, int]) -> bool:
        return (
            agent.online and not agent.draining and _load(agent, load) < self.policy.load_threshold
        )

    def _choose(self, task: TaskRecord, free: list[AgentInfo], load: dict[str, int]) -> str | None:
        """The agent (among ``free``, those with room) to offer ``task`` to now: preferably one
        that has not tried it yet."""
        pool = free if task.agent_id is None else [a for a in free if a.id == task.agent_id]
        if not pool:
            return None
        if not task.required:  # for a named agent only
            return pool[0].id
        spec = TaskSpec(task.id, task.required, task.priority)
        tried = {a.agent for a in task.attempts if a.outcome not in _NOT_COUNTED}
        fresh = [a for a in pool if a.id not in tried]
        found = pick_best(spec, fresh, self.policy, load) if fresh else None
        if found is not None:
            return found[0].id
        last = task.attempts[-1].ended_at if task.attempts else None
        if last is not None and self._clock.time() - last < self.settings.retry_backoff:
            self._arm_later(task, last + self.settings.retry_backoff)
            return None
        again = pick_best(spec, pool, self.policy, load) if len(fresh) < len(pool) else None
        return None if again is None else again[0].id

    async def _offer(self, task: TaskRecord, agent: str) -> None:
        now = self._clock.time()

        def fn(t: TaskRecord) -> tuple[TaskRecord, TaskEvent | None]:
            if t.state != "queued" or t.version != task.version:
                return t, None  # changed since the pass read it: the next pass decides
            return lifecycle.offer(t, agent, now)

        try:
            offered = await self._service.change(task.id, fn, current=task)
        except FleetchatError as exc:
            log.warning("offer not saved", extra={"task": task.id, "error": exc.code})
            return
        if offered.state == "offered" and offered.holder == agent:
            await self._notify("@" + agent, _offer_body(offered), offered.priority)


def _load(agent: AgentInfo, load: dict[str, int]) -> float:
    return load.get(agent.id, 0) / max(agent.capacity, 1)


def _offer_body(task: TaskRecord) -> dict[str, Any]:
    t = task.timeouts
    return {
        "action": "offer",
        "task": task.id,
        "attempt": task.attempt,
        "payload": task.payload,
        "required": task.required,
        "priority": str(task.priority),
        "start_to_close": t.start_to_close,
        "heartbeat": t.heartbeat,
        "offer_deadline": task.deadline,
        "estimate": task.estimate,
    }
