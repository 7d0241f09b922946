"""Several hub nodes on one nats-server, in one process: what crosses nodes.

Each Hub here is a node with its own NATS connections, as separate processes would have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.config import ChatSettings, QosSettings
from fleetchat.testing.services import NatsServer
from fleetchat.types import Priority

QOS = QosSettings(ack_timeout=1.0, max_attempts=3, backoff_base=0.05, backoff_max=0.2)


@pytest.fixture
async def nodes(nats_server: NatsServer) -> AsyncIterator[list[Hub]]:
    settings = HubSettings(url=nats_server.url, chat=ChatSettings(qos=dict.fromkeys(Priority, QOS)))
    hubs = [Hub(settings) for _ in range(2)]
    for h in hubs:
        await h.start()
    try:
        yield hubs
    finally:
        for h in hubs:
            await h.close()


async def _until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polling state another task changes
            await asyncio.sleep(0.02)


async def test_one_leader_runs_the_fan_out(nodes: list[Hub]) -> None:
    await _until(lambda: sum(h.coordinator.is_leader for h in nodes) == 1)
    leader = next(h for h in nodes if h.coordinator.is_leader)
    assert leader.coordinator.epoch > 0


async def test_a_channel_made_on_one_node_is_seen_on_the_other(nodes: list[Hub]) -> None:
    a, b = nodes
    await a.channels.create("cell", announce=False)
    await _until(lambda: b.bus.channel("cell") is not None)
    await b.subscribe("r1", "cell")
    await _until(lambda: a.channels.members("cell") == ["r1"])


async def test_publish_on_one_node_reaches_a_member_on_the_other(nodes: list[Hub]) -> None:
    a, b = nodes
    await a.channels.create("cell", announce=False)
    await _until(lambda: b.bus.channel("cell") is not None)
    sub = await b.subscribe("r1", "cell")
    await _until(lambda: a.bus.is_member("cell", "r1"))
    sent = [await a.publish("cell", i, sender="ctl") for i in range(20)]
    got: list[Any] = []
    async with asyncio.timeout(10):
        while len(got) < 20:
            batch = await sub.fetch(timeout=5)
            if batch is not None:
                got.extend(batch.messages)
                await batch.ack()
    assert [m.id for m in got] == [m.id for m in sent]  # in the channel's order


async def test_request_on_one_node_answered_on_the_other(nodes: list[Hub]) -> None:
    a, b = nodes
    sub = await b.subscribe("svc")

    async def serve() -> None:
        while True:
            for d in await sub.fetch(timeout=5) or []:
                if d.message.kind == "request":
                    await d.reply({"from": "b", "got": d.message.body})
                    return

    server = asyncio.create_task(serve())
    await _until(lambda: a.bus.channel("@svc") is not None)
    await asyncio.sleep(0.2)  # svc's node listens for it
    reply = await a.request("@svc", 42, sender="asker", timeout=5)
    assert reply.body == {"from": "b", "got": 42}
    await server


async def test_an_agent_moving_nodes_gets_what_it_left_unacked(nodes: list[Hub]) -> None:
    a, b = nodes
    await a.channels.create("cell", announce=False)
    on_a = await a.subscribe("r1", "cell")
    sent = await a.publish("cell", "work", sender="ctl")
    batch = await on_a.fetch(timeout=5)
    assert batch is not None
    assert [m.id for m in batch.messages] == [sent.id]
    await on_a.close()  # the connection to node a ends without an ack
    on_b = await b.subscribe("r1")
    again = await on_b.fetch(timeout=3)  # handed back at once, not after the ack timeout
    assert again is not None
    assert [m.id for m in again.messages] == [sent.id]
    await again.ack()
    assert await on_b.fetch(timeout=0.5) is None


async def test_the_registry_is_the_same_on_every_node(nodes: list[Hub]) -> None:
    a, b = nodes
    await a.registry.register("welder-1", capabilities={"weld": 0.9}, capacity=2)
    await _until(lambda: "welder-1" in b.registry)
    assert [m.agent.id for m in b.registry.find_best_agents({"weld": 1.0})] == ["welder-1"]
    a.registry.mark_offline("welder-1")
    await _until(lambda: b.registry.status("welder-1") == "offline")
    a.registry.heartbeat("welder-1")  # back, on node a: node b hears of it
    await _until(lambda: b.registry.status("welder-1") == "available")
    beat = a.registry.heartbeat("welder-1").last_heartbeat  # sent in the next batch (1 s)
    await _until(lambda: b.registry.get("welder-1").last_heartbeat == beat, timeout=5)
    await b.registry.deregister("welder-1")
    await _until(lambda: "welder-1" not in a.registry)


async def test_a_publish_and_a_fan_out_replayed_store_nothing_twice(nodes: list[Hub]) -> None:
    """The consistency rule of docs/deployment.md: copies are keyed by message id."""
    import msgspec

    from fleetchat.models import Message

    a, b = nodes
    await a.channels.create("cell", announce=False)
    await _until(lambda: b.bus.channel("cell") is not None)
    sub = await b.subscribe("r1", "cell")
    await _until(lambda: a.bus.is_member("cell", "r1"))
    m = Message(id="m-replayed", channel="cell", sender="ctl", body="once", created_at=1.0)
    await a.bus.publish([msgspec.structs.replace(m)], 5.0)
    await a.bus.publish([msgspec.structs.replace(m)], 5.0)  # a retried publish: deduped
    assert [x.id for x in await a.channels.history("cell")] == ["m-replayed"]
    # A fan-out replayed (a leader died before acking it): the inbox copy is deduped too.
    bus: Any = next(h for h in nodes if h.coordinator.is_leader).bus
    js = bus.nc.jetstream()
    stored = await js.get_msg(bus.layout.chat_stream, subject=bus.layout.chat("cell"), direct=False)
    data = msgspec.json.encode(msgspec.structs.replace(m, seq=stored.seq))
    await js.publish(bus.layout.inbox("r1", 2), data, headers={"Nats-Msg-Id": "m-replayed:r1"})
    got: list[Any] = []
    async with asyncio.timeout(10):
        while not got:
            batch = await sub.fetch(timeout=5)
            if batch is not None:
                got.extend(batch.messages)
                await batch.ack()
    assert [x.id for x in got] == ["m-replayed"]
    assert await sub.fetch(timeout=0.5) is None


async def test_a_delivery_whose_attempts_ran_out_on_a_dead_node_is_dead_lettered(
    nodes: list[Hub], nats_server: NatsServer
) -> None:
    a, b = nodes
    doomed = Hub(HubSettings(url=nats_server.url, chat=a.settings.chat))
    await doomed.start()
    await a.channels.create("cell", announce=False)
    await _until(lambda: doomed.bus.channel("cell") is not None)
    sub = await doomed.subscribe("r1", "cell")
    sent = await a.publish("cell", "cursed", sender="ctl")
    for attempt in (1, 2):  # fail twice on the doomed node...
        batch = await sub.fetch(timeout=5)
        assert batch is not None
        assert [d.attempt for d in batch] == [attempt]
        await batch.nack()
    last = await sub.fetch(timeout=5)  # ...take the last attempt, and die holding it
    assert last is not None
    assert [d.attempt for d in last] == [3]
    bus: Any = doomed.bus
    await bus.nc.close()  # no hand-back: as if the process were killed
    on_b = await b.subscribe("r1")
    # JetStream gives it out again after the ack wait, a fourth time: over the budget.
    assert await on_b.fetch(timeout=2.5) is None

    async def dead_lettered() -> bool:
        return any(x.message.id == sent.id for x in await b.dead_letters())

    async with asyncio.timeout(5):
        while not await dead_lettered():  # noqa: ASYNC110 - polling another node's work
            await asyncio.sleep(0.05)
    with contextlib.suppress(Exception):
        await doomed.close()


async def test_resume_before_attach_skips_settled_and_leaves_nothing_attached(
    nodes: list[Hub],
) -> None:
    a, _ = nodes
    await a.channels.create("cell", announce=False)
    first = await a.subscribe("r1", "cell")
    await first.close()
    sent = [await a.publish("cell", i, sender="ctl") for i in range(3)]
    # A reconnecting agent's hello says what it processed before it listens (session order).
    assert a.bus.settle_through("r1", "cell", sent[0].seq) == 0
    sub = await a.subscribe("r1")
    got: list[Any] = []
    async with asyncio.timeout(10):
        while len(got) < 2:
            batch = await sub.fetch(timeout=5)
            if batch is not None:
                got.extend(batch.messages)
                await batch.ack()
    assert [m.id for m in got] == [m.id for m in sent[1:]]
    await sub.close()
    bus: Any = a.bus
    await _until(lambda: "r1" not in bus._attached)  # released: nothing held for a ghost
