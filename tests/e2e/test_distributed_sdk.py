"""SDK agents over real WebSockets on two hub nodes sharing one nats-server.

What a user of a distributed hub sees: an agent on one node hears an agent on the other, in
priority order; requests cross nodes; an agent that reconnects to another node gets what it
had not acked; REST on any node sees every agent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetchat import Message
from fleetchat.client import HubClient
from fleetchat.config import ChatSettings, QosSettings
from fleetchat.testing import assert_eventually
from fleetchat.testing.services import NatsServer
from fleetchat.types import Priority
from tests.e2e.conftest import MakeAgent, RunningServer, StartServer, chats

pytestmark = pytest.mark.slow


@pytest.fixture
async def two_nodes(nats_server: NatsServer, start_server: StartServer) -> list[RunningServer]:
    """Two nodes (agents and tokens in memory: the registry travels between nodes anyway).
    nats_server comes first, so it is torn down last."""
    chat = ChatSettings(qos={p: QosSettings(ack_timeout=2.0) for p in Priority})
    nodes = []
    for _ in range(2):
        node = await start_server(auth=False, url=nats_server.url, chat=chat)
        nodes.append(node)
    return nodes


async def test_agents_on_two_nodes_chat_in_priority_order(
    two_nodes: list[RunningServer], agents: MakeAgent
) -> None:
    a, b = two_nodes
    got: list[Message] = []
    listener = agents("robot", hub=b.url, capabilities={"weld": 0.9})

    @listener.on_message("cell")
    async def on_message(msg: Message) -> None:
        got.append(msg)

    await listener.start()
    planner = agents("planner", hub=a.url)
    await planner.start()
    for prio in ("low", "normal", "high", "critical"):
        await planner.publish("cell", {"p": prio}, priority=prio)
    await assert_eventually(lambda: len(chats(got)) == 4, timeout=10)
    assert {m["p"] for m in chats(got)} == {"low", "normal", "high", "critical"}
    assert all(m.sender == "planner" for m in got if m.kind != "system")


async def test_a_request_crosses_nodes(two_nodes: list[RunningServer], agents: MakeAgent) -> None:
    a, b = two_nodes
    service = agents("svc", hub=b.url)

    @service.on_request()
    async def answer(msg: Message) -> Any:
        return {"node": "b", "echo": msg.body}

    await service.start()
    asker = agents("asker", hub=a.url)
    await asker.start()
    await asyncio.sleep(0.3)  # svc's node listens for it
    reply = await asker.request("svc", "ping", timeout=5)
    assert reply.body == {"node": "b", "echo": "ping"}


async def test_rest_on_any_node_sees_every_agent(
    two_nodes: list[RunningServer], agents: MakeAgent
) -> None:
    a, b = two_nodes
    robot = agents("welder-1", hub=a.url, capabilities={"weld": 0.95})
    await robot.start()
    async with HubClient(b.url) as rest:

        async def seen() -> bool:
            return any(x.id == "welder-1" for x in await rest.list_agents())

        await assert_eventually(seen, timeout=10)


async def test_an_agent_moving_nodes_gets_what_it_had_not_acked(
    two_nodes: list[RunningServer], agents: MakeAgent
) -> None:
    a, b = two_nodes
    stuck = asyncio.Event()
    first = agents("worker", hub=a.url)

    @first.on_message("jobs")
    async def hang(msg: Message) -> None:
        if msg.kind != "system":
            stuck.set()
            await asyncio.sleep(3600)  # never acks

    await first.start()
    sender = agents("boss", hub=b.url)
    await sender.start()
    sent = await sender.publish("jobs", "job-1")
    await asyncio.wait_for(stuck.wait(), 10)
    await first.close(drain=False)
    got: list[Message] = []
    second = agents("worker", hub=b.url)

    @second.on_message("jobs")
    async def done(msg: Message) -> None:
        got.append(msg)

    await second.start()
    await assert_eventually(lambda: any(m.id == sent.message_id for m in got), timeout=10)
