"""The task record: what was asked, where it stands, and every attempt, as stored.

A task is one record in the Store, changed only by compare-and-set on its ``version`` (the
scheduler on the leading node and the nodes agents talk to all write it); every change is a
state transition recorded with its reason (:mod:`fleetchat.tasks.lifecycle`).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from fleetchat.types import Priority

__all__ = [
    "ACTIVE_STATES",
    "HOLDING_STATES",
    "TERMINAL_STATES",
    "Attempt",
    "BidRecord",
    "TaskEvent",
    "TaskRecord",
    "TaskState",
    "Timeouts",
]

TaskState = Literal[
    "queued", "offered", "accepted", "running", "succeeded", "failed", "timed_out", "cancelled"
]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
HOLDING_STATES: frozenset[str] = frozenset({"offered", "accepted", "running"})
"""An agent holds the task: it counts toward the agent's load."""
ACTIVE_STATES: frozenset[str] = frozenset({"queued"}) | HOLDING_STATES


class Timeouts(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Seconds; None: no limit."""

    schedule_to_start: float | None = None
    """From submission until an agent starts it (across every attempt); then ``timed_out``."""
    start_to_close: float = 30.0
    """From an agent accepting it until its result; then the attempt fails and is retried."""
    heartbeat: float | None = None
    """Longest silence (no progress report) while running; then the attempt fails."""
    offer: float = 5.0
    """How long an agent has to accept an offer before the next candidate gets it."""


class Attempt(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One agent's try: offered, maybe accepted and run, and how it ended."""

    agent: str
    offered_at: float
    accepted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    """rejected, offer_timeout, succeeded, failed, start_to_close, heartbeat, agent_lost,
    preempted, cancelled."""
    reason: str | None = None


class BidRecord(msgspec.Struct, kw_only=True):
    """An agent's proposal in an auction: its cost and how soon it could be done."""

    agent: str
    cost: float
    eta: float
    at: float


class TaskRecord(msgspec.Struct, kw_only=True):
    """A task as stored and as the API shows it (every field present, ``state`` included)."""

    id: str
    required: dict[str, float]
    payload: Any = None
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    mode: Literal["best", "batch", "auction"] = "best"
    agent_id: str | None = None
    """Only this agent may take it (by agent id, not by capabilities)."""
    channel: str | None = None
    """Where an auction's call for proposals goes (default ``$tasks``)."""
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    max_retries: int = 3
    """Attempts after the first one that failed (by failure, timeout or agent loss)."""
    estimate: float | None = None
    """Expected seconds of work, for the agent's performance score."""
    submitted_by: str = ""
    state: TaskState = "queued"
    holder: str | None = None
    attempts: list[Attempt] = []
    retries_used: int = 0
    not_before: float = 0.0
    """A retry waits for its backoff until then."""
    deadline: float | None = None
    """When the current state's timeout runs out (offer, start-to-close or heartbeat)."""
    progress: float | None = None
    result: Any = None
    error: str | None = None
    reason: str | None = None
    """Why the task is in its state (the last transition's reason)."""
    created_at: float = 0.0
    updated_at: float = 0.0
    auction_until: float | None = None
    """While a call for proposals is open: when it closes."""
    bids: list[BidRecord] = []
    auctions: int = 0
    """Calls for proposals held (one per task: a task nobody bid on is then allocated like
    ``best``)."""
    dropped_results: int = 0
    """Late or duplicate results, dropped."""
    traceparent: str | None = None
    """The W3C trace context of its ``task.submit`` span, when traced: offers carry it."""
    version: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def attempt(self) -> int:
        """The number of the current (or last) attempt, from 1; 0 before the first offer."""
        return len(self.attempts)


class TaskEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A transition, as published on the ``$tasks`` channel."""

    task: str
    state: TaskState
    previous: TaskState | None = None
    reason: str | None = None
    agent: str | None = None
    attempt: int = 0
    at: float = 0.0
