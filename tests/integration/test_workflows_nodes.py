"""Workflows on two NATS + PostgreSQL nodes: started on a follower, run by the leader's
engine, its tasks done by an agent on the follower; a new leader finishes what the old one
left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.chat.subscription import Subscription
from fleetchat.testing.services import NatsServer

FLOW = {
    "schema": "fleetchat.workflow/v1",
    "name": "relay",
    "version": "1.0.0",
    "defaults": {"timeout": {"start_to_close": "30s"}, "retry": {"max_attempts": 1}},
    "steps": [
        {
            "id": "one",
            "type": "agent_task",
            "agent": {"capabilities": {"carry": 1.0}},
            "input": "${input.load}",
        },
        {"id": "rest", "type": "wait", "duration": "2s"},
        {
            "id": "two",
            "type": "agent_task",
            "agent": {"capabilities": {"carry": 1.0}},
            "input": "${steps.one.output}",
        },
    ],
}


async def until(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polling state other tasks change
            await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(nats_server: NatsServer, postgres_url: str) -> AsyncIterator[list[Hub]]:
    settings = HubSettings(url=nats_server.url, store_url=postgres_url)
    first = Hub(settings)
    await first.start()
    await until(lambda: first.coordinator.is_leader)
    second = Hub(settings)
    await second.start()
    hubs = [first, second]
    try:
        yield hubs
    finally:
        for hub in hubs:
            with contextlib.suppress(Exception):
                await hub.close()


async def serve(hub: Hub, sub: Subscription, agent: str, count: int) -> list[Any]:
    """Do ``count`` tasks offered to ``agent``, heartbeating it; their inputs."""
    seen: list[Any] = []
    while len(seen) < count:
        hub.registry.heartbeat(agent)
        batch = await sub.fetch(timeout=0.3)
        if batch is None:
            continue
        for m in batch.messages:
            if m.kind == "task" and m.body.get("action") == "offer":
                data = m.body["payload"]["input"]
                seen.append(data)
                await hub.tasks.start(m.body["task"], agent, m.body["attempt"])
                await hub.tasks.complete(m.body["task"], agent, m.body["attempt"], f"{data}+")
        await batch.ack()
    return seen


async def test_started_on_a_follower_run_by_the_leader(nodes: list[Hub]) -> None:
    leader, follower = nodes
    await follower.registry.register("amr-1", capabilities={"carry": 0.9})
    sub = await follower.subscribe("amr-1")
    await follower.workflows.register(FLOW)
    execution = await follower.workflows.start("relay", {"load": "crate"})
    seen = await asyncio.wait_for(serve(follower, sub, "amr-1", 2), 30)
    assert seen == ["crate", "crate+"]
    done = await follower.workflows.wait(execution.id, 20)
    assert (done.status, done.output) == ("completed", "crate++")
    assert leader.workflows.engine.active  # the leader's engine ran it
    assert not follower.workflows.engine.active


async def test_a_new_leader_finishes_a_waiting_execution(nodes: list[Hub]) -> None:
    leader, follower = nodes
    await follower.registry.register("amr-1", capabilities={"carry": 0.9})
    sub = await follower.subscribe("amr-1")
    await leader.workflows.register(FLOW)
    execution = await leader.workflows.start("relay", {"load": "box"})
    assert await asyncio.wait_for(serve(follower, sub, "amr-1", 1), 30) == ["box"]
    await until(
        lambda: (
            False
            if execution.id not in leader.workflows.engine.running
            else leader.workflows.engine.running[execution.id].runs.get("rest") is not None
        )
    )
    await leader.close()  # gone during the wait
    await until(lambda: follower.workflows.engine.active, 15)
    assert await asyncio.wait_for(serve(follower, sub, "amr-1", 1), 30) == ["box+"]
    done = await follower.workflows.wait(execution.id, 20)
    assert (done.status, done.output) == ("completed", "box++")
