"""Bodies of the task routes of the REST API (shared by the server and the SDK).

Every answer is the task itself, a :class:`~fleetchat.tasks.records.TaskRecord` (fields that
hold their default are left out, as in every other answer of the API).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from fleetchat.tasks.records import Attempt, BidRecord, TaskRecord, Timeouts
from fleetchat.types import Priority

__all__ = [
    "Attempt",
    "BidBody",
    "BidRecord",
    "CancelBody",
    "CompleteBody",
    "FailBody",
    "ProgressBody",
    "RejectBody",
    "ReportBody",
    "SubmitBody",
    "TaskList",
    "TaskRecord",
    "Timeouts",
    "TimeoutsBody",
]

AttemptNo = Annotated[int, msgspec.Meta(ge=1)]


class TimeoutsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Seconds, each positive; left out: the hub's default."""

    schedule_to_start: float | None = None
    """From submission until an agent starts it; then the task times out. Default: no limit."""
    start_to_close: float | None = None
    """From acceptance until the result; then the attempt fails and is retried. Default 30."""
    heartbeat: float | None = None
    """Longest silence (no progress report) while running. Default: no limit."""
    offer_timeout: float | None = None
    """How long an agent has to accept an offer before the next candidate gets it. Default 5."""


class SubmitBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    required: dict[str, float] = {}
    """Capability -> weight; may be left out when ``agent_id`` names the agent."""
    payload: Any = None
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    """A second submit with the same key returns the first task and changes nothing."""
    mode: Literal["best", "batch", "auction"] | None = None
    """Allocation: ``best`` (default), ``batch`` or ``auction``."""
    agent_id: str | None = None
    """Only this agent may take it."""
    channel: str | None = None
    """Where an auction's call for proposals goes (default ``$tasks``)."""
    timeouts: TimeoutsBody = msgspec.field(default_factory=TimeoutsBody)
    max_retries: int | None = None
    """Attempts after a failed first one (default 3)."""
    estimate: float | None = None
    """Expected seconds of work, for the agent's performance score."""


class CancelBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: str | None = None


class ReportBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An agent's report on a task it holds (accept, start)."""

    agent: str | None = None
    """The reporting agent. With auth on it is the token's agent (and may be left out)."""
    attempt: AttemptNo | None = None
    """The attempt the report is about (as offered); left out: the current one."""


class RejectBody(ReportBody, kw_only=True, forbid_unknown_fields=True):
    reason: str | None = None


class ProgressBody(ReportBody, kw_only=True, forbid_unknown_fields=True):
    progress: float | None = None
    """Done so far, 0..1; every report is also a heartbeat."""


class CompleteBody(ReportBody, kw_only=True, forbid_unknown_fields=True):
    result: Any = None


class FailBody(ReportBody, kw_only=True, forbid_unknown_fields=True):
    error: str | None = None
    retry: bool = True
    """False: fail the task now instead of retrying it on another agent."""


class BidBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cost: float
    eta: float
    """Seconds until it could be done."""
    agent: str | None = None


class TaskList(msgspec.Struct, kw_only=True):
    tasks: list[TaskRecord]
