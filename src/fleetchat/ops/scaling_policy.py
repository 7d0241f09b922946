"""The scaling policies: from a pool's metrics and size to the size it should have (pure).

Each metric proposes a size with a reason; the most urgent proposal wins (any scale-out beats a
scale-in, the largest scale-out beats the others), clamped to the pool's ``min``..``max`` and
held back by the cooldowns:

- ``cpu``: above ``cpu_high``, grow in proportion (``ceil(n * cpu / cpu_high)``, at least +1;
  an empty pool has no CPU to act on);
- ``queue``: more than ``queued_high`` queued tasks, one more instance per
  ``queued_per_instance`` of them;
- ``latency``: (when ``latency_high`` is set) a mean wait above it, one more instance;
- ``idle``: nothing queued, utilisation below ``idle_utilisation`` and CPU below ``cpu_high``,
  one instance fewer;
- ``min`` / ``max``: a pool outside its bounds is brought back at once, cooldowns or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetchat.ops.scaling_metrics import PoolMetrics
from fleetchat.ops.settings import PoolSettings, ScalingSettings

__all__ = ["Cooldowns", "Decision", "Proposal", "decide", "proposals"]


@dataclass(frozen=True, slots=True)
class Proposal:
    """What one metric asks for."""

    desired: int
    reason: str
    """``cpu``, ``queue``, ``latency``, ``idle``, ``min`` or ``max``, with the numbers."""


@dataclass(frozen=True, slots=True)
class Cooldowns:
    """When the pool last changed size (hub clock seconds; None: never)."""

    last_out: float | None = None
    last_change: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation of one pool."""

    desired: int
    """The size to have now (the current size when nothing is to change)."""
    reason: str
    """Why (the winning proposal), or why nothing changes."""
    wanted: int
    """The size the winning proposal asked for, before cooldowns (and after min/max)."""
    cooldown_left: float
    """Seconds until the cooldown lets ``wanted`` happen (0: not held back)."""

    def changes(self, current: int) -> bool:
        return self.desired != current


def proposals(metrics: PoolMetrics, current: int, settings: ScalingSettings) -> list[Proposal]:
    """What each metric asks for, given the pool's ``current`` size (only the metrics that
    want a change)."""
    out: list[Proposal] = []
    cpu = metrics.cpu
    if current > 0 and cpu is not None and cpu > settings.cpu_high:
        grown = max(math.ceil(current * cpu / settings.cpu_high), current + 1)
        out.append(Proposal(grown, f"cpu {cpu:.0%} > {settings.cpu_high:.0%}"))
    if metrics.queued > settings.queued_high:
        more = math.ceil(metrics.queued / settings.queued_per_instance)
        out.append(
            Proposal(current + more, f"queue {metrics.queued} > {settings.queued_high} queued")
        )
    latency = metrics.latency
    if settings.latency_high and latency is not None and latency > settings.latency_high:
        out.append(Proposal(current + 1, f"latency {latency:.2f}s > {settings.latency_high:g}s"))
    idle_below = settings.idle_utilisation
    if (
        not out
        and current > 0
        and metrics.queued == 0
        and (metrics.utilisation is None or metrics.utilisation < idle_below)
    ):
        used = "no agents" if metrics.utilisation is None else f"{metrics.utilisation:.0%}"
        out.append(Proposal(current - 1, f"idle: nothing queued, utilisation {used}"))
    return out


def decide(
    metrics: PoolMetrics,
    current: int,
    pool: PoolSettings,
    settings: ScalingSettings,
    cooldowns: Cooldowns,
    now: float,
) -> Decision:
    """The pool's size after this evaluation, and why."""
    if current < pool.min:
        return Decision(pool.min, f"min {pool.min}", pool.min, 0.0)
    if current > pool.max:
        return Decision(pool.max, f"max {pool.max}", pool.max, 0.0)
    asked = proposals(metrics, current, settings)
    if not asked:
        return Decision(current, "steady", current, 0.0)
    best = max(asked, key=lambda p: p.desired)  # the largest scale-out, else the scale-in
    wanted = min(max(best.desired, pool.min), pool.max)
    if wanted == current:
        bound = "max" if best.desired > current else "min"
        return Decision(current, f"{best.reason}; at {bound}", current, 0.0)
    left = _cooldown_left(wanted > current, pool, settings, cooldowns, now)
    if left > 0:
        return Decision(current, f"{best.reason}; cooling down", wanted, left)
    return Decision(wanted, best.reason, wanted, 0.0)


def _cooldown_left(
    out: bool, pool: PoolSettings, settings: ScalingSettings, cooldowns: Cooldowns, now: float
) -> float:
    """Seconds before a scale-out (``out``) or scale-in may happen: a scale-out holds every
    scaling for ``cooldown_out``; any scaling holds a scale-in for ``cooldown_in``."""
    cool_out, cool_in = settings.cooldowns(pool)
    ends = []
    if cooldowns.last_out is not None:
        ends.append(cooldowns.last_out + cool_out)
    if not out and cooldowns.last_change is not None:
        ends.append(cooldowns.last_change + cool_in)
    return max([end - now for end in ends] + [0.0])
