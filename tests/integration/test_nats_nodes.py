"""Several hub nodes on one nats-server, in one process: what crosses nodes.

Each Hub here is a node with its own NATS connections, as separate processes would have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from fleetchat import Hub, HubSettings
from fleetchat.backends.nats_layout import key_token
from fleetchat.backends.ports import CursorRecord
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


async def test_one_node_leads(nodes: list[Hub]) -> None:
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


async def test_a_retried_publish_is_stored_and_delivered_once(nodes: list[Hub]) -> None:
    """The consistency rule of docs/deployment.md: a publish is keyed by its message id."""
    import msgspec

    from fleetchat.models import Message

    a, b = nodes
    await a.channels.create("cell", announce=False)
    await _until(lambda: b.bus.channel("cell") is not None)
    on_b = await b.subscribe("r1", "cell")
    on_a = await a.subscribe("r2", "cell")
    await _until(lambda: a.bus.is_member("cell", "r1") and b.bus.is_member("cell", "r2"))
    m = Message(id="m-replayed", channel="cell", sender="ctl", body="once", created_at=1.0)
    first = await a.bus.publish([msgspec.structs.replace(m)], 5.0)
    again = await b.bus.publish([msgspec.structs.replace(m)], 5.0)  # a retry, on another node
    assert first[0].seq == again[0].seq
    assert [x.id for x in await a.channels.history("cell")] == ["m-replayed"]
    for sub in (on_a, on_b):  # each member once, whichever node serves it
        batch = await sub.fetch(timeout=5)
        assert batch is not None
        assert [x.id for x in batch.messages] == ["m-replayed"]
        await batch.ack()
        assert await sub.fetch(timeout=0.3) is None


async def test_failed_attempts_counted_on_a_node_that_died_carry_over(
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
    bus: Any = doomed.bus

    async def saved_retries() -> dict[str, int]:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await bus._kv_cursors.get(key_token("r1"))
        except KeyNotFoundError:
            return {}
        records = msgspec.json.decode(entry.value, type=list[CursorRecord])
        return next(r.retries for r in records if r.channel == "cell")

    async with asyncio.timeout(5):  # ...which its cursor save records (every 0.2 s)
        while (await saved_retries()).get(sent.id) != 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    last = await sub.fetch(timeout=5)  # take the third attempt, and die holding it
    assert last is not None
    assert [d.attempt for d in last] == [3]
    await bus.nc.close()  # no hand-back: as if the process were killed
    on_b = await b.subscribe("r1")
    # The attempt in flight on the dead node is not counted: the third is given again, and it
    # is the last one.
    again = await on_b.fetch(timeout=5)
    assert again is not None
    assert [(d.message.id, d.attempt) for d in again] == [(sent.id, 3)]
    await again.nack()

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
    await _until(lambda: "r1" not in bus._members)  # released: nothing held for a ghost


async def test_an_agent_served_by_a_second_node_moves_there(nodes: list[Hub]) -> None:
    from fleetchat.errors import ClosedError

    a, b = nodes
    await a.channels.create("cell", announce=False)
    on_a = await a.subscribe("r1", "cell")
    first = await a.publish("cell", "first", sender="ctl")
    held = await on_a.fetch(timeout=5)
    assert held is not None
    assert [m.id for m in held.messages] == [first.id]
    on_b = await b.subscribe("r1")  # the same agent on node b, node a not told to let go
    again = await on_b.fetch(timeout=5)  # node a saved its cursors and let go: unacked returns
    assert again is not None
    assert [m.id for m in again.messages] == [first.id]
    await again.ack()
    with pytest.raises(ClosedError, match="another hub node"):
        await on_a.fetch(timeout=1)
    second = await a.publish("cell", "second", sender="ctl")
    batch = await on_b.fetch(timeout=5)
    assert batch is not None
    assert [m.id for m in batch.messages] == [second.id]
    await batch.ack()


async def test_a_backlog_larger_than_the_queue_is_paged_in_in_order(
    nats_server: NatsServer,
) -> None:
    chat = ChatSettings(qos=dict.fromkeys(Priority, QOS), member_queue_limit=64)
    async with Hub(HubSettings(url=nats_server.url, chat=chat)) as hub:
        await hub.channels.create("cell", announce=False)
        await hub.channels.create("noise", announce=False)
        sub = await hub.subscribe("r1", "cell")
        await sub.close()
        sent = []
        for i in range(600):  # another channel's messages interleaved: seqs with gaps
            sent.append((await hub.publish("cell", i, sender="ctl")).id)
            await hub.publish("noise", i, sender="ctl")
        sub = await hub.subscribe("r1")
        got: list[str] = []
        async with asyncio.timeout(20):
            while len(got) < len(sent):
                batch = await sub.fetch(timeout=5)
                assert batch is not None
                assert len(batch) <= 64
                got.extend(m.id for m in batch.messages)
                await batch.ack()
        assert got == sent
        assert await sub.fetch(timeout=0.3) is None
