"""An agent's performance score (0..1) learnt from its task outcomes.

The score breaks ties between equally capable agents (``rank_key``), so an agent that fails
or overruns its estimates loses work to a peer that does not, and wins it back by doing well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetchat.errors import InvalidInputError

__all__ = ["Outcome", "outcome_value", "update_performance"]


def _non_negative(value: float | None, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidInputError(f"{name} must be a non-negative number, not {value!r}", field=name)
    if math.isinf(value):
        raise InvalidInputError(f"{name} must be finite", field=name)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one task went on one agent."""

    succeeded: bool
    """False for failed, timed out or lost (the agent died) alike."""
    duration: float | None = None
    """Seconds from start to result; None when unknown."""
    estimate: float | None = None
    """Seconds the task was expected to take; None when there is no estimate."""

    def __post_init__(self) -> None:
        _non_negative(self.duration, "duration")
        _non_negative(self.estimate, "estimate")


def outcome_value(outcome: Outcome) -> float:
    """One outcome as a number in 0..1.

    0 for a failure. A success is worth 1 when it finished within its estimate (or either
    time is unknown), else ``estimate / duration``: twice the estimate is worth 0.5, so a
    late success still beats a failure but counts less the later it is.
    """
    if not outcome.succeeded:
        return 0.0
    if outcome.duration is None or outcome.estimate is None:
        return 1.0
    if outcome.duration <= outcome.estimate:
        return 1.0
    return outcome.estimate / outcome.duration


def update_performance(current: float, outcome: Outcome, *, weight: float = 0.2) -> float:
    """The performance score after one more outcome: an exponentially weighted moving average.

    ``new = (1 - weight) x current + weight x outcome_value(outcome)``.

    With the default weight 0.2 an outcome's influence halves about every 3 tasks
    (0.8 ** 3 = 0.51), so the score follows a change in an agent's behaviour within ten tasks
    or so, and one failure costs a perfect agent 0.2 (1.0 -> 0.8). The result stays in 0..1.

    Raises:
        InvalidInputError: ``current`` outside 0..1 or ``weight`` outside (0, 1].
    """
    if isinstance(current, bool) or not isinstance(current, int | float) or not 0 <= current <= 1:
        raise InvalidInputError(
            f"performance must be a number in 0..1, not {current!r}", field="performance"
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
        raise InvalidInputError(f"weight must be in (0, 1], not {weight!r}", field="weight")
    value = (1 - weight) * current + weight * outcome_value(outcome)
    return min(1.0, max(0.0, value))
