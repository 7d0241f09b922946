"""Capability matching: the weighted score of SPEC.md section 2, and the ranking."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from fleetchat.errors import InvalidInputError
from fleetchat.models import AgentInfo

__all__ = [
    "agent_load",
    "check_capabilities",
    "check_required",
    "confident",
    "eligible_agents",
    "match_score",
    "rank_agents",
    "rank_key",
]


def check_capabilities(capabilities: object) -> dict[str, float]:
    """Validate ``{name: proficiency}`` with proficiencies in 0..1."""
    if not isinstance(capabilities, Mapping):
        raise InvalidInputError(
            "capabilities must map names to proficiencies", field="capabilities"
        )
    out: dict[str, float] = {}
    for name, value in capabilities.items():
        if not isinstance(name, str) or not name or len(name) > 128:
            raise InvalidInputError(f"invalid capability name {name!r}", field="capabilities")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InvalidInputError(
                f"proficiency of {name!r} must be a number in 0..1, not {value!r}",
                field="capabilities",
            )
        out[name] = float(value)
    return out


def check_required(required: object) -> dict[str, float]:
    """Validate ``{capability: weight}`` with positive weights."""
    if not isinstance(required, Mapping) or not required:
        raise InvalidInputError("required must map capability names to weights", field="required")
    out: dict[str, float] = {}
    for name, weight in required.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"invalid capability name {name!r}", field="required")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise InvalidInputError(
                f"weight of {name!r} must be a positive number", field="required"
            )
        out[name] = float(weight)
    return out


def match_score(capabilities: Mapping[str, float], required: Mapping[str, float]) -> float:
    """sum(weight x proficiency, over required capabilities the agent has) / sum(weights)."""
    total = sum(required.values())
    if total <= 0:
        return 0.0
    return sum(w * capabilities[c] for c, w in required.items() if c in capabilities) / total


def confident(score: float, min_confidence: float) -> bool:
    """Whether ``score`` reaches ``min_confidence``, forgiving float rounding in the sum
    (0.9 x 2 + 0.6 is 0.8 - 1e-16 in floats, and must count as 0.8)."""
    return score >= min_confidence - 1e-12


def agent_load(agent: AgentInfo, active: Mapping[str, int] | None = None) -> float:
    """Active tasks over capacity, before a new assignment (1.0 for a capacity of 0).

    ``active`` overrides ``agent.active_tasks`` for the agents it names: the task scheduler
    keeps its own counts and passes them here instead of writing them to every AgentInfo.
    """
    count = agent.active_tasks if active is None else active.get(agent.id, agent.active_tasks)
    return count / agent.capacity if agent.capacity > 0 else 1.0


def rank_key(agent: AgentInfo, score: float, load: float) -> tuple[float, float, float, str]:
    """Sort key, smallest first: higher score, then higher performance, then lower load, then
    id (so that equal agents are always taken in the same order)."""
    return (-score, -agent.performance, load, agent.id)


def eligible_agents(
    agents: Iterable[AgentInfo],
    required: Mapping[str, float],
    *,
    min_confidence: float,
    load_threshold: float,
    active: Mapping[str, int] | None = None,
) -> Iterator[tuple[AgentInfo, float, float]]:
    """``(agent, score, load)`` for every eligible agent, in the given order.

    Eligible: online, not draining, load before the assignment below ``load_threshold``, score
    at least ``min_confidence``. The cheap checks go first, so busy agents are never scored.
    """
    for agent in agents:
        if not agent.online or agent.draining:
            continue
        load = agent_load(agent, active)
        if load >= load_threshold:
            continue
        score = match_score(agent.capabilities, required)
        if confident(score, min_confidence):
            yield agent, score, load


def rank_agents(
    agents: Iterable[AgentInfo],
    required: Mapping[str, float],
    *,
    min_confidence: float,
    load_threshold: float,
    active: Mapping[str, int] | None = None,
) -> list[tuple[AgentInfo, float]]:
    """Eligible agents with their scores, best first.

    Eligible as in :func:`eligible_agents`; ranked by :func:`rank_key` (score, then
    performance, then lower load, then id). ``active`` as in :func:`agent_load`.
    """
    found = eligible_agents(
        agents,
        required,
        min_confidence=min_confidence,
        load_threshold=load_threshold,
        active=active,
    )
    ranked = sorted(found, key=lambda t: rank_key(*t))
    return [(agent, score) for agent, score, _ in ranked]
