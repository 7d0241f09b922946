"""Tasks on the distributed hub: two nodes on one nats-server and one PostgreSQL. The leader
schedules; agents report to whichever node they use; a new leader takes the tasks over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.chat.subscription import Subscription
from fleetchat.config import TaskSettings
from fleetchat.errors import TaskNotHeldError
from fleetchat.tasks.records import TaskRecord
from fleetchat.testing.services import NatsServer


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polling state other tasks change
            await asyncio.sleep(0.02)


async def offers(sub: Subscription, timeout: float = 10.0) -> list[dict[str, Any]]:
    batch = await sub.fetch(timeout=timeout)
    assert batch is not None
    await batch.ack()
    return [m.body for m in batch.messages if m.kind == "task"]


@pytest.fixture
async def nodes(nats_server: NatsServer, postgres_url: str) -> AsyncIterator[list[Hub]]:
    settings = HubSettings(
        url=nats_server.url, store_url=postgres_url, tasks=TaskSettings(offer_timeout=2.0)
    )
    first = Hub(settings)
    await first.start()
    await until(lambda: first.coordinator.is_leader)
    second = Hub(settings)
    await second.start()
    hubs = [first, second]
    beat = asyncio.get_running_loop().create_task(_heartbeats(hubs))
    try:
        yield hubs
    finally:
        beat.cancel()
        for hub in hubs:
            with contextlib.suppress(Exception):
                await hub.close()


async def _heartbeats(hubs: list[Hub]) -> None:
    """Agents in these tests have no connection: keep them alive on their node."""
    while True:
        for hub in hubs:
            for agent in hub.registry.list():
                if agent.id.startswith("arm"):
                    with contextlib.suppress(Exception):
                        hub.registry.heartbeat(agent.id)
        await asyncio.sleep(0.3)


async def finished(hub: Hub, task_id: str) -> TaskRecord:
    async with asyncio.timeout(15):
        while True:
            task = await hub.tasks.get(task_id)
            if task.terminal:
                return task
            await asyncio.sleep(0.05)


async def test_the_leader_offers_and_an_agent_on_the_other_node_completes(
    nodes: list[Hub],
) -> None:
    leader, follower = nodes
    await follower.registry.register("arm-1", capabilities={"weld": 0.9})
    await until(lambda: "arm-1" in leader.registry)
    sub = await follower.subscribe("arm-1")
    task = await follower.tasks.submit({"weld": 1.0}, payload=7)  # submitted on the follower
    (offer,) = await offers(sub)
    assert (offer["action"], offer["task"]) == ("offer", task.id)
    await follower.tasks.start(task.id, "arm-1", offer["attempt"])
    done = await follower.tasks.complete(task.id, "arm-1", offer["attempt"], "welded")
    assert done.state == "succeeded"
    again = await leader.tasks.complete(task.id, "arm-1", offer["attempt"], "again")
    assert again.result == "welded"  # the holder repeating itself on the other node: dropped
    with pytest.raises(TaskNotHeldError):  # another agent's result: refused
        await leader.tasks.complete(task.id, "arm-9", offer["attempt"], "mine")
    await until(lambda: leader.scheduler.load("arm-1") == 0)  # the leader heard of it
    stored = await leader.tasks.get(task.id)
    assert (stored.result, stored.dropped_results) == ("welded", 2)


async def test_a_new_leader_takes_over_the_unfinished_tasks(nodes: list[Hub]) -> None:
    leader, follower = nodes
    for agent, skill in (("arm-1", 0.95), ("arm-2", 0.85)):
        await follower.registry.register(agent, capabilities={"weld": skill})
    await until(lambda: "arm-2" in leader.registry)
    subs = {a: await follower.subscribe(a) for a in ("arm-1", "arm-2")}
    task = await leader.tasks.submit({"weld": 1.0})
    await offers(subs["arm-1"])  # offered to arm-1, which never answers
    await leader.close()  # the leader goes away with the offer open
    await until(lambda: follower.coordinator.is_leader and follower.scheduler.running)
    (offer,) = await offers(subs["arm-2"])  # the new leader ran the offer timeout
    assert (offer["task"], offer["attempt"]) == (task.id, 2)
    await follower.tasks.start(task.id, "arm-2", 2)
    await follower.tasks.complete(task.id, "arm-2", 2, "done")
    done = await finished(follower, task.id)
    assert [(a.agent, a.outcome) for a in done.attempts] == [
        ("arm-1", "offer_timeout"),
        ("arm-2", "succeeded"),
    ]
