"""The REST routes of tasks: submit, list, get, cancel, and the reports of agents that answer
over HTTP instead of WebSocket frames (accept, reject, start, progress, complete, fail, bid).

Every answer is the task as stored after the call. A report acts as the token's agent when
auth is on (an admin token may name another in ``agent``), else as the body's ``agent``.
"""

from __future__ import annotations

from typing import get_args

from fleetchat.errors import ForbiddenError, InvalidInputError
from fleetchat.server import schemas_tasks as s
from fleetchat.server.rest_route import Ctx, Handler, Param, Route
from fleetchat.tasks.records import TaskState
from fleetchat.types import check_channel_name

__all__ = ["TASK_ROUTES"]

_STATES = ("active", *get_args(TaskState))
_ID = "/v1/tasks/{task_id}"


def _agent(ctx: Ctx, agent: str | None) -> str:
    if ctx.caller is None and agent is None:
        raise InvalidInputError("name the reporting agent in agent: auth is off", field="agent")
    return ctx.acting_as(agent)


async def submit_task(ctx: Ctx) -> s.TaskRecord:
    b: s.SubmitBody = ctx.body
    if b.channel is not None:
        check_channel_name(b.channel)
    t = b.timeouts
    return await ctx.hub.tasks.submit(
        b.required,
        payload=b.payload,
        priority=b.priority,
        idempotency_key=b.idempotency_key,
        mode=b.mode,
        agent_id=b.agent_id,
        channel=b.channel,
        schedule_to_start=t.schedule_to_start,
        start_to_close=t.start_to_close,
        heartbeat=t.heartbeat,
        offer_timeout=t.offer_timeout,
        max_retries=b.max_retries,
        estimate=b.estimate,
        submitted_by=ctx.caller or "",
    )


async def list_tasks(ctx: Ctx) -> s.TaskList:
    state = ctx.request.query.get("state") or None
    if state is not None and state not in _STATES:
        raise InvalidInputError(f"state must be one of {', '.join(_STATES)}", field="state")
    limit = ctx.query_int("limit")
    tasks = await ctx.hub.tasks.list(state=state, limit=100 if limit is None else limit)
    return s.TaskList(tasks=tasks)


async def get_task(ctx: Ctx) -> s.TaskRecord:
    return await ctx.hub.tasks.get(ctx.path("task_id"))


async def cancel_task(ctx: Ctx) -> s.TaskRecord:
    """With auth on, only the agent that submitted a task (or an admin) may cancel it; a
    workflow's task is cancelled with its execution."""
    b: s.CancelBody = ctx.body
    task_id = ctx.path("task_id")
    if ctx.caller is not None and not ctx.admin:
        task = await ctx.hub.tasks.get(task_id)
        if task.submitted_by != ctx.caller:
            raise ForbiddenError(
                f"{ctx.caller!r} did not submit task {task_id!r}: only its submitter "
                f"({task.submitted_by or 'unknown'}) or an admin may cancel it",
                task=task_id,
            )
    return await ctx.hub.tasks.cancel(task_id, b.reason)


async def accept_task(ctx: Ctx) -> s.TaskRecord:
    b: s.ReportBody = ctx.body
    return await ctx.hub.tasks.accept(ctx.path("task_id"), _agent(ctx, b.agent), b.attempt)


async def reject_task(ctx: Ctx) -> s.TaskRecord:
    b: s.RejectBody = ctx.body
    return await ctx.hub.tasks.reject(
        ctx.path("task_id"), _agent(ctx, b.agent), b.attempt, b.reason
    )


async def start_task(ctx: Ctx) -> s.TaskRecord:
    b: s.ReportBody = ctx.body
    return await ctx.hub.tasks.start(ctx.path("task_id"), _agent(ctx, b.agent), b.attempt)


async def report_progress(ctx: Ctx) -> s.TaskRecord:
    b: s.ProgressBody = ctx.body
    return await ctx.hub.tasks.progress(
        ctx.path("task_id"), _agent(ctx, b.agent), b.attempt, b.progress
    )


async def complete_task(ctx: Ctx) -> s.TaskRecord:
    b: s.CompleteBody = ctx.body
    return await ctx.hub.tasks.complete(
        ctx.path("task_id"), _agent(ctx, b.agent), b.attempt, b.result
    )


async def fail_task(ctx: Ctx) -> s.TaskRecord:
    b: s.FailBody = ctx.body
    return await ctx.hub.tasks.fail(
        ctx.path("task_id"), _agent(ctx, b.agent), b.attempt, b.error, retry=b.retry
    )


async def bid_task(ctx: Ctx) -> s.TaskRecord:
    b: s.BidBody = ctx.body
    return await ctx.hub.tasks.bid(ctx.path("task_id"), _agent(ctx, b.agent), b.cost, b.eta)


def _report(action: str, summary: str, handler: Handler, body: type) -> Route:
    return Route("POST", f"{_ID}/{action}", summary, handler, "agent", body, s.TaskRecord)


TASK_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/tasks",
        "Submit a task (the same idempotency key returns the first one)",
        submit_task,
        "agent",
        s.SubmitBody,
        s.TaskRecord,
        status=201,
    ),
    Route(
        "GET",
        "/v1/tasks",
        "List tasks, oldest first",
        list_tasks,
        response=s.TaskList,
        query=(
            Param("state", "string", "only tasks in this state, or active (queued or held)"),
            Param("limit", "integer", "most tasks (default 100, 1..10000)"),
        ),
    ),
    Route("GET", _ID, "Get a task", get_task, response=s.TaskRecord),
    Route(
        "POST", f"{_ID}/cancel", "Cancel a task", cancel_task, "agent", s.CancelBody, s.TaskRecord
    ),
    _report("accept", "Accept an offered task", accept_task, s.ReportBody),
    _report(
        "reject", "Reject an offered task (the next candidate gets it)", reject_task, s.RejectBody
    ),
    _report("start", "Start a task (accepting it if offered)", start_task, s.ReportBody),
    _report("progress", "Report progress (also a heartbeat)", report_progress, s.ProgressBody),
    _report("complete", "Report a task's result (it succeeds)", complete_task, s.CompleteBody),
    _report("fail", "Report a failed attempt (retried within the budget)", fail_task, s.FailBody),
    _report("bid", "Bid for a task being auctioned", bid_task, s.BidBody),
)
