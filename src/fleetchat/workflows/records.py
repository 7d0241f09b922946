"""What the workflow engine stores: definitions, executions (a projection) and their events.

An execution is one record changed only by compare-and-set on its ``version``, saved together
with the events that changed it (an append-only log per execution, in the same transaction):
the record is the projection of its events, kept current instead of rebuilt on every read.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "ACTIVE_STATUSES",
    "DefinitionRecord",
    "ExecutionEvent",
    "ExecutionRecord",
    "ExecutionStatus",
    "StepRun",
    "Thread",
]

ExecutionStatus = Literal["running", "completed", "failed", "cancelled", "error"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"running"})


class DefinitionRecord(msgspec.Struct, kw_only=True):
    """A registered definition: immutable per (name, version), but for ``deprecated``."""

    name: str
    version: str
    content_hash: str
    document: dict[str, Any]
    """The definition as submitted (parsed from YAML or JSON)."""
    deprecated: bool = False
    created_at: float = 0.0


class StepRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One step of one execution, in one branch or map item (``key`` = step id plus ``#i`` per
    enclosing map item)."""

    key: str
    step: str
    thread: str
    status: Literal["running", "waiting", "completed", "failed", "cancelled"] = "running"
    attempt: int = 1
    """Numbers every attempt of the key, across loop visits and redrives (tasks are keyed by
    it, so none is ever submitted twice)."""
    first: int = 1
    """The attempt this visit started with (retries count from it)."""
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    agent: str | None = None
    """agent_task: the agent that ran it (or, for a named agent, that will)."""
    channel: str | None = None
    """wait.message: the channel watched (rendered)."""
    child: str | None = None
    """The child execution (sub_workflow)."""
    timer_at: float | None = None
    """When this run's next timer fires: a wait's end, a retry's backoff, a timeout."""
    timer: Literal["wait", "retry", "timeout"] | None = None
    deadline: float | None = None
    """schedule_to_close of the whole step, or a wait's timeout."""
    after_seq: int = 0
    """wait.message: only messages after this seq of the channel count."""
    children: list[str] = []
    """parallel / map: the threads started for it."""
    next_item: int = 0
    """map: the next item to start a thread for."""
    items: list[Any] | None = None
    """map: the evaluated items."""
    finished: dict[str, str] = {}
    """parallel / map: thread id -> "completed" | "failed"."""
    started_at: float = 0.0
    ended_at: float | None = None


class Thread(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A line of steps being followed: the root, a parallel branch, or a map item."""

    id: str
    scope: list[str]
    """Ids of the enclosing parallel/map steps and branch names, from the root."""
    step: str | None
    """The step it is at (None: it reached the end of its scope)."""
    suffix: str = ""
    """``#i`` per enclosing map item: appended to step ids to key their runs."""
    parent: str | None = None
    """The run key of the parallel or map step that started it."""
    branch: str | None = None
    item: Any = None
    index: int | None = None
    status: Literal["active", "completed", "failed", "cancelled"] = "active"
    error: dict[str, Any] | None = None
    last: str | None = None
    """The run key of the last step it completed (its output is the thread's)."""
    caught: dict[str, Any] | None = None
    """The error a ``catch`` sent it on with: the ``error`` root of the steps after."""


class ExecutionRecord(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    """The definition's name."""
    workflow_version: str
    content_hash: str
    """The definition's content hash: the execution is pinned to exactly that content."""
    status: ExecutionStatus = "running"
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    vars: dict[str, Any] = {}
    threads: dict[str, Thread] = {}
    runs: dict[str, StepRun] = {}
    visits: dict[str, int] = {}
    parent: str | None = None
    """The parent execution and run key (``<execution>/<key>``) of a sub-workflow."""
    created_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    deadline: float | None = None
    """execution_timeout."""
    events: int = 0
    """Events recorded so far (the next event's seq is events + 1)."""
    traceparent: str | None = None
    """The W3C trace context of its ``workflow.execution`` span, when traced: steps carry it."""
    version: int = 0

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def copy(self) -> ExecutionRecord:
        """A deep copy (the interpreter changes a record in place; the original stays)."""
        return _decode_execution(msgspec.json.encode(self))


class ExecutionEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of an execution's append-only log."""

    execution: str
    seq: int
    type: str
    """execution.started|completed|failed|cancelled|error, step.scheduled|claimed|heartbeat|
    retrying|completed|failed|timed_out|waiting."""
    at: float
    step: str | None = None
    key: str | None = None
    attempt: int | None = None
    data: Any = None


_decode_execution = msgspec.json.Decoder(ExecutionRecord).decode
