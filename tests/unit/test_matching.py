"""Capability matching: the weighted score of SPEC section 2, eligibility and ranking."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetchat.backends.memory import MemoryStore
from fleetchat.config import RegistrySettings
from fleetchat.errors import InvalidInputError
from fleetchat.models import AgentInfo
from fleetchat.registry.agents import AgentRegistry
from fleetchat.registry.matching import match_score, rank_agents
from fleetchat.testing import FakeClock


@pytest.fixture
async def registry(clock: FakeClock) -> AsyncIterator[AgentRegistry]:
    reg = AgentRegistry(MemoryStore(), clock, RegistrySettings())
    await reg.start()
    yield reg
    await reg.close()


def ids(registry: AgentRegistry, required: dict[str, float], **kwargs: Any) -> list[str]:
    return [m.agent.id for m in registry.find_best_agents(required, **kwargs)]


# -- the score --------------------------------------------------------------------------------


def test_score_weighs_proficiencies_by_the_required_weights() -> None:
    score = match_score({"nav": 0.9, "lift": 0.6}, {"nav": 2, "lift": 1})

    assert score == pytest.approx((2 * 0.9 + 1 * 0.6) / 3)
    assert score == pytest.approx(0.8)


def test_score_counts_a_missing_capability_as_zero() -> None:
    assert match_score({"nav": 1.0}, {"nav": 2, "lift": 1}) == pytest.approx(2 / 3)


def test_score_ignores_capabilities_that_are_not_required() -> None:
    assert match_score({"nav": 0.5, "weld": 1.0}, {"nav": 1}) == pytest.approx(0.5)


def test_score_of_an_agent_with_no_required_capability_is_zero() -> None:
    assert match_score({"weld": 1.0}, {"nav": 1, "lift": 3}) == 0.0


def test_score_of_a_perfect_agent_is_one() -> None:
    assert match_score({"nav": 1.0, "lift": 1.0}, {"nav": 5, "lift": 0.5}) == pytest.approx(1.0)


def test_score_with_equal_weights_is_the_mean_proficiency() -> None:
    score = match_score({"a": 0.2, "b": 0.4, "c": 0.9}, {"a": 1, "b": 1, "c": 1})

    assert score == pytest.approx(0.5)


async def test_find_reports_the_weighted_score(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 0.9, "lift": 0.6})

    (match,) = registry.find_best_agents({"nav": 2, "lift": 1}, min_confidence=0.5)

    assert match.score == pytest.approx(0.8)


async def test_score_of_exactly_min_confidence_is_kept(registry: AgentRegistry) -> None:
    # (2 x 0.9 + 1 x 0.6) / 3 is 0.8, which floating point computes as 0.7999999999999999.
    await registry.register("robot-1", capabilities={"nav": 0.9, "lift": 0.6})

    assert ids(registry, {"nav": 2, "lift": 1}, min_confidence=0.8) == ["robot-1"]


async def test_default_min_confidence_is_zero_point_eight(registry: AgentRegistry) -> None:
    await registry.register("exact", capabilities={"nav": 0.9, "lift": 0.6})
    await registry.register("short", capabilities={"nav": 0.9, "lift": 0.55})

    assert ids(registry, {"nav": 2, "lift": 1}) == ["exact"]


async def test_agent_missing_a_capability_falls_below_min_confidence(
    registry: AgentRegistry,
) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0})

    assert ids(registry, {"nav": 2, "lift": 1}) == []


async def test_agent_missing_a_capability_is_kept_at_a_lower_min_confidence(
    registry: AgentRegistry,
) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0})

    assert ids(registry, {"nav": 2, "lift": 1}, min_confidence=0.6) == ["robot-1"]


async def test_min_confidence_zero_keeps_an_agent_with_no_match(
    registry: AgentRegistry,
) -> None:
    await registry.register("robot-1", capabilities={"weld": 1.0})

    assert ids(registry, {"nav": 1}, min_confidence=0) == ["robot-1"]


# -- ranking ----------------------------------------------------------------------------------


async def test_agents_are_ranked_by_score(registry: AgentRegistry) -> None:
    await registry.register("good", capabilities={"nav": 0.85})
    await registry.register("best", capabilities={"nav": 0.99})
    await registry.register("better", capabilities={"nav": 0.9})

    assert ids(registry, {"nav": 1}) == ["best", "better", "good"]


async def test_equal_scores_are_ranked_by_performance(registry: AgentRegistry) -> None:
    await registry.register("slow", capabilities={"nav": 0.9}, performance=0.4)
    await registry.register("fast", capabilities={"nav": 0.9}, performance=0.9)

    assert ids(registry, {"nav": 1}) == ["fast", "slow"]


async def test_score_beats_performance(registry: AgentRegistry) -> None:
    await registry.register("fast", capabilities={"nav": 0.85}, performance=1.0)
    await registry.register("skilled", capabilities={"nav": 0.95}, performance=0.1)

    assert ids(registry, {"nav": 1}) == ["skilled", "fast"]


async def test_equal_score_and_performance_prefer_the_lower_load(
    registry: AgentRegistry,
) -> None:
    await registry.register("loaded", capabilities={"nav": 0.9}, capacity=10)
    await registry.register("idle", capabilities={"nav": 0.9}, capacity=10)
    registry.set_load("loaded", 5)
    registry.set_load("idle", 1)

    assert ids(registry, {"nav": 1}) == ["idle", "loaded"]


async def test_performance_beats_load(registry: AgentRegistry) -> None:
    await registry.register("idle", capabilities={"nav": 0.9}, performance=0.5, capacity=10)
    await registry.register("loaded", capabilities={"nav": 0.9}, performance=0.6, capacity=10)
    registry.set_load("loaded", 7)

    assert ids(registry, {"nav": 1}) == ["loaded", "idle"]


async def test_full_ties_are_ranked_by_id(registry: AgentRegistry) -> None:
    for agent_id in ("robot-c", "robot-a", "robot-b"):
        await registry.register(agent_id, capabilities={"nav": 0.9})

    assert ids(registry, {"nav": 1}) == ["robot-a", "robot-b", "robot-c"]


async def test_limit_keeps_the_best(registry: AgentRegistry) -> None:
    for agent_id, prof in (("a", 0.81), ("b", 0.99), ("c", 0.9)):
        await registry.register(agent_id, capabilities={"nav": prof})

    assert ids(registry, {"nav": 1}, limit=2) == ["b", "c"]


async def test_limit_above_the_matches_returns_them_all(registry: AgentRegistry) -> None:
    await registry.register("a", capabilities={"nav": 0.9})

    assert ids(registry, {"nav": 1}, limit=10) == ["a"]


def test_rank_agents_applies_the_given_threshold_and_confidence() -> None:
    agents = [
        AgentInfo(id="a", capabilities={"nav": 0.7}),
        AgentInfo(id="b", capabilities={"nav": 0.5}, capacity=2, active_tasks=1),
        AgentInfo(id="c", capabilities={"nav": 0.6}),
    ]

    ranked = rank_agents(agents, {"nav": 1.0}, min_confidence=0.55, load_threshold=0.5)

    assert [(a.id, s) for a, s in ranked] == [("a", pytest.approx(0.7)), ("c", 0.6)]


# -- eligibility ------------------------------------------------------------------------------


async def test_offline_agent_is_excluded(registry: AgentRegistry, clock: FakeClock) -> None:
    await registry.register("silent", capabilities={"nav": 1.0})
    await registry.register("alive", capabilities={"nav": 0.9})
    await clock.advance(2.0)
    registry.heartbeat("alive")

    await clock.advance(1.5)

    assert ids(registry, {"nav": 1}) == ["alive"]


async def test_draining_agent_is_excluded(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0})

    await registry.set_draining("robot-1")

    assert ids(registry, {"nav": 1}) == []


async def test_idle_capacity_one_agent_qualifies(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0}, capacity=1)

    assert ids(registry, {"nav": 1}) == ["robot-1"]


async def test_capacity_one_agent_with_a_task_is_excluded(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0}, capacity=1)

    registry.set_load("robot-1", 1)

    assert ids(registry, {"nav": 1}) == []


async def test_agent_at_the_load_threshold_is_excluded(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0}, capacity=5)

    registry.set_load("robot-1", 4)

    assert ids(registry, {"nav": 1}) == []


async def test_agent_below_the_load_threshold_is_kept(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0}, capacity=5)

    registry.set_load("robot-1", 3)

    assert ids(registry, {"nav": 1}) == ["robot-1"]


async def test_agent_over_capacity_is_excluded(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0}, capacity=2)

    registry.set_load("robot-1", 3)

    assert ids(registry, {"nav": 1}) == []


async def test_raising_capacity_makes_a_busy_agent_eligible(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 1.0}, capacity=1)
    registry.set_load("robot-1", 1)

    await registry.update("robot-1", capacity=2)

    assert ids(registry, {"nav": 1}) == ["robot-1"]


async def test_no_agents_means_no_matches(registry: AgentRegistry) -> None:
    assert registry.find_best_agents({"nav": 1}) == []


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "required",
    [
        {},
        {"nav": 0},
        {"nav": -1},
        {"nav": "heavy"},
        {"nav": None},
        {"nav": True},
        {"": 1},
        {1: 1},
        ["nav"],
        "nav",
        None,
    ],
)
async def test_invalid_required_weights_are_rejected(
    registry: AgentRegistry, required: Any
) -> None:
    with pytest.raises(InvalidInputError) as info:
        registry.find_best_agents(required)

    assert info.value.details == {"field": "required"}


@pytest.mark.parametrize("min_confidence", [-0.1, 1.5, "high", True])
async def test_invalid_min_confidence_is_rejected(
    registry: AgentRegistry, min_confidence: Any
) -> None:
    with pytest.raises(InvalidInputError):
        registry.find_best_agents({"nav": 1}, min_confidence=min_confidence)
