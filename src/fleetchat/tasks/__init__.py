"""Tasks: allocation of tasks to agents (best, batch, auction) and performance from outcomes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetchat.tasks.allocator import TaskAllocator, allocate_best, decide, pick_best
from fleetchat.tasks.auction import Bid, ScoredBid, lowest_cost, rank_bids, weighted_rule
from fleetchat.tasks.performance import Outcome, update_performance
from fleetchat.tasks.policy import AllocationPolicy, Decision, TaskSpec, Verdict

if TYPE_CHECKING:
    from fleetchat.tasks.batch import Quality, assignment_quality, batch_assign, optimal_total

_BATCH = ("Quality", "assignment_quality", "batch_assign", "optimal_total")


def __getattr__(name: str) -> Any:
    """The batch names load scipy: imported on first use, not with fleetchat."""
    if name in _BATCH:
        from fleetchat.tasks import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AllocationPolicy",
    "Bid",
    "Decision",
    "Outcome",
    "Quality",
    "ScoredBid",
    "TaskAllocator",
    "TaskSpec",
    "Verdict",
    "allocate_best",
    "assignment_quality",
    "batch_assign",
    "decide",
    "lowest_cost",
    "optimal_total",
    "pick_best",
    "rank_bids",
    "update_performance",
    "weighted_rule",
]
