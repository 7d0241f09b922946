"""What the workflow engine needs from the hub: tasks, child executions, channels, events.

``EngineGlue`` is a mixin of :class:`fleetchat.workflows.service.WorkflowService`.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.chat.channels import ensure_system_channel, hub_message
from fleetchat.errors import ConflictError, FleetchatError
from fleetchat.models import Message
from fleetchat.workflows.engine import ENGINE_MEMBER, WorkflowEngine
from fleetchat.workflows.interpreter import StartChild
from fleetchat.workflows.model import AgentTaskStep
from fleetchat.workflows.records import ExecutionEvent, ExecutionRecord, StepRun

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus, Store
    from fleetchat.chat.channels import ChannelRegistry
    from fleetchat.chat.subscription import Subscription
    from fleetchat.hub import Hub
    from fleetchat.tasks.records import TaskRecord
    from fleetchat.tasks.service import TaskService
    from fleetchat.types import Clock

__all__ = ["EngineGlue", "execution_channel"]

log = logging.getLogger(__name__)


def execution_channel(execution_id: str) -> str:
    """The channel where an execution's events are published (``$wf.<id>``)."""
    return f"$wf.{execution_id}"


class EngineGlue:
    """Tasks, children, channels and events for the engine, on the hub's services."""

    store: Store
    tasks: TaskService
    engine: WorkflowEngine
    _hub: Hub
    _bus: Bus
    _clock: Clock
    _channels: ChannelRegistry

    if TYPE_CHECKING:

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        async def start(
            self,
            name: str,
            input: Any = None,
            *,
            version: str = "latest",
            execution_id: str | None = None,
            parent: str | None = None,
        ) -> ExecutionRecord: ...

        async def cancel(self, execution_id: str, reason: str | None = None) -> ExecutionRecord: ...

    async def subscribe_engine(self) -> Subscription:
        """The engine's deliveries: it is a member of the channels its waits watch, without
        an inbox of its own and without "joined" announcements."""
        from fleetchat.chat.subscription import Subscription

        return Subscription(self._bus, self._hub.requests, ENGINE_MEMBER, 256)

    async def watch_channel(self, channel: str) -> None:
        with contextlib.suppress(FleetchatError):
            if self._bus.channel(channel) is None:
                with contextlib.suppress(ConflictError):
                    await self._channels.create(channel, announce=False)
            await self._bus.add_member(channel, ENGINE_MEMBER)

    def channel_seq(self, channel: str) -> int:
        spec = self._bus.channel(channel)
        return spec.last_seq if spec is not None else 0

    def _task_changed(self, task: TaskRecord) -> None:
        self.engine.task_changed(task)

    def _task_changed_elsewhere(self, task_id: str, version: int) -> None:
        if self.engine.active:
            self._spawn(self._reload_task(task_id))

    async def _reload_task(self, task_id: str) -> None:
        task = await self.tasks.find(task_id)
        if task is not None:
            self.engine.task_changed(task)

    async def submit_task(
        self, key: str, step: AgentTaskStep, run: StepRun, execution: ExecutionRecord
    ) -> TaskRecord:
        t = step.timeout
        payload = {
            "input": run.input,
            "workflow": {
                "execution": execution.id,
                "workflow": execution.workflow,
                "step": run.step,
                "attempt": run.attempt,
            },
        }
        tracer = self._hub.tracer
        trace = None if tracer is None else tracer.step(execution, run.step, run.attempt)
        return await self.tasks.submit(
            step.agent.capabilities,
            payload=payload,
            priority=step.priority,
            idempotency_key=key,
            mode="auction" if step.agent.auction else None,
            agent_id=run.agent,
            schedule_to_start=t.schedule_to_start if t else None,
            start_to_close=t.start_to_close if t and t.start_to_close else None,
            heartbeat=t.heartbeat if t else None,
            max_retries=0,  # the step's own retry policy decides
            submitted_by=f"workflow:{execution.id}",
            must_be_satisfiable=False,  # agents may register later: the task waits
            traceparent=trace,
        )

    async def cancel_task(self, key: str, reason: str) -> None:
        task = await self.tasks.find_by_key(key)
        if task is not None and not task.terminal:
            with contextlib.suppress(ConflictError):
                await self.tasks.cancel(task.id, reason)

    async def start_child(self, parent: str, effect: StartChild) -> None:
        name, _, version = effect.workflow.partition("@")
        child = await self.start(
            name,
            effect.input,
            version=version or "latest",
            execution_id=effect.child_id,
            parent=f"{parent}/{effect.key}",
        )
        if child.finished:  # it had ended before a crash: tell the parent again
            await self.engine.apply(parent, lambda i: i.child_finished(effect.key, child))

    async def forget(self, execution_id: str) -> None:
        """Drop a finished execution, its events and its channel (retention)."""
        await self.store.delete_execution(execution_id)
        with contextlib.suppress(FleetchatError):
            await self._bus.delete_channel(execution_channel(execution_id))

    async def _open_channel(self, execution_id: str) -> None:
        with contextlib.suppress(FleetchatError):  # events are in the store regardless
            await ensure_system_channel(
                self._bus, execution_channel(execution_id), self._clock.time()
            )

    def published(self, record: ExecutionRecord, events: builtins.list[ExecutionEvent]) -> None:
        """Post a saved change's events on the execution's channel (one message)."""
        body = {
            "execution": record.id,
            "status": record.status,
            "events": [msgspec.to_builtins(e) for e in events],
        }
        self._spawn(self._post(hub_message(execution_channel(record.id), body, self._clock.time())))

    async def _post(self, message: Message) -> None:
        try:
            await self._bus.publish([message], 5.0)
        except FleetchatError as exc:
            log.debug("execution event not posted", extra={"error": exc.code})
