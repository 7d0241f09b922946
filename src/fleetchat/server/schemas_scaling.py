"""Bodies of the scaling routes of the REST API (shared by the server and the CLI)."""

from __future__ import annotations

from typing import Any

import msgspec

from fleetchat.ops.scaling import PoolStatus
from fleetchat.ops.scaling_metrics import PoolMetrics

__all__ = [
    "PoolMetrics",
    "PoolStatus",
    "ScaleBody",
    "ScalingEvent",
    "ScalingEvents",
    "ScalingStatus",
]


class ScalingStatus(msgspec.Struct, kw_only=True):
    """``GET /v1/scaling``: the autoscaler on the node that answered."""

    leader: bool
    """This node leads, so its autoscaler runs (the others know only the settings)."""
    interval: float
    """Seconds between evaluations."""
    rounds: int
    """Evaluations done here."""
    counts: dict[str, int]
    """Events by outcome: out, in, restart, failed."""
    pools: list[PoolStatus]


class ScalingEvent(msgspec.Struct, kw_only=True):
    """One resize (or a failed try), as recorded on ``$ops``."""

    seq: int = 0
    """Its sequence number in ``$ops``."""
    pool: str
    kind: str
    """``out``, ``in`` (the policies), ``manual`` (an operator), ``restart`` (workers that
    exited replaced, a failed resize retried, a remote pool told its size at start)."""
    from_: int = msgspec.field(name="from")
    to: int
    reason: str
    metrics: dict[str, Any] | None = None
    """The pool's measures at the time (see PoolMetrics)."""
    actuator: str
    ok: bool
    error: str | None = None
    at: float
    took: float
    """Seconds the actuator took."""


class ScalingEvents(msgspec.Struct, kw_only=True):
    """``GET /v1/scaling/events``: the newest events, oldest first."""

    events: list[ScalingEvent]


class ScaleBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/scaling/{pool}``: resize the pool now (admin)."""

    count: int
    """Instances, within the pool's min..max."""
