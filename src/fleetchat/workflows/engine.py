"""The workflow engine: runs executions on the leading node.

It keeps the running executions, feeds their interpreters what happens (a task's end, a
timer, a message on a watched channel, a child's end), saves each change with its events by
compare-and-set, then carries out the effects: agent tasks are submitted through the
TaskService with the idempotency key ``wf:<execution>:<run key>:<attempt>`` (so a crash
between the save and the submit re-submits the same task, never a second one), child
executions are started with a deterministic id. When it starts leading it loads every running
execution, re-arms their timers from the stored times and asks the store what became of their
tasks meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.background import Background
from fleetchat.errors import ConflictError, FleetchatError
from fleetchat.workflows.interpreter import (
    CancelChild,
    CancelTask,
    Effect,
    Interpreter,
    StartChild,
    SubmitTask,
)
from fleetchat.workflows.model import AgentTaskStep, Definition, find_step
from fleetchat.workflows.records import ExecutionEvent, ExecutionRecord, StepRun

if TYPE_CHECKING:
    from fleetchat.chat.subscription import Subscription
    from fleetchat.tasks.records import TaskRecord
    from fleetchat.types import Clock, TimerHandle
    from fleetchat.workflows.service import WorkflowService

__all__ = ["ENGINE_MEMBER", "WorkflowEngine", "task_key"]

log = logging.getLogger(__name__)

ENGINE_MEMBER = "workflows.engine"
"""The member through which the engine watches channels that waits listen to."""
_CHECK_INTERVAL = 5.0  # seconds between looks at running tasks and unknown executions
_CAS_TRIES = 20
_RETENTION_EVERY = 12  # checks: the retention sweep runs every minute


def task_key(execution: str, key: str, attempt: int) -> str:
    return f"wf:{execution}:{key}:{attempt}"


def parse_task_key(value: str | None) -> tuple[str, str, int] | None:
    if not value or not value.startswith("wf:"):
        return None
    _, execution, rest = value.split(":", 2)
    key, _, attempt = rest.rpartition(":")
    return execution, key, int(attempt)


class WorkflowEngine:
    def __init__(self, service: WorkflowService, clock: Clock) -> None:
        self._service = service
        self._clock = clock
        self.running: dict[str, ExecutionRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, TimerHandle] = {}
        self._work = Background(log, "workflow engine work")
        self._watching: dict[str, set[str]] = {}  # channel -> execution ids waiting on it
        self._sub: Subscription | None = None
        self._active = False
        self.steps_run = 0
        self.event_watchers: list[Callable[[Definition, list[ExecutionEvent]], None]] = []
        """Told of the events of every save (the metrics count steps here); must not raise."""

    @property
    def active(self) -> bool:
        return self._active

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._active:
            return
        self._active = True
        self._sub = await self._service.subscribe_engine()
        self._spawn(self._read_messages(self._sub))
        await self._resume_all()
        self._spawn(self._check_loop())

    async def stop(self) -> None:
        if not self._active:
            return
        self._active = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._sub is not None:
            await self._sub.close()
            self._sub = None
        await self._work.cancel()
        self.running.clear()
        self._watching.clear()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._work.spawn(coro)

    async def _resume_all(self) -> None:
        for record in await self._service.store.load_executions(status="running"):
            await self.resume(record)

    async def resume(self, record: ExecutionRecord) -> None:
        """Take a running execution in hand: start it if new, else re-arm it and catch up
        with what its tasks did meanwhile."""
        if not self._active or record.finished:
            return
        if not record.threads:
            # New (or so this copy says): start it from a fresh read; start is a no-op on
            # an execution that has threads already.
            self.running.pop(record.id, None)
            await self.apply(record.id, lambda i: i.start())
            return
        self.running[record.id] = record
        self._rearm(record)
        # Submitted again (the same task, by its key); one that ended meanwhile is reported.
        submits: list[Effect] = [
            SubmitTask(run.key, run.attempt) for run in await self._task_runs(record)
        ]
        await self._effects(record.id, submits)

    async def _task_runs(self, record: ExecutionRecord) -> list[StepRun]:
        """The execution's agent_task runs waiting for their task."""
        definition = await self._service.definition_for(record)
        return [
            run
            for run in record.runs.values()
            if run.status == "running"
            and isinstance(find_step(definition, run.step), AgentTaskStep)
        ]

    # -- what happens -----------------------------------------------------------------------

    async def apply(
        self, execution_id: str, fn: Callable[[Interpreter], None], *, finished: bool = False
    ) -> None:
        """Run ``fn`` on the execution's interpreter, save what changed, carry out effects
        (``finished``: also on an execution that has ended: a redrive)."""
        lock = self._locks.setdefault(execution_id, asyncio.Lock())
        async with lock:
            effects = await self._apply(execution_id, fn, finished)
        if effects:
            await self._effects(execution_id, effects)

    async def _apply(
        self, execution_id: str, fn: Callable[[Interpreter], None], finished: bool
    ) -> list[Effect]:
        store = self._service.store
        for _ in range(_CAS_TRIES):
            record = self.running.get(execution_id) or await store.load_execution(execution_id)
            if record is None or (record.finished and not finished):
                self._forget(execution_id)
                return []
            definition = await self._service.definition_for(record)
            work = record.copy()
            expressions = self._service.expressions_for(definition)
            interp = Interpreter(definition, expressions, work, self._clock.time())
            interp.channel_seq = self._service.channel_seq
            try:
                fn(interp)
            except Exception as exc:  # an engine bug: the execution ends in error
                log.exception("workflow interpreter failed", extra={"execution": execution_id})
                interp.r.status, interp.r.ended_at = "error", self._clock.time()
                interp.r.error = {"type": "fleetchat.runtime", "message": repr(exc)}
                interp._event("execution.error", data=interp.r.error)
            if not interp.events:
                return interp.effects
            work.updated_at = self._clock.time()
            if await store.save_execution(work, record.version, interp.events):
                work = msgspec.structs.replace(work, version=record.version + 1)
                self.steps_run += sum(1 for e in interp.events if e.type == "step.completed")
                for watcher in self.event_watchers:
                    watcher(definition, interp.events)
                self._saved(work, interp.events)
                return interp.effects
            self.running.pop(execution_id, None)  # changed elsewhere (a cancel): read it again
        log.error("execution keeps changing", extra={"execution": execution_id})
        return []

    def _saved(self, record: ExecutionRecord, events: list[ExecutionEvent]) -> None:
        if record.finished:
            self._forget(record.id)
            if record.parent:
                parent, _, key = record.parent.partition("/")
                self._spawn(self.apply(parent, lambda i: i.child_finished(key, record)))
        else:
            self.running[record.id] = record
            self._rearm(record)
        self._service.published(record, events)

    def _forget(self, execution_id: str) -> None:
        self.running.pop(execution_id, None)
        lock = self._locks.get(execution_id)
        if lock is not None and not lock.locked():
            del self._locks[execution_id]
        timer = self._timers.pop(execution_id, None)
        if timer is not None:
            timer.cancel()
        for waiting in self._watching.values():
            waiting.discard(execution_id)

    def task_changed(self, task: TaskRecord) -> None:
        """A task changed (on any node): if it is a workflow step's and it ended, tell its
        execution."""
        ref = parse_task_key(task.idempotency_key)
        if ref is None or not task.terminal or not self._active:
            return
        execution, key, attempt = ref
        last = task.attempts[-1] if task.attempts else None

        def fn(i: Interpreter) -> None:
            run = i.r.runs.get(key)
            if run is not None and run.attempt == attempt:
                outcome = last.outcome if last else None
                reason = task.error or (last.reason if last else None) or task.reason
                agent = last.agent if last else None
                i.task_finished(key, task.state, task.result, outcome, reason, agent)

        self._spawn(self.apply(execution, fn))

    async def _read_messages(self, sub: Subscription) -> None:
        while self._active:
            try:
                batch = await sub.fetch(timeout=None)
            except FleetchatError:
                return
            if batch is None:
                continue
            for m in batch.messages:
                for execution in list(self._watching.get(m.channel, ())):
                    record = self.running.get(execution)
                    keys = [
                        r.key
                        for r in (record.runs.values() if record else ())
                        if r.status == "waiting" and r.channel == m.channel
                    ]
                    body = msgspec.to_builtins(m)
                    for key in keys:
                        await self.apply(execution, _deliver(key, body))
            await batch.ack()

    # -- timers and watches -------------------------------------------------------------------

    def _rearm(self, record: ExecutionRecord) -> None:
        timer = self._timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        due = [r.timer_at for r in record.runs.values() if r.timer_at is not None]
        if record.deadline is not None:
            due.append(record.deadline)
        if due:
            delay = max(min(due) - self._clock.time(), 0.0)
            self._timers[record.id] = self._clock.call_later(
                delay, lambda: self._spawn(self._fire(record.id))
            )
        for run in record.runs.values():
            if run.status == "waiting" and run.channel is not None:
                if run.channel not in self._watching:
                    self._watching[run.channel] = set()
                    self._spawn(self._service.watch_channel(run.channel))
                self._watching[run.channel].add(record.id)

    async def _fire(self, execution_id: str) -> None:
        now = self._clock.time()

        def fn(i: Interpreter) -> None:
            if i.r.deadline is not None and now >= i.r.deadline:
                i.execution_timeout()
                return
            for run in sorted(i.r.runs.values(), key=lambda r: r.timer_at or 0):
                if run.timer_at is not None and run.timer_at <= now + 1e-6:
                    i.timer(run.key)

        await self.apply(execution_id, fn)
        record = self.running.get(execution_id)
        if record is not None:
            self._rearm(record)

    async def _check_loop(self) -> None:
        """A backstop: tasks that ended without the engine hearing it (a lost broadcast),
        executions started on another node it did not hear of; and retention."""
        checks = 0
        while self._active:
            await self._clock.sleep(_CHECK_INTERVAL)
            checks += 1
            try:
                if checks % _RETENTION_EVERY == 0:
                    await self.sweep()
                for record in await self._service.store.load_executions(status="running"):
                    if record.id not in self.running:
                        await self.resume(record)
                for record in list(self.running.values()):
                    for run in await self._task_runs(record):
                        key = task_key(record.id, run.key, run.attempt)
                        task = await self._service.tasks.find_by_key(key)
                        if task is not None and task.terminal:
                            self.task_changed(task)
            except FleetchatError as exc:
                log.warning("workflow check failed", extra={"error": exc.code})

    async def sweep(self) -> int:
        """Delete finished executions older than the retention; returns how many."""
        horizon = self._clock.time() - self._service.retention
        gone = 0
        for status in ("completed", "failed", "cancelled", "error"):
            for record in await self._service.store.load_executions(status=status):
                if record.ended_at is not None and record.ended_at < horizon:
                    await self._service.forget(record.id)
                    gone += 1
        return gone

    # -- effects ----------------------------------------------------------------------------

    async def _effects(self, execution_id: str, effects: list[Effect]) -> None:
        for effect in effects:
            try:
                if isinstance(effect, SubmitTask):
                    await self._submit(execution_id, effect)
                elif isinstance(effect, CancelTask):
                    await self._service.cancel_task(
                        task_key(execution_id, effect.key, effect.attempt), effect.reason
                    )
                elif isinstance(effect, StartChild):
                    await self._service.start_child(execution_id, effect)
                elif isinstance(effect, CancelChild):
                    with contextlib.suppress(ConflictError):  # it had finished
                        await self._service.cancel(effect.child_id, "the parent stopped it")
            except FleetchatError as exc:
                log.warning(
                    "workflow effect failed",
                    extra={"execution": execution_id, "effect": type(effect).__name__},
                )
                if isinstance(effect, SubmitTask | StartChild):
                    err = {"type": _effect_error(exc), "message": exc.message}
                    self._spawn(self.apply(execution_id, _step_error(effect.key, err)))

    async def _submit(self, execution_id: str, effect: SubmitTask) -> None:
        record = self.running.get(execution_id) or await self._service.store.load_execution(
            execution_id
        )
        if record is None:
            return
        run = record.runs.get(effect.key)
        if run is None:
            return
        definition = await self._service.definition_for(record)
        step = find_step(definition, run.step)
        assert isinstance(step, AgentTaskStep)
        task = await self._service.submit_task(
            task_key(execution_id, effect.key, effect.attempt), step, run, record
        )
        if task.terminal:  # submitted before a crash, and finished meanwhile
            self.task_changed(task)


def _step_error(key: str, err: dict[str, Any]) -> Callable[[Interpreter], None]:
    def fn(i: Interpreter) -> None:
        i.step_error(key, err)

    return fn


def _deliver(key: str, message: dict[str, Any]) -> Callable[[Interpreter], None]:
    def fn(i: Interpreter) -> None:
        i.message(key, message)

    return fn


def _effect_error(exc: FleetchatError) -> str:
    if exc.code == "unsatisfiable":
        return "fleetchat.agent_unavailable"
    if exc.code in ("invalid_input", "invalid_definition", "not_found"):
        return "fleetchat.validation"
    return "fleetchat.runtime"
