"""Tasks over REST: ``HubClient.tasks`` (under /v1/tasks).

    async with HubClient("http://hub:8765", token=...) as hub:
        task = await hub.tasks.submit({"weld": 1.0}, payload={"part": "p-7"})
        done = await hub.tasks.wait(task.id, timeout=60)
        print(done.state, done.result)

The agent-side reports (``accept`` ... ``bid``) are for agents that answer over HTTP;
an SDK :class:`~fleetchat.client.Agent` with ``on_task`` sends them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from fleetchat.client.polling import poll_until
from fleetchat.server import schemas_tasks as s
from fleetchat.types import Priority, parse_priority

if TYPE_CHECKING:
    from fleetchat.client.rest import HubClient
    from fleetchat.tasks.records import TaskRecord

__all__ = ["TaskClient"]


def _path(task_id: str, action: str = "") -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}" + (f"/{action}" if action else "")


class TaskClient:
    """Task calls on a hub; reports act as ``agent`` (None: the token's agent, with auth on)."""

    def __init__(self, rest: HubClient, agent: str | None = None) -> None:
        self._rest = rest
        self.agent = agent

    # -- submit and follow ------------------------------------------------------------------

    async def submit(
        self,
        required: Mapping[str, float] | None = None,
        *,
        payload: Any = None,
        priority: Priority | str = Priority.NORMAL,
        idempotency_key: str | None = None,
        mode: Literal["best", "batch", "auction"] | None = None,
        agent_id: str | None = None,
        channel: str | None = None,
        schedule_to_start: float | None = None,
        start_to_close: float | None = None,
        heartbeat: float | None = None,
        offer_timeout: float | None = None,
        max_retries: int | None = None,
        estimate: float | None = None,
    ) -> TaskRecord:
        """Queue a task for the agents with ``required`` capabilities ({name: weight}), or for
        ``agent_id`` only. Timeouts are in seconds (None: the hub's default). A second submit
        with the same ``idempotency_key`` returns the first task.

        Raises:
            UnsatisfiableError: no registered agent could ever take it.
            InvalidInputError: bad requirements, priority, timeouts or retry budget.
        """
        body = s.SubmitBody(
            required=dict(required or {}),
            payload=payload,
            priority=parse_priority(priority),
            idempotency_key=idempotency_key,
            mode=mode,
            agent_id=agent_id,
            channel=channel,
            timeouts=s.TimeoutsBody(
                schedule_to_start=schedule_to_start,
                start_to_close=start_to_close,
                heartbeat=heartbeat,
                offer_timeout=offer_timeout,
            ),
            max_retries=max_retries,
            estimate=estimate,
        )
        return await self._rest._call("POST", "/v1/tasks", s.TaskRecord, body=body)

    async def get(self, task_id: str) -> TaskRecord:
        """The task as stored now. TaskNotFoundError if there is none."""
        return await self._rest._call("GET", _path(task_id), s.TaskRecord)

    async def list(self, *, state: str | None = None, limit: int = 100) -> list[TaskRecord]:
        """Tasks oldest first; ``state``: only those (``active``: queued or held by an agent)."""
        params = {"state": state, "limit": limit}
        out = await self._rest._call("GET", "/v1/tasks", s.TaskList, params=params)
        return out.tasks

    async def cancel(self, task_id: str, reason: str | None = None) -> TaskRecord:
        """Cancel a task that has not finished (its holder is told to stop). ConflictError if
        it has."""
        body = s.CancelBody(reason=reason)
        return await self._rest._call("POST", _path(task_id, "cancel"), s.TaskRecord, body=body)

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """Poll until the task has finished (succeeded, failed, timed out or cancelled) and
        return it; ``timeout`` None waits as long as it takes.

        Raises:
            RequestTimeoutError: still unfinished after ``timeout`` seconds (also a
                TimeoutError).
        """
        return await poll_until(
            lambda: self.get(task_id),
            lambda task: task.terminal,
            timeout,
            f"task {task_id!r}",
            task=task_id,
        )

    # -- what an agent reports --------------------------------------------------------------

    async def accept(
        self, task_id: str, *, attempt: int | None = None, agent: str | None = None
    ) -> TaskRecord:
        """Take an offered task (then ``start`` it). TaskNotHeldError if it is not offered to
        this agent (any more)."""
        body = s.ReportBody(agent=agent or self.agent, attempt=attempt)
        return await self._report(task_id, "accept", body)

    async def reject(
        self,
        task_id: str,
        reason: str | None = None,
        *,
        attempt: int | None = None,
        agent: str | None = None,
    ) -> TaskRecord:
        """Turn an offer down: the next candidate gets the task."""
        body = s.RejectBody(agent=agent or self.agent, attempt=attempt, reason=reason)
        return await self._report(task_id, "reject", body)

    async def start(
        self, task_id: str, *, attempt: int | None = None, agent: str | None = None
    ) -> TaskRecord:
        """Begin work (accepting the task first if it is only offered)."""
        body = s.ReportBody(agent=agent or self.agent, attempt=attempt)
        return await self._report(task_id, "start", body)

    async def progress(
        self,
        task_id: str,
        value: float | None = None,
        *,
        attempt: int | None = None,
        agent: str | None = None,
    ) -> TaskRecord:
        """How far it is (0..1, or None); also the heartbeat of a running task."""
        body = s.ProgressBody(agent=agent or self.agent, attempt=attempt, progress=value)
        return await self._report(task_id, "progress", body)

    async def complete(
        self,
        task_id: str,
        result: Any = None,
        *,
        attempt: int | None = None,
        agent: str | None = None,
    ) -> TaskRecord:
        """The result: the task succeeds. TaskNotHeldError for a late or foreign result."""
        body = s.CompleteBody(agent=agent or self.agent, attempt=attempt, result=result)
        return await self._report(task_id, "complete", body)

    async def fail(
        self,
        task_id: str,
        error: str | None = None,
        *,
        retry: bool = True,
        attempt: int | None = None,
        agent: str | None = None,
    ) -> TaskRecord:
        """This attempt failed: retried on another agent within the budget (``retry=False``:
        the task fails now)."""
        body = s.FailBody(agent=agent or self.agent, attempt=attempt, error=error, retry=retry)
        return await self._report(task_id, "fail", body)

    async def bid(
        self, task_id: str, cost: float, eta: float, *, agent: str | None = None
    ) -> TaskRecord:
        """A proposal for a task being auctioned: ``cost`` and ``eta`` (seconds)."""
        body = s.BidBody(agent=agent or self.agent, cost=cost, eta=eta)
        return await self._report(task_id, "bid", body)

    async def _report(self, task_id: str, action: str, body: Any) -> TaskRecord:
        return await self._rest._call("POST", _path(task_id, action), s.TaskRecord, body=body)
