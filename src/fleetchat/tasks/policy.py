"""What the allocator works on and what it answers: its policy, a task's demand, a decision.

These types sit below every allocation mode (best, batch, auction) so that the modes depend
on them and not on each other.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from fleetchat.errors import InvalidInputError
from fleetchat.models import AgentInfo
from fleetchat.registry.matching import check_required
from fleetchat.types import PRIORITY_RANK, Priority, parse_priority

__all__ = [
    "MODES",
    "AllocationMode",
    "AllocationPolicy",
    "Decision",
    "TaskSpec",
    "Verdict",
    "check_mode",
    "unknown_capabilities",
]

AllocationMode = Literal["best", "batch", "auction"]
MODES: tuple[AllocationMode, ...] = ("best", "batch", "auction")


def check_mode(value: object) -> AllocationMode:
    """Return ``value`` as an allocation mode, or raise InvalidInputError."""
    for mode in MODES:
        if value == mode:
            return mode
    raise InvalidInputError(
        f"allocation mode must be one of {', '.join(MODES)}, not {value!r}", field="mode"
    )


def _unit(value: object, name: str, *, allow_zero: bool = True) -> float:
    """``value`` as a float in 0..1 (in (0, 1] without ``allow_zero``), or InvalidInputError."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
        and value <= 1
    ):
        return float(value)
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    raise InvalidInputError(f"{name} must be a number in {interval}, not {value!r}", field=name)


@dataclass(frozen=True, slots=True)
class AllocationPolicy:
    """How tasks are matched to agents. Defaults are the customer's (SPEC.md sections 2-3)."""

    mode: AllocationMode = "best"
    """``best`` (one task at a time, the top candidate), ``batch`` (an optimal assignment of
    many waiting tasks at once) or ``auction`` (agents bid; see :mod:`fleetchat.tasks.auction`).
    Default ``best``."""
    load_threshold: float = 0.8
    """An agent takes a task only while its load before the assignment (active tasks /
    capacity) is below this; 0..1, default 0.8. At 0.8 an agent of capacity 5 takes a 4th task
    (load 3/5 = 0.6) but not a 5th (4/5 = 0.8)."""
    min_confidence: float = 0.8
    """Lowest match score an agent may have for a task; 0..1, default 0.8."""

    def __post_init__(self) -> None:
        check_mode(self.mode)
        _unit(self.load_threshold, "load_threshold", allow_zero=False)
        _unit(self.min_confidence, "min_confidence")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What the allocator needs to know of a task: its id, needs and priority.

    ``required`` is validated on construction ({capability: positive weight}), so the
    allocation functions can trust it and stay fast.
    """

    id: str
    required: Mapping[str, float]
    priority: Priority = Priority.NORMAL
    rank: int = field(init=False, repr=False, compare=False)
    """Index of ``priority`` in PRIORITY_RANK: 0 (critical) is served first."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidInputError("a task id must be a non-empty string", field="id")
        object.__setattr__(self, "required", check_required(self.required))
        priority = parse_priority(self.priority)
        object.__setattr__(self, "priority", priority)
        object.__setattr__(self, "rank", PRIORITY_RANK[priority])


class Verdict(enum.StrEnum):
    """The allocator's answer for one task."""

    ASSIGNED = "assigned"
    """An eligible agent was chosen."""
    WAITING = "waiting"
    """Nobody is eligible now, but a registered agent could take it once free, online or done
    draining: the task stays queued."""
    IMPOSSIBLE = "impossible"
    """No registered agent could ever take it, even idle: the scheduler rejects it."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The allocator's answer for one task."""

    task_id: str
    verdict: Verdict
    agent_id: str | None = None
    """The chosen agent (only when ASSIGNED)."""
    score: float = 0.0
    """The chosen agent's match score (only when ASSIGNED)."""
    unknown: tuple[str, ...] = ()
    """Required capabilities that no registered agent has, sorted (only when IMPOSSIBLE; may be
    empty when agents have the capabilities but too weakly to reach min_confidence)."""

    @property
    def assigned(self) -> bool:
        return self.verdict is Verdict.ASSIGNED


def unknown_capabilities(task: TaskSpec, agents: Iterable[AgentInfo]) -> tuple[str, ...]:
    """The capabilities ``task`` requires that no agent in ``agents`` has, sorted."""
    missing = set(task.required)
    for agent in agents:
        missing.difference_update(agent.capabilities)
        if not missing:
            break
    return tuple(sorted(missing))
