"""TaskService: submit, read and cancel tasks; what agents report about them.

Any hub node serves these calls: each is a read, a pure transition
(:mod:`fleetchat.tasks.lifecycle`) and a compare-and-set save in the Store, retried from a fresh
read when another node changed the task first; so exactly one result is accepted per task. A
saved transition is published on ``$tasks`` and told to the scheduler, which runs on the
leading node (:mod:`fleetchat.tasks.scheduler`): directly when it runs here, over a bus
broadcast otherwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.errors import (
    ConflictError,
    InvalidInputError,
    TaskNotFoundError,
    UnsatisfiableError,
)
from fleetchat.registry.matching import check_required
from fleetchat.tasks import lifecycle
from fleetchat.tasks.allocator import could_ever_match
from fleetchat.tasks.policy import AllocationPolicy, TaskSpec, check_mode, unknown_capabilities
from fleetchat.tasks.records import TaskEvent, TaskRecord, Timeouts
from fleetchat.tasks.reports import AgentReports
from fleetchat.types import Priority, check_agent_id, check_channel_name, new_id, parse_priority

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus, Store
    from fleetchat.config import RegistrySettings, TaskSettings
    from fleetchat.ops.gate import AdmissionGate
    from fleetchat.ops.tracing import HubTracer
    from fleetchat.registry.agents import AgentRegistry
    from fleetchat.types import Clock

__all__ = ["TASKS_CHANNEL", "TaskService"]

log = logging.getLogger(__name__)

TASKS_CHANNEL = "$tasks"
"""Every task transition is published here (a system channel agents and tools may join)."""
_BROADCAST = "tasks"
_encode = msgspec.json.Encoder().encode
_CAS_TRIES = 50

Events = TaskEvent | list[TaskEvent] | None
Change = Callable[[TaskRecord], tuple[TaskRecord, Events]]


def _seconds(value: object, field: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInputError(f"{field} must be a positive number of seconds", field=field)
    return float(value)


def _or(value: object, default: float, field: str) -> float:
    return default if value is None else float(_seconds(value, field, optional=False) or default)


class TaskService(AgentReports):
    """Tasks through the Store, on any node. Built and owned by the Hub."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: AgentRegistry,
        clock: Clock,
        settings: TaskSettings,
        registry_settings: RegistrySettings,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._clock = clock
        self.settings = settings
        self.policy = AllocationPolicy(
            load_threshold=registry_settings.load_threshold,
            min_confidence=registry_settings.min_confidence,
        )
        self.on_change: Callable[[TaskRecord], None] | None = None
        """Set by the scheduler while it runs on this node: told of every change saved here."""
        self.on_remote_change: Callable[[str, int], None] | None = None
        """Set by the scheduler while it runs here: told (task id, version) of every change
        another node saved."""
        self.watchers: list[Callable[[TaskRecord], None]] = []
        """Told of every change saved on this node (the workflow engine listens here)."""
        self.remote_watchers: list[Callable[[str, int], None]] = []
        """Told (task id, version) of changes other nodes broadcast."""
        self.publish_event: Callable[[TaskEvent], None] = lambda event: None
        """Set by the Hub: publishes a transition on ``$tasks``."""
        self.reconfigured: list[Callable[[], None]] = []
        """Told when the settings change (the scheduler re-reads them)."""
        self.gate: AdmissionGate | None = None
        """Set by the Hub: refuses new low-priority tasks while the hub is degraded."""
        self.tracer: HubTracer | None = None
        """Set by the Hub when tracing is on: each submit is a ``task.submit`` span."""
        bus.on_broadcast(_BROADCAST, self._on_broadcast)

    def reconfigure(self, settings: TaskSettings, registry_settings: RegistrySettings) -> None:
        """New settings, live (the scheduler shares them)."""
        self.settings = settings
        self.policy = AllocationPolicy(
            load_threshold=registry_settings.load_threshold,
            min_confidence=registry_settings.min_confidence,
        )
        for listener in self.reconfigured:
            listener()

    # -- submit and read ----------------------------------------------------------------------

    async def submit(
        self,
        required: Mapping[str, float] | None = None,
        *,
        payload: Any = None,
        priority: Priority | str = Priority.NORMAL,
        idempotency_key: str | None = None,
        mode: str | None = None,
        agent_id: str | None = None,
        channel: str | None = None,
        schedule_to_start: float | None = None,
        start_to_close: float | None = None,
        heartbeat: float | None = None,
        offer_timeout: float | None = None,
        max_retries: int | None = None,
        estimate: float | None = None,
        submitted_by: str = "",
        must_be_satisfiable: bool | None = None,
        traceparent: str | None = None,
    ) -> TaskRecord:
        """Queue a task for the agents that have ``required`` ({capability: weight}), or for
        ``agent_id`` only. A second submit with the same ``idempotency_key`` returns the first
        task and changes nothing.

        Raises:
            InvalidInputError: bad requirements, priority, mode, timeouts or retry budget.
            DegradedError: the hub is degraded and refuses this priority for now.
            UnsatisfiableError: no registered agent could ever take it (unless
                ``tasks.reject_unsatisfiable`` is off, or ``must_be_satisfiable`` is False:
                the workflow engine's tasks wait for an agent that can).

        With tracing on, the task's trace continues ``traceparent`` (W3C), else the current
        context, and its offers carry it (docs/tracing.md).
        """
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 200:
                raise InvalidInputError(
                    "idempotency_key must be 1-200 characters", field="idempotency_key"
                )
            existing = await self._store.find_task(idempotency_key)
            if existing is not None:
                return existing
        if self.gate is not None and not submitted_by.startswith("workflow:"):
            # A running workflow's steps go on: refusing them would fail work already begun.
            self.gate.check(parse_priority(priority))
        task = self._build(
            required,
            payload=payload,
            priority=priority,
            idempotency_key=idempotency_key,
            mode=mode,
            agent_id=agent_id,
            channel=channel,
            timeouts=Timeouts(
                schedule_to_start=_seconds(schedule_to_start, "schedule_to_start", optional=True),
                start_to_close=_or(start_to_close, self.settings.start_to_close, "start_to_close"),
                heartbeat=_seconds(heartbeat, "heartbeat", optional=True),
                offer=_or(offer_timeout, self.settings.offer_timeout, "offer_timeout"),
            ),
            max_retries=max_retries,
            estimate=_seconds(estimate, "estimate", optional=True),
            submitted_by=submitted_by,
            check=self.settings.reject_unsatisfiable
            if must_be_satisfiable is None
            else must_be_satisfiable,
        )
        span = None if self.tracer is None else self.tracer.submitting(task, traceparent)
        try:
            saved = await self._store.save_task(task, 0)
        finally:
            if span is not None:
                span.end()
        if not saved:
            if idempotency_key is not None:  # submitted at the same moment elsewhere
                existing = await self._store.find_task(idempotency_key)
                if existing is not None:
                    return existing
            raise ConflictError(f"task {task.id!r} exists", task=task.id)  # pragma: no cover
        task = msgspec.structs.replace(task, version=1)
        self._saved(task, TaskEvent(task=task.id, state="queued", at=task.created_at))
        return task

    def _build(
        self,
        required: Mapping[str, float] | None,
        *,
        max_retries: int | None,
        agent_id: str | None,
        mode: str | None,
        priority: Priority | str,
        check: bool,
        **fields: Any,
    ) -> TaskRecord:
        if agent_id is not None:
            check_agent_id(agent_id, "agent_id")
        if fields.get("channel") is not None:
            check_channel_name(fields["channel"])
        needs = check_required(required) if required or agent_id is None else {}
        retries = self.settings.max_retries if max_retries is None else max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise InvalidInputError("max_retries must be an integer in 0..100", field="max_retries")
        now = self._clock.time()
        task = TaskRecord(
            id=new_id(),
            required=needs,
            priority=parse_priority(priority),
            mode=check_mode(mode or self.settings.mode),
            agent_id=agent_id,
            max_retries=retries,
            created_at=now,
            updated_at=now,
            **fields,
        )
        if check:
            self._check_satisfiable(task)
        return task

    def _check_satisfiable(self, task: TaskRecord) -> None:
        agents = self._registry.list()
        if task.agent_id is not None:
            agents = [a for a in agents if a.id == task.agent_id]
            if not agents:
                raise UnsatisfiableError(
                    f"no agent {task.agent_id!r} is registered", agent_id=task.agent_id
                )
            if not task.required:
                return
        spec = TaskSpec(task.id, task.required, task.priority)
        if not could_ever_match(spec, agents, self.policy):
            unknown = unknown_capabilities(spec, agents)
            why = (
                f"no registered agent has {', '.join(unknown)}"
                if unknown
                else f"no registered agent matches {dict(task.required)} with confidence "
                f"{self.policy.min_confidence:g} or more"
            )
            raise UnsatisfiableError(why, unknown=",".join(unknown))

    async def get(self, task_id: str) -> TaskRecord:
        task = await self._store.load_task(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise TaskNotFoundError(f"no task {task_id!r}", task=task_id)
        return task

    async def find(self, task_id: str) -> TaskRecord | None:
        return await self._store.load_task(task_id)

    async def find_by_key(self, idempotency_key: str) -> TaskRecord | None:
        """The task submitted with ``idempotency_key``, if any."""
        return await self._store.find_task(idempotency_key)

    async def load_active(self) -> list[TaskRecord]:
        """Every unfinished task (queued or held), oldest first."""
        return await self._store.load_tasks(active=True)

    async def list(self, *, state: str | None = None, limit: int = 100) -> list[TaskRecord]:
        """Tasks oldest first (``state``: only those; ``active``: queued or held)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidInputError("limit must be 1..10000", field="limit")
        if state == "active":
            return await self._store.load_tasks(active=True, limit=limit)
        return await self._store.load_tasks(state=state, limit=limit)

    # -- changes ------------------------------------------------------------------------------

    async def cancel(self, task_id: str, reason: str | None = None) -> TaskRecord:
        """Cancel a task that has not finished; its holder is told to stop."""
        now = self._clock.time()
        return await self.change(task_id, lambda t: lifecycle.cancel(t, reason, now))

    async def change(
        self, task_id: str, fn: Change, current: TaskRecord | None = None
    ) -> TaskRecord:
        """Apply ``fn`` to the stored task by compare-and-set, from a fresh read each time
        another writer came first (the first try starts from ``current`` when the caller holds
        a recent copy, saving a read). ``fn`` returns the task unchanged (and no event) to
        leave it as it is; its errors propagate, and nothing is saved."""
        for _ in range(_CAS_TRIES):
            task = current if current is not None else await self.get(task_id)
            current = None
            new, event = fn(task)
            if new is task:
                return task
            if await self._store.save_task(new, task.version):
                new = msgspec.structs.replace(new, version=task.version + 1)
                self._saved(new, event)
                return new
        raise ConflictError(f"task {task_id!r} keeps changing; try again", task=task_id)

    def _saved(self, task: TaskRecord, event: Events) -> None:
        for each in event if isinstance(event, list) else [event] if event else []:
            self.publish_event(each)
        for watcher in self.watchers:
            watcher(task)
        if self.on_change is not None:
            self.on_change(task)
        else:
            self._bus.broadcast(_BROADCAST, _encode([task.id, task.version]))

    def _on_broadcast(self, data: bytes) -> None:
        task_id, version = msgspec.json.decode(data)
        if self.on_remote_change is not None:
            self.on_remote_change(task_id, version)
        for watcher in self.remote_watchers:
            watcher(task_id, version)
