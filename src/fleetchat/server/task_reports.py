"""An agent's ``task`` frame, carried out on the TaskService."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fleetchat.errors import InvalidInputError

if TYPE_CHECKING:
    from fleetchat import protocol as p
    from fleetchat.tasks.records import TaskRecord
    from fleetchat.tasks.service import TaskService

__all__ = ["report_task"]


_RESULTS = ("complete", "fail", "reject")


async def report_task(tasks: TaskService, agent: str, frame: p.TaskReport) -> TaskRecord:
    """Apply ``frame`` (an agent's accept, reject, start, progress, complete, fail or bid).

    With tracing on, a result (complete, fail, reject) is a ``task.result`` span continuing
    the report's ``traceparent`` (else the task's own trace).
    """
    tracer = tasks.tracer
    if tracer is None or frame.action not in _RESULTS:
        return await _apply(tasks, agent, frame)
    started = time.time_ns()
    try:
        task = await _apply(tasks, agent, frame)
    except Exception as exc:
        tracer.reported(frame.action, frame.task, agent, frame.traceparent, started, None, exc)
        raise
    tracer.reported(frame.action, task.id, agent, frame.traceparent, started, task.traceparent)
    return task


async def _apply(tasks: TaskService, agent: str, frame: p.TaskReport) -> TaskRecord:
    if frame.attempt is not None and (isinstance(frame.attempt, bool) or frame.attempt < 1):
        raise InvalidInputError("attempt must be 1 or more", field="attempt")
    task, attempt = frame.task, frame.attempt
    match frame.action:
        case "accept":
            return await tasks.accept(task, agent, attempt)
        case "reject":
            return await tasks.reject(task, agent, attempt, frame.error)
        case "start":
            return await tasks.start(task, agent, attempt)
        case "progress":
            return await tasks.progress(task, agent, attempt, frame.progress)
        case "complete":
            return await tasks.complete(task, agent, attempt, frame.result)
        case "fail":
            return await tasks.fail(task, agent, attempt, frame.error, retry=frame.retry)
        case "bid":
            if frame.cost is None or frame.eta is None:
                raise InvalidInputError("a bid needs cost and eta", field="cost")
            return await tasks.bid(task, agent, frame.cost, frame.eta)
