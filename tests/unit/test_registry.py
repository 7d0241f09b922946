"""The agent registry: validation, records, live updates, heartbeats and status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.backends.memory import MemoryStore
from fleetchat.config import RegistrySettings
from fleetchat.errors import AgentNotFoundError, InvalidIdError, InvalidInputError
from fleetchat.registry.agents import AgentRegistry, EventStream
from fleetchat.testing import FakeClock


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def registry(store: MemoryStore, clock: FakeClock) -> AsyncIterator[AgentRegistry]:
    reg = AgentRegistry(store, clock, RegistrySettings())
    await reg.start()
    yield reg
    await reg.close()


@pytest.fixture
def events(registry: AgentRegistry) -> EventStream:
    return registry.events()


async def kinds(stream: EventStream, count: int) -> list[tuple[str, str]]:
    """The next ``count`` events as (kind, agent_id); they are already queued."""
    return [(e.kind, e.agent_id) for e in [await stream.next(timeout=1) for _ in range(count)]]


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    ["", "-robot", "_robot", "robot 1", "robot/1", "r" * 129, "robot\n", "rööt", None, 7],
)
async def test_register_rejects_a_bad_id(registry: AgentRegistry, bad_id: Any) -> None:
    with pytest.raises(InvalidIdError) as info:
        await registry.register(bad_id)

    assert info.value.code == "invalid_id"


@pytest.mark.parametrize("proficiency", [-0.1, 1.01, "high", None, True])
async def test_register_rejects_a_proficiency_outside_zero_to_one(
    registry: AgentRegistry, proficiency: Any
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await registry.register("robot-1", capabilities={"nav": proficiency})

    assert info.value.details == {"field": "capabilities"}


@pytest.mark.parametrize("proficiency", [0, 0.0, 1, 1.0])
async def test_register_accepts_proficiency_at_the_bounds(
    registry: AgentRegistry, proficiency: float
) -> None:
    agent = await registry.register("robot-1", capabilities={"nav": proficiency})

    assert agent.capabilities == {"nav": float(proficiency)}


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "2", True])
async def test_register_rejects_a_capacity_below_one(
    registry: AgentRegistry, capacity: Any
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await registry.register("robot-1", capacity=capacity)

    assert info.value.details == {"field": "capacity"}


@pytest.mark.parametrize("labels", [{"site": 1}, {1: "north"}, ["site"]])
async def test_register_rejects_labels_that_are_not_strings(
    registry: AgentRegistry, labels: Any
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await registry.register("robot-1", labels=labels)

    assert info.value.details == {"field": "labels"}


async def test_register_rejects_resources_that_are_not_json(registry: AgentRegistry) -> None:
    with pytest.raises(InvalidInputError):
        await registry.register("robot-1", resources={"socket": object()})


async def test_register_rejects_a_performance_outside_zero_to_one(
    registry: AgentRegistry,
) -> None:
    with pytest.raises(InvalidInputError):
        await registry.register("robot-1", performance=1.5)


async def test_failed_register_stores_nothing(registry: AgentRegistry, store: MemoryStore) -> None:
    with pytest.raises(InvalidInputError):
        await registry.register("robot-1", capacity=0)

    assert "robot-1" not in registry
    assert store.load_agents() == []


# -- records ----------------------------------------------------------------------------------


async def test_register_records_the_agent(registry: AgentRegistry, clock: FakeClock) -> None:
    agent = await registry.register(
        "robot-1",
        capabilities={"nav": 0.9},
        capacity=3,
        performance=0.5,
        labels={"site": "north"},
        resources={"battery": 0.7},
    )

    assert registry.get("robot-1") == agent
    assert (agent.capabilities, agent.capacity, agent.performance) == ({"nav": 0.9}, 3, 0.5)
    assert (agent.labels, agent.resources) == ({"site": "north"}, {"battery": 0.7})
    assert agent.registered_at == agent.last_heartbeat == clock.time()


async def test_register_saves_the_agent_in_the_store(
    registry: AgentRegistry, store: MemoryStore
) -> None:
    agent = await registry.register("robot-1", capabilities={"nav": 0.9})

    assert store.load_agents() == [agent]


async def test_register_emits_a_registered_event(
    registry: AgentRegistry, events: EventStream
) -> None:
    await registry.register("robot-1")

    assert await kinds(events, 1) == [("registered", "robot-1")]


async def test_register_again_replaces_the_record(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 0.9}, capacity=1)

    await registry.register("robot-1", capabilities={"lift": 0.4}, capacity=4)

    agent = registry.get("robot-1")
    assert (agent.capabilities, agent.capacity) == ({"lift": 0.4}, 4)
    assert len(registry) == 1


async def test_register_again_keeps_registered_at(
    registry: AgentRegistry, clock: FakeClock
) -> None:
    first = await registry.register("robot-1")
    await clock.advance(0.5)

    again = await registry.register("robot-1")

    assert again.registered_at == first.registered_at
    assert again.last_heartbeat == first.registered_at + 0.5


async def test_register_again_keeps_active_tasks(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capacity=4)
    registry.set_load("robot-1", 2)

    again = await registry.register("robot-1", capacity=4)

    assert again.active_tasks == 2


async def test_register_again_emits_an_updated_event(
    registry: AgentRegistry, events: EventStream
) -> None:
    await registry.register("robot-1")

    await registry.register("robot-1", capacity=2)

    assert await kinds(events, 2) == [("registered", "robot-1"), ("updated", "robot-1")]


async def test_update_changes_capabilities_live(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 0.9})
    assert registry.find_best_agents({"lift": 1}) == []

    await registry.update("robot-1", capabilities={"lift": 0.95})

    assert [m.agent.id for m in registry.find_best_agents({"lift": 1})] == ["robot-1"]


async def test_update_leaves_unnamed_fields_alone(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capabilities={"nav": 0.9}, capacity=2, labels={"a": "b"})

    agent = await registry.update("robot-1", performance=0.3)

    assert (agent.capabilities, agent.capacity, agent.labels) == ({"nav": 0.9}, 2, {"a": "b"})
    assert agent.performance == 0.3


async def test_update_saves_the_change_in_the_store(
    registry: AgentRegistry, store: MemoryStore
) -> None:
    await registry.register("robot-1", capacity=1)

    await registry.update("robot-1", capacity=5)

    assert [a.capacity for a in store.load_agents()] == [5]


async def test_update_validates_capacity(registry: AgentRegistry) -> None:
    await registry.register("robot-1")

    with pytest.raises(InvalidInputError):
        await registry.update("robot-1", capacity=0)


async def test_update_of_an_unknown_agent_raises_not_found(registry: AgentRegistry) -> None:
    with pytest.raises(AgentNotFoundError) as info:
        await registry.update("ghost", capacity=2)

    assert info.value.code == "agent_not_found"


async def test_deregister_removes_the_agent(registry: AgentRegistry, store: MemoryStore) -> None:
    await registry.register("robot-1")

    await registry.deregister("robot-1")

    assert "robot-1" not in registry
    assert store.load_agents() == []


async def test_get_after_deregister_raises_not_found(registry: AgentRegistry) -> None:
    await registry.register("robot-1")
    await registry.deregister("robot-1")

    with pytest.raises(AgentNotFoundError):
        registry.get("robot-1")


async def test_deregister_emits_a_deregistered_event(
    registry: AgentRegistry, events: EventStream
) -> None:
    await registry.register("robot-1")

    await registry.deregister("robot-1")

    assert await kinds(events, 2) == [("registered", "robot-1"), ("deregistered", "robot-1")]


async def test_deregister_of_an_unknown_agent_raises_not_found(registry: AgentRegistry) -> None:
    with pytest.raises(AgentNotFoundError):
        await registry.deregister("ghost")


async def test_list_is_sorted_by_id(registry: AgentRegistry) -> None:
    for agent_id in ("robot-3", "robot-1", "robot-2"):
        await registry.register(agent_id)

    assert [a.id for a in registry.list()] == ["robot-1", "robot-2", "robot-3"]


async def test_list_filters_by_status(registry: AgentRegistry) -> None:
    await registry.register("robot-1")
    await registry.register("robot-2")
    await registry.set_draining("robot-2")

    assert [a.id for a in registry.list(status="draining")] == ["robot-2"]


# -- heartbeats -------------------------------------------------------------------------------


async def test_heartbeat_merges_resources(registry: AgentRegistry) -> None:
    await registry.register("robot-1", resources={"battery": 0.9, "pos": [0, 0]})

    agent = registry.heartbeat("robot-1", resources={"battery": 0.5, "temp": 41})

    assert agent.resources == {"battery": 0.5, "pos": [0, 0], "temp": 41}


async def test_heartbeat_without_resources_keeps_them(registry: AgentRegistry) -> None:
    await registry.register("robot-1", resources={"battery": 0.9})

    agent = registry.heartbeat("robot-1")

    assert agent.resources == {"battery": 0.9}


async def test_heartbeat_records_the_time(registry: AgentRegistry, clock: FakeClock) -> None:
    await registry.register("robot-1")
    await clock.advance(0.7)

    agent = registry.heartbeat("robot-1")

    assert agent.last_heartbeat == clock.time()


async def test_heartbeat_of_an_unknown_agent_raises_not_found(registry: AgentRegistry) -> None:
    with pytest.raises(AgentNotFoundError):
        registry.heartbeat("ghost")


# -- status -----------------------------------------------------------------------------------


async def test_new_agent_is_available(registry: AgentRegistry) -> None:
    await registry.register("robot-1")

    assert registry.status("robot-1") == "available"


async def test_agent_below_the_load_threshold_is_available(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capacity=5)

    registry.set_load("robot-1", 3)

    assert registry.status("robot-1") == "available"


async def test_agent_at_the_load_threshold_is_busy(registry: AgentRegistry) -> None:
    await registry.register("robot-1", capacity=5)

    registry.set_load("robot-1", 4)

    assert registry.status("robot-1") == "busy"


async def test_set_load_rejects_a_negative_count(registry: AgentRegistry) -> None:
    await registry.register("robot-1")

    with pytest.raises(InvalidInputError):
        registry.set_load("robot-1", -1)


async def test_draining_agent_is_draining(registry: AgentRegistry) -> None:
    await registry.register("robot-1")

    await registry.set_draining("robot-1")

    assert registry.status("robot-1") == "draining"


async def test_draining_can_be_switched_off(registry: AgentRegistry) -> None:
    await registry.register("robot-1")
    await registry.set_draining("robot-1")

    await registry.set_draining("robot-1", False)

    assert registry.status("robot-1") == "available"


async def test_agent_is_still_online_just_before_three_missed_heartbeats(
    registry: AgentRegistry, clock: FakeClock
) -> None:
    await registry.register("robot-1")

    await clock.advance(2.9)

    assert registry.status("robot-1") == "available"


async def test_agent_goes_offline_after_three_missed_heartbeats(
    registry: AgentRegistry, clock: FakeClock
) -> None:
    await registry.register("robot-1")

    await clock.advance(3.5)

    assert registry.status("robot-1") == "offline"


async def test_going_offline_emits_an_offline_event(
    registry: AgentRegistry, clock: FakeClock, events: EventStream
) -> None:
    await registry.register("robot-1")

    await clock.advance(3.5)

    assert await kinds(events, 2) == [("registered", "robot-1"), ("offline", "robot-1")]


async def test_heartbeats_keep_an_agent_online(registry: AgentRegistry, clock: FakeClock) -> None:
    await registry.register("robot-1")

    for _ in range(10):
        await clock.advance(1.0)
        registry.heartbeat("robot-1")

    assert registry.status("robot-1") == "available"


async def test_offline_agent_outranks_busy_and_draining(
    registry: AgentRegistry, clock: FakeClock
) -> None:
    await registry.register("robot-1")
    registry.set_load("robot-1", 1)
    await registry.set_draining("robot-1")

    await clock.advance(3.5)

    assert registry.status("robot-1") == "offline"


async def test_heartbeat_brings_an_offline_agent_back_online(
    registry: AgentRegistry, clock: FakeClock
) -> None:
    await registry.register("robot-1")
    await clock.advance(3.5)

    registry.heartbeat("robot-1")

    assert registry.status("robot-1") == "available"


async def test_coming_back_online_emits_an_online_event(
    registry: AgentRegistry, clock: FakeClock, events: EventStream
) -> None:
    await registry.register("robot-1")
    await clock.advance(3.5)

    registry.heartbeat("robot-1")

    assert await kinds(events, 3) == [
        ("registered", "robot-1"),
        ("offline", "robot-1"),
        ("online", "robot-1"),
    ]


async def test_heartbeat_of_an_online_agent_emits_no_event(
    registry: AgentRegistry, events: EventStream
) -> None:
    await registry.register("robot-1")
    await kinds(events, 1)

    registry.heartbeat("robot-1")

    with pytest.raises(TimeoutError):
        await events.next(timeout=0)


async def test_closed_event_stream_ends_iteration(
    registry: AgentRegistry, events: EventStream
) -> None:
    events.close()

    assert [e async for e in events] == []


# -- on a hub ---------------------------------------------------------------------------------


async def test_hub_registry_registers_and_matches(hub: Hub) -> None:
    await hub.registry.register("robot-1", capabilities={"nav": 0.9})

    assert [m.agent.id for m in hub.registry.find_best_agents({"nav": 1})] == ["robot-1"]


async def test_hub_registry_marks_silent_agents_offline(hub: Hub, clock: FakeClock) -> None:
    await hub.registry.register("robot-1")

    await clock.advance(3.5)

    assert hub.registry.status("robot-1") == "offline"


async def test_registry_survives_a_hub_restart_on_sqlite(tmp_path: Path, clock: FakeClock) -> None:
    settings = HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}")
    async with Hub(settings, clock=clock) as hub:
        await hub.registry.register(
            "robot-1", capabilities={"nav": 0.9}, capacity=3, labels={"site": "north"}
        )
        await hub.registry.register("robot-2")
        await hub.registry.update("robot-1", capabilities={"nav": 0.95})
        await hub.registry.deregister("robot-2")

    async with Hub(settings, clock=clock) as hub:
        agent = hub.registry.get("robot-1")
        assert [a.id for a in hub.registry.list()] == ["robot-1"]
        assert (agent.capabilities, agent.capacity, agent.labels) == (
            {"nav": 0.95},
            3,
            {"site": "north"},
        )


async def test_agents_reloaded_after_a_restart_get_a_full_heartbeat_window(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}")
    async with Hub(settings, clock=clock) as hub:
        await hub.registry.register("robot-1")
    await clock.advance(60)

    async with Hub(settings, clock=clock) as hub:
        await clock.advance(2.9)
        assert hub.registry.status("robot-1") == "available"
