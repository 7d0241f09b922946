"""Task state transitions, as pure functions on a copy of the record.

queued -> offered -> accepted -> running -> succeeded | failed | timed_out | cancelled

Each function checks that the transition is allowed from the record's state (and, for an
agent's action, that the agent holds the current attempt), and returns the changed copy with
the :class:`TaskEvent` to publish. The caller saves it by compare-and-set; a conflict means
someone else changed the task first: read it again and decide again.
"""

from __future__ import annotations

import msgspec

from fleetchat.errors import ConflictError, TaskNotHeldError
from fleetchat.tasks.records import (
    HOLDING_STATES,
    TERMINAL_STATES,
    Attempt,
    TaskEvent,
    TaskRecord,
    TaskState,
)

__all__ = [
    "accept",
    "cancel",
    "check_holder",
    "complete",
    "fail_attempt",
    "offer",
    "progress",
    "reject",
    "start",
    "time_out",
]


def _move(
    task: TaskRecord, state: TaskState, now: float, reason: str | None, **changes: object
) -> tuple[TaskRecord, TaskEvent]:
    previous = task.state
    new = msgspec.structs.replace(task, state=state, reason=reason, updated_at=now, **changes)
    event = TaskEvent(
        task=task.id,
        state=state,
        previous=previous,
        reason=reason,
        agent=new.holder or (new.attempts[-1].agent if new.attempts else None),
        attempt=new.attempt,
        at=now,
    )
    return new, event


def _end_attempt(task: TaskRecord, now: float, outcome: str, reason: str | None) -> list[Attempt]:
    attempts = list(task.attempts)
    if attempts and attempts[-1].ended_at is None:
        attempts[-1] = msgspec.structs.replace(
            attempts[-1], ended_at=now, outcome=outcome, reason=reason
        )
    return attempts


def check_holder(task: TaskRecord, agent: str, attempt: int | None, states: set[str]) -> None:
    """Raise TaskNotHeldError unless ``agent`` holds ``task`` in one of ``states`` (and, when
    given, ``attempt`` is the current attempt)."""
    if task.holder != agent or task.state not in states:
        raise TaskNotHeldError(
            f"agent {agent!r} does not hold task {task.id!r} (it is {task.state}"
            + (f", held by {task.holder!r})" if task.holder else ")"),
            task=task.id,
            agent=agent,
            state=task.state,
        )
    if attempt is not None and attempt != task.attempt:
        raise TaskNotHeldError(
            f"attempt {attempt} of task {task.id!r} is over (the current one is {task.attempt})",
            task=task.id,
            agent=agent,
            attempt=attempt,
        )


def offer(task: TaskRecord, agent: str, now: float) -> tuple[TaskRecord, TaskEvent]:
    if task.state != "queued":
        raise ConflictError(f"task {task.id!r} is {task.state}, not queued", task=task.id)
    attempts = [*task.attempts, Attempt(agent=agent, offered_at=now)]
    return _move(
        task,
        "offered",
        now,
        None,
        holder=agent,
        attempts=attempts,
        deadline=now + task.timeouts.offer,
        progress=None,
    )


def accept(
    task: TaskRecord, agent: str, attempt: int | None, now: float
) -> tuple[TaskRecord, TaskEvent]:
    check_holder(task, agent, attempt, {"offered"})
    attempts = list(task.attempts)
    attempts[-1] = msgspec.structs.replace(attempts[-1], accepted_at=now)
    return _move(
        task, "accepted", now, None, attempts=attempts, deadline=_run_deadline(task, now, now)
    )


def start(
    task: TaskRecord, agent: str, attempt: int | None, now: float
) -> tuple[TaskRecord, TaskEvent]:
    check_holder(task, agent, attempt, {"accepted"})
    attempts = list(task.attempts)
    attempts[-1] = msgspec.structs.replace(attempts[-1], started_at=now)
    accepted = attempts[-1].accepted_at or now
    return _move(
        task, "running", now, None, attempts=attempts, deadline=_run_deadline(task, accepted, now)
    )


def _run_deadline(task: TaskRecord, accepted_at: float, beat_at: float) -> float:
    """The sooner of start-to-close (from acceptance) and the heartbeat timeout."""
    t = task.timeouts
    deadline = accepted_at + t.start_to_close
    if t.heartbeat is not None:
        deadline = min(deadline, beat_at + t.heartbeat)
    return deadline


def progress(
    task: TaskRecord, agent: str, attempt: int | None, value: float | None, now: float
) -> TaskRecord:
    """A heartbeat from the running agent (with its progress): no state change, no event."""
    check_holder(task, agent, attempt, {"accepted", "running"})
    accepted = task.attempts[-1].accepted_at or now
    return msgspec.structs.replace(
        task,
        progress=task.progress if value is None else value,
        deadline=_run_deadline(task, accepted, now),
        updated_at=now,
    )


def complete(
    task: TaskRecord, agent: str, attempt: int | None, result: object, now: float
) -> tuple[TaskRecord, TaskEvent]:
    check_holder(task, agent, attempt, {"accepted", "running"})
    attempts = _end_attempt(task, now, "succeeded", None)
    return _move(
        task,
        "succeeded",
        now,
        None,
        attempts=attempts,
        result=result,
        holder=None,
        deadline=None,
        progress=1.0,
    )


def reject(
    task: TaskRecord, agent: str | None, outcome: str, reason: str | None, now: float
) -> tuple[TaskRecord, TaskEvent]:
    """The offer was declined (``rejected``) or not accepted in time (``offer_timeout``): back to
    the queue for the next candidate; this does not use the retry budget."""
    if agent is not None:
        check_holder(task, agent, None, {"offered"})
    elif task.state != "offered":
        raise ConflictError(f"task {task.id!r} is {task.state}, not offered", task=task.id)
    attempts = _end_attempt(task, now, outcome, reason)
    return _move(
        task, "queued", now, reason or outcome, attempts=attempts, holder=None, deadline=None
    )


def fail_attempt(
    task: TaskRecord, outcome: str, reason: str | None, now: float, backoff: float
) -> tuple[TaskRecord, TaskEvent]:
    """The holder's attempt failed (reported, timed out, agent lost): queued again after
    ``backoff`` seconds while the retry budget lasts, else ``failed`` with every attempt's
    reason. A lost agent or a pre-emption before acceptance does not use the budget."""
    if task.state not in HOLDING_STATES:
        raise ConflictError(f"task {task.id!r} is {task.state}, not held", task=task.id)
    attempts = _end_attempt(task, now, outcome, reason)
    free = outcome == "preempted" or (outcome == "agent_lost" and task.state == "offered")
    used = task.retries_used + (0 if free else 1)
    if used > task.max_retries:
        summary = "; ".join(
            f"{i}. {a.agent}: {a.outcome}" + (f" ({a.reason})" if a.reason else "")
            for i, a in enumerate(attempts, 1)
            if a.outcome not in ("rejected", "offer_timeout")
        )
        return _move(
            task,
            "failed",
            now,
            reason or outcome,
            attempts=attempts,
            holder=None,
            deadline=None,
            retries_used=used - 1,
            error=summary,
        )
    return _move(
        task,
        "queued",
        now,
        reason or outcome,
        attempts=attempts,
        holder=None,
        deadline=None,
        retries_used=used,
        not_before=now + backoff,
        progress=None,
    )


def time_out(task: TaskRecord, reason: str, now: float) -> tuple[TaskRecord, TaskEvent]:
    """The schedule-to-start timeout ran out: the task ends ``timed_out``."""
    if task.terminal:
        raise ConflictError(f"task {task.id!r} is {task.state}", task=task.id)
    attempts = _end_attempt(task, now, "cancelled", reason)
    return _move(
        task, "timed_out", now, reason, attempts=attempts, holder=None, deadline=None, error=reason
    )


def cancel(task: TaskRecord, reason: str | None, now: float) -> tuple[TaskRecord, TaskEvent]:
    if task.state in TERMINAL_STATES:
        raise ConflictError(
            f"task {task.id!r} is {task.state} already", task=task.id, state=task.state
        )
    attempts = _end_attempt(task, now, "cancelled", reason)
    return _move(
        task,
        "cancelled",
        now,
        reason or "cancelled",
        attempts=attempts,
        holder=None,
        deadline=None,
    )
