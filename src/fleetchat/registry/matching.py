"""Capability matching: the weighted score of SPEC.md section 2, and the ranking."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleetchat.errors import InvalidInputError
from fleetchat.models import AgentInfo

__all__ = ["check_capabilities", "check_required", "match_score", "rank_agents"]


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


def rank_agents(
    agents: Iterable[AgentInfo],
    required: Mapping[str, float],
    *,
    min_confidence: float,
    load_threshold: float,
) -> list[tuple[AgentInfo, float]]:
    """Eligible agents with their scores, best first.

    Eligible: online, not draining, load before the assignment below ``load_threshold``, score
    at least ``min_confidence``. Ranked by score, then performance, then lower load, then id.
    """
    scored = []
    for agent in agents:
        if not agent.online or agent.draining or agent.load() >= load_threshold:
            continue
        score = match_score(agent.capabilities, required)
        if score >= min_confidence - 1e-12:
            scored.append((agent, score))
    scored.sort(key=lambda pair: (-pair[1], -pair[0].performance, pair[0].load(), pair[0].id))
    return scored
