"""Tasks on the agent side: offers in, the handler run, reports out.

The hub offers a task with a ``task`` message in the agent's inbox (``{"action": "offer",
...}``); the agent answers with ``task`` frames (docs/protocol.md). :class:`TaskRunner` does
that for an :class:`~fleetchat.client.agent.Agent` with an ``on_task`` handler: it starts the
task (which accepts it), runs the handler in its own asyncio task, heartbeats while it runs
when the task asks for heartbeats, and reports the result or the failure. A ``cancel`` notice
(the task was cancelled, pre-empted or timed out here) cancels the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fleetchat import protocol as p
from fleetchat.client.tracing import AgentTracing
from fleetchat.errors import FleetchatError, TaskNotHeldError
from fleetchat.models import Message
from fleetchat.types import new_id

__all__ = ["CallForProposals", "TaskRunner", "TaskWork"]

log = logging.getLogger(__name__)

Call = Callable[[p.TaskReport], Awaitable[Any]]


class TaskWork:
    """A task this agent runs: what to do, and ``progress`` to report how far it got."""

    def __init__(self, body: dict[str, Any], report: Callable[..., Awaitable[None]]) -> None:
        self.id: str = body["task"]
        self.attempt: int = int(body.get("attempt") or 1)
        self.payload: Any = body.get("payload")
        self.required: dict[str, float] = dict(body.get("required") or {})
        self.priority: str = str(body.get("priority") or "normal")
        self.start_to_close: float | None = body.get("start_to_close")
        self.heartbeat: float | None = body.get("heartbeat")
        self.estimate: float | None = body.get("estimate")
        self._report = report

    async def progress(self, value: float | None = None) -> None:
        """Tell the hub the task is alive (and ``value``, 0..1, how far it is)."""
        await self._report("progress", self, progress=value)

    def __repr__(self) -> str:
        return f"TaskWork({self.id!r}, attempt={self.attempt})"


class CallForProposals:
    """An auction's call: bid with ``(cost, eta)`` from an ``on_cfp`` handler, or None."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.task: str = body["task"]
        self.required: dict[str, float] = dict(body.get("required") or {})
        self.payload: Any = body.get("payload")
        self.closes_at: float | None = body.get("closes_at")


class TaskRunner:
    """Runs an agent's tasks: at most ``capacity`` at once (more offers are rejected)."""

    def __init__(self, call: Call, capacity: int, tracing: AgentTracing | None = None) -> None:
        self._call = call
        self.capacity = capacity
        self._tracing = tracing or AgentTracing()
        self.handler: Callable[[TaskWork], Awaitable[Any]] | None = None
        self.accept: Callable[[TaskWork], bool] | None = None
        self.bidder: Callable[[CallForProposals], Awaitable[tuple[float, float] | None]] | None = (
            None
        )
        self.running: dict[str, asyncio.Task[None]] = {}
        self.works: dict[str, TaskWork] = {}
        self.done = 0
        self.failed = 0

    async def on_notice(self, msg: Message) -> None:
        """A ``task`` message from the hub (the handler of every ``kind="task"`` delivery)."""
        body = msg.body if isinstance(msg.body, dict) else {}
        action = body.get("action")
        if action == "offer":
            await self._offer(body)
        elif action == "cancel":
            work = self.running.get(body.get("task", ""))
            if work is not None:
                work.cancel()
        elif action == "cfp" and self.bidder is not None:
            bid = await self.bidder(CallForProposals(body))
            if bid is not None:
                cost, eta = bid
                await self._send(body["task"], "bid", None, cost=float(cost), eta=float(eta))

    async def _offer(self, body: dict[str, Any]) -> None:
        work = TaskWork(body, self._report)
        held = self.works.get(work.id)
        if held is not None:
            # Offered again while the handler still runs (the connection dropped and the hub
            # re-offered it here): carry on under the new attempt instead of starting over.
            if work.attempt != held.attempt:
                with contextlib.suppress(FleetchatError):
                    await self._send(work.id, "start", work.attempt)
                    held.attempt = work.attempt
            return
        busy = len(self.running) >= self.capacity
        if self.handler is None or busy or (self.accept is not None and not self.accept(work)):
            why = "busy" if busy else "declined"
            await self._send(work.id, "reject", work.attempt, error=why)
            return
        self.works[work.id] = work
        self.running[work.id] = asyncio.get_running_loop().create_task(self._run(work))

    async def _run(self, work: TaskWork) -> None:
        assert self.handler is not None
        beat: asyncio.Task[None] | None = None
        # The task's span is current in this asyncio task: its reports carry the trace.
        span = self._tracing.begin("task", {"fleetchat.task_id": work.id, "attempt": work.attempt})
        error: BaseException | None = None
        try:
            try:
                await self._send(work.id, "start", work.attempt)
            except TaskNotHeldError:
                return  # the offer ran out (or was cancelled) before we took it
            if work.heartbeat:
                beat = asyncio.get_running_loop().create_task(self._beat(work))
            try:
                result = await self.handler(work)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the handler's failure is the task's
                self.failed += 1
                error = exc
                log.warning("task handler failed", extra={"task": work.id}, exc_info=True)
                await self._send(
                    work.id, "fail", work.attempt, error=f"{type(exc).__name__}: {exc}"
                )
                return
            self.done += 1
            await self._send(work.id, "complete", work.attempt, result=result)
        except asyncio.CancelledError:
            pass  # cancelled by the hub (or the agent is closing): nothing to report
        except TaskNotHeldError:
            log.info("task result dropped: no longer held", extra={"task": work.id})
        except FleetchatError:
            log.warning("task report failed", extra={"task": work.id}, exc_info=True)
        finally:
            if beat is not None:
                beat.cancel()
            self.running.pop(work.id, None)
            self.works.pop(work.id, None)
            self._tracing.end(span, error)

    async def _beat(self, work: TaskWork) -> None:
        interval = max((work.heartbeat or 1.0) / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(FleetchatError):
                await self._send(work.id, "progress", work.attempt)

    async def _report(self, action: str, work: TaskWork, **fields: Any) -> None:
        await self._send(work.id, action, work.attempt, **fields)

    async def _send(self, task: str, action: str, attempt: int | None, **fields: Any) -> None:
        traceparent = self._tracing.traceparent()
        await self._call(
            p.TaskReport(
                id=new_id(),
                task=task,
                action=action,  # type: ignore[arg-type]
                attempt=attempt,
                traceparent=traceparent,
                **fields,
            )
        )

    async def stop(self) -> None:
        for work in list(self.running.values()):
            work.cancel()
        for work in list(self.running.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await work
