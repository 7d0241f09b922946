"""The admission gate: while the hub is degraded, new work of low priority is refused.

Failure detection degrades the hub when its database is slow or its disk nearly full
(docs/operations.md#degraded-mode): ``publish`` and task ``submit`` then raise
:class:`~fleetchat.errors.DegradedError` for priorities at or below the configured one, so the
work that matters keeps its share of a struggling database. Each node has its own gate; the
leader's decision reaches the others as a broadcast.
"""

from __future__ import annotations

from fleetchat.errors import DegradedError
from fleetchat.types import PRIORITY_RANK, Priority

__all__ = ["AdmissionGate"]


class AdmissionGate:
    """Open unless :meth:`degrade` was called; :meth:`check` raises for refused priorities."""

    __slots__ = ("_rank", "reason", "refuses", "since")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.refuses: Priority | None = None
        self.since: float | None = None
        self._rank = 99  # refuse ranks >= this; 99: nothing

    @property
    def degraded(self) -> bool:
        return self.reason is not None

    def degrade(self, reason: str, refuses: Priority, since: float) -> None:
        self.reason = reason
        self.refuses = Priority(refuses)
        self.since = since
        self._rank = PRIORITY_RANK[self.refuses]

    def restore(self) -> None:
        self.reason = None
        self.refuses = None
        self.since = None
        self._rank = 99

    def check(self, priority: Priority | str) -> None:
        """Raise DegradedError if new work of ``priority`` is refused now."""
        if PRIORITY_RANK.get(priority, 2) >= self._rank:
            raise DegradedError(
                f"the hub is degraded ({self.reason}): {priority} work is refused for now; "
                f"retry later or use a priority above {self.refuses}",
                reason=self.reason,
                refuses=str(self.refuses),
            )
