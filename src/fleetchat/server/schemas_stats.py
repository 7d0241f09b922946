"""The body of ``GET /v1/stats``: one summary of a hub node (``fleetchat stats``)."""

from __future__ import annotations

import msgspec

__all__ = [
    "DeliveryStats",
    "LeaseStats",
    "NodeStats",
    "StatsSummary",
    "TaskStats",
    "WorkflowStats",
]


class DeliveryStats(msgspec.Struct, kw_only=True):
    """Messages and deliveries on this node since it started."""

    published: int
    delivered: int
    """Deliveries acked by their member."""
    success_rate: float
    """delivered / (delivered + dead_lettered + expired + dropped); 1.0 when nothing settled."""
    latency_p50_ms: float
    latency_p99_ms: float
    """Publish to ack, in milliseconds, retries included."""
    retries: int
    dead_lettered: int
    expired: int
    dropped: int
    dead_letter_backlog: int
    """Dead letters kept in ``$dlq`` now (the whole hub)."""


class TaskStats(msgspec.Struct, kw_only=True):
    active: dict[str, int]
    """Unfinished tasks by state: queued, offered, accepted, running (the whole hub)."""
    finished: dict[str, int]
    """Tasks that reached each final state through this node since it started."""
    submitted: int
    """Tasks submitted through this node since it started."""
    allocations: int
    """Allocation decisions the scheduler made here (on the leader)."""
    allocation_p50_ms: float
    allocation_p99_ms: float
    """Time one allocation decision took, in milliseconds."""


class WorkflowStats(msgspec.Struct, kw_only=True):
    running: int
    """Executions the engine runs here (on the leader)."""
    executions: dict[str, int]
    """Execution events by outcome (started, completed, failed, cancelled, error)."""
    steps: dict[str, int]
    """Step events by outcome (scheduled, completed, failed, retrying, ...), every type."""


class LeaseStats(msgspec.Struct, kw_only=True):
    resources: int
    """Resources ever leased."""
    held: int
    waiters: int


class NodeStats(msgspec.Struct, kw_only=True):
    node: str
    leader: bool
    epoch: int
    uptime_seconds: float
    """Since this server started."""
    version: str
    degraded: str | None
    """Why the hub refuses low-priority work now (None: it does not)."""


class StatsSummary(msgspec.Struct, kw_only=True):
    """One node's view of the hub, for people (``fleetchat stats``); ``/metrics`` has the same
    figures for Prometheus."""

    at: float
    """When it was read (epoch seconds)."""
    node: NodeStats
    deliveries: DeliveryStats
    tasks: TaskStats
    workflows: WorkflowStats
    leases: LeaseStats
    connections: int
    """Open agent WebSocket sessions on this node."""
    agents_connected: int
    agents: dict[str, int]
    """Registered agents by status: available, busy, draining, offline."""
    channels: int
    scaling_events: dict[str, int]
    """Autoscaler actions by direction: out, in, restart, failed."""
    scaling_desired: dict[str, int]
    """Desired instances by pool."""
