"""The tasks part of a hub: the service, the scheduler while this node leads, and the messages
tasks send (transitions on ``$tasks``, notices in agents' inboxes).

The Hub owns one :class:`TaskRuntime`; ``hub.tasks`` is its :class:`TaskService`.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.background import Background
from fleetchat.chat.channels import ensure_system_channel, hub_message
from fleetchat.errors import FleetchatError
from fleetchat.models import MessageKind
from fleetchat.tasks.scheduler import Scheduler
from fleetchat.tasks.service import TASKS_CHANNEL, TaskService
from fleetchat.types import Priority

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus, Store
    from fleetchat.chat.channels import ChannelRegistry
    from fleetchat.config import HubSettings
    from fleetchat.ops.tracing import HubTracer
    from fleetchat.registry.agents import AgentRegistry
    from fleetchat.tasks.records import TaskEvent, TaskRecord
    from fleetchat.types import Clock

__all__ = ["TaskRuntime"]

log = logging.getLogger(__name__)


class TaskRuntime:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: AgentRegistry,
        clock: Clock,
        settings: HubSettings,
        channels: ChannelRegistry,
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._settings = settings
        self._channels = channels
        self.service = TaskService(store, bus, registry, clock, settings.tasks, settings.registry)
        self.service.publish_event = self._event
        self.scheduler = Scheduler(self.service, registry, clock, self._notice)
        self._work = Background(log, "task work")
        self._leading = False
        self._open = False
        self.tracer: HubTracer | None = None
        self._offer_traces: dict[str, str] = {}  # task id -> traceparent of its offer span

    def trace(self, tracer: HubTracer) -> None:
        """Trace tasks (tracing on): submits, offers (their notices carry the trace)."""
        self.tracer = self.service.tracer = tracer
        self.service.watchers.append(self._traced)

    def _traced(self, task: TaskRecord) -> None:
        if task.state == "offered" and task.traceparent and self.tracer is not None:
            tp = self.tracer.offered(task)
            if tp is not None:
                if len(self._offer_traces) > 10_000:  # notices that never went out
                    self._offer_traces.clear()
                self._offer_traces[task.id] = tp

    async def start(self, leading: bool) -> None:
        await ensure_system_channel(self._bus, TASKS_CHANNEL, self._clock.time())
        self._open = True
        self.lead(leading)

    async def close(self) -> None:
        self._open = False
        await self.scheduler.stop()
        await self._work.drain(1.0)

    def lead(self, leading: bool) -> None:
        """This node became (or stopped being) the leader: start (or stop) the scheduler."""
        self._leading = leading
        if self._open:
            self._spawn(self.scheduler.start() if leading else self.scheduler.stop())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._work.spawn(coro)

    def _event(self, event: TaskEvent) -> None:
        """Publish a transition on ``$tasks`` (in the background: the change is saved)."""
        if self._open:
            self._spawn(self._post(TASKS_CHANNEL, msgspec.to_builtins(event), "system", None))

    async def _notice(self, target: str, body: dict[str, Any], priority: Priority) -> None:
        """An offer, cancel or call for proposals: to ``@agent``'s inbox or a channel."""
        if target.startswith("@") and self._bus.channel(target) is None:
            await self._channels.ensure_inbox(target[1:])
        tp = self._offer_traces.pop(body["task"], None) if self._offer_traces else None
        await self._post(target, body, "task", priority, tp)

    async def _post(
        self,
        channel: str,
        body: Any,
        kind: MessageKind,
        priority: Priority | None,
        traceparent: str | None = None,
    ) -> None:
        """A message from the hub itself (sender ``$hub``)."""
        now = self._clock.time()
        message = hub_message(channel, body, now, kind=kind, priority=priority or Priority.NORMAL)
        if traceparent is not None:
            message.headers = {"traceparent": traceparent}
        try:
            await self._bus.publish([message], self._settings.chat.publish_timeout)
        except FleetchatError as exc:
            log.warning("task message not sent", extra={"channel": channel, "error": exc.code})
