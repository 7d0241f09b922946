"""``auction`` mode: choosing among the bids of a call for proposals (contract net).

Only the selection lives here; the scheduler sends the call, collects bids within the window
and offers the task to the bidders in the order :func:`rank_bids` returns, moving to the next
one when an agent declines or does not answer.

A rule is a sort key over :class:`ScoredBid`: the smallest key wins and the others, in key
order, are the fall-backs. Any function of a bid's cost, ETA, match score, the agent's load and
performance will do; :func:`lowest_cost` is the default and :func:`weighted_rule` builds a
linear one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from fleetchat.errors import InvalidInputError
from fleetchat.models import AgentInfo
from fleetchat.registry.matching import eligible_agents
from fleetchat.tasks.policy import AllocationPolicy, TaskSpec

__all__ = ["Bid", "BidKey", "BidRule", "ScoredBid", "lowest_cost", "rank_bids", "weighted_rule"]


def _finite_non_negative(value: object, name: str) -> float:
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    raise InvalidInputError(f"{name} must be a finite number >= 0, not {value!r}", field=name)


@dataclass(frozen=True, slots=True)
class Bid:
    """An agent's answer to a call for proposals."""

    agent_id: str
    cost: float
    """The agent's own price for the task, in any unit the fleet agrees on (energy, distance,
    money); >= 0."""
    eta: float
    """Seconds until the agent expects to finish the task; >= 0."""

    def __post_init__(self) -> None:
        if not isinstance(self.agent_id, str) or not self.agent_id:
            raise InvalidInputError("a bid needs an agent id", field="agent_id")
        object.__setattr__(self, "cost", _finite_non_negative(self.cost, "cost"))
        object.__setattr__(self, "eta", _finite_non_negative(self.eta, "eta"))


@dataclass(frozen=True, slots=True)
class ScoredBid:
    """A bid with what the hub knows of its bidder."""

    bid: Bid
    score: float
    """The bidder's match score for the task."""
    load: float
    """The bidder's load before the assignment."""
    performance: float

    @property
    def agent_id(self) -> str:
        return self.bid.agent_id


BidKey = tuple[float | str, ...]
BidRule = Callable[[ScoredBid], BidKey]


def lowest_cost(bid: ScoredBid) -> BidKey:
    """The default rule: lowest cost, then lowest ETA, then highest match score, then agent id
    (so that the order never depends on the order bids arrived in)."""
    return (bid.bid.cost, bid.bid.eta, -bid.score, bid.agent_id)


def weighted_rule(*, cost: float = 1.0, eta: float = 0.0, score: float = 0.0) -> BidRule:
    """A rule that minimises ``cost_weight x cost + eta_weight x eta - score_weight x score``,
    ties broken by :func:`lowest_cost`.

    For example ``weighted_rule(cost=1, eta=0.5, score=10)`` trades one unit of cost for two
    seconds, or for a tenth of match score.

    Raises:
        InvalidInputError: a negative or non-finite weight, or all weights zero.
    """
    weights = [
        _finite_non_negative(w, f"{n} weight")
        for n, w in (("cost", cost), ("eta", eta), ("score", score))
    ]
    if not any(weights):
        raise InvalidInputError("at least one weight must be positive", field="weights")
    wc, we, ws = weights

    def rule(bid: ScoredBid) -> BidKey:
        return (wc * bid.bid.cost + we * bid.bid.eta - ws * bid.score, *lowest_cost(bid))

    return rule


def rank_bids(
    task: TaskSpec,
    bids: Iterable[Bid],
    agents: Collection[AgentInfo],
    policy: AllocationPolicy,
    active: Mapping[str, int] | None = None,
    *,
    rule: BidRule = lowest_cost,
) -> list[ScoredBid]:
    """The bids worth trying, best first: the winner, then the fall-backs in order.

    A bid counts only when its agent is eligible for ``task`` right now (registered, online,
    not draining, under the load threshold, score at least min_confidence): bidding does not
    bypass the rules of the other modes. When an agent bids twice, its last bid counts.
    """
    latest = {bid.agent_id: bid for bid in bids}
    bidders = [a for a in agents if a.id in latest]
    scored = [
        ScoredBid(latest[agent.id], score, load, agent.performance)
        for agent, score, load in eligible_agents(
            bidders,
            task.required,
            min_confidence=policy.min_confidence,
            load_threshold=policy.load_threshold,
            active=active,
        )
    ]
    scored.sort(key=rule)
    return scored
