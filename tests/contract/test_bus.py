"""The Bus contract, through the Hub, on every backend: memory, SQLite and NATS JetStream.

Real time (no fake clock: JetStream keeps its own timers), short QoS timeouts. What a user of
the hub relies on, whichever bus carries it: delivery to members only, strict priority across
all four levels, FIFO within a level, acks, retries with the attempt count, dead letters,
redelivery of what a consumer left open, history, ephemeral channels, request/reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.config import ChatSettings, QosSettings
from fleetchat.errors import ChannelExistsError, RequestTimeoutError
from fleetchat.types import Priority

FAST_QOS = QosSettings(ack_timeout=0.6, max_attempts=3, backoff_base=0.05, backoff_max=0.2)


def _settings(url: str) -> HubSettings:
    chat = ChatSettings(qos={p: FAST_QOS for p in Priority})
    return HubSettings(url=url, chat=chat)


@pytest.fixture(params=["memory", "sqlite", "nats"])
async def hub(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Hub]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("nats_server").url
    async with Hub(_settings(url)) as h:
        yield h


async def _take(sub: Any, n: int, timeout: float = 5.0) -> list[Any]:
    """``n`` deliveries (acked), in the order handed out."""
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            batch = await sub.fetch(timeout=timeout)
            if batch is None:
                continue
            out.extend(batch.messages)
            await batch.ack()
    return out


async def test_members_get_messages_and_the_sender_does_not(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    a = await hub.subscribe("a", "cell")
    b = await hub.subscribe("b", "cell")
    sent = await hub.publish("cell", {"n": 1}, sender="a")
    got = await _take(b, 1)
    assert [m.id for m in got] == [sent.id]
    assert got[0].seq == sent.seq > 0
    assert await a.fetch(timeout=0.3) is None


async def test_seqs_grow_within_a_channel(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    seqs = [(await hub.publish("cell", i, sender="x")).seq for i in range(5)]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5


async def test_strict_priority_across_four_levels_then_fifo(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("r", "cell")
    order = ["low", "normal", "high", "critical"] * 3
    for i, prio in enumerate(order):
        await hub.publish("cell", {"i": i, "p": prio}, sender="ctl", priority=prio)
    await asyncio.sleep(0.5)  # everything is waiting before the member looks
    got = await _take(sub, len(order))
    prios = [m.body["p"] for m in got]
    assert prios == ["critical"] * 3 + ["high"] * 3 + ["normal"] * 3 + ["low"] * 3
    for level in ("critical", "low"):
        idx = [m.body["i"] for m in got if m.body["p"] == level]
        assert idx == sorted(idx)


async def test_nack_retries_with_attempts_then_dead_letters(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("r", "cell")
    sent = await hub.publish("cell", "bad", sender="ctl")
    attempts = []
    async with asyncio.timeout(10):
        while len(attempts) < 3:
            batch = await sub.fetch(timeout=5)
            if batch is None:
                continue
            for d in batch:
                attempts.append(d.attempt)
                await d.nack()
    assert attempts == [1, 2, 3]
    async with asyncio.timeout(5):
        while not (letters := await hub.dead_letters()):  # noqa: ASYNC110 - polling
            await asyncio.sleep(0.05)
    assert letters[0].message.id == sent.id
    assert letters[0].member == "r"
    assert letters[0].attempts == 3
    assert await sub.fetch(timeout=0.5) is None


async def test_an_unacked_delivery_comes_back_after_the_ack_timeout(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("r", "cell")
    sent = await hub.publish("cell", "late", sender="ctl")
    first = await sub.fetch(timeout=5)
    assert first is not None
    assert [m.id for m in first.messages] == [sent.id]
    again = await sub.fetch(timeout=5)  # never acked: the ack timeout hands it out again
    assert again is not None
    assert [d.attempt for d in again] == [2]
    await again.ack()


async def test_history_in_order_with_start_limit_and_tail(hub: Hub) -> None:
    await hub.channels.create("log", announce=False)
    sent = [await hub.publish("log", i, sender="x") for i in range(6)]
    assert [m.body for m in await hub.channels.history("log")] == list(range(6))
    assert [m.body for m in await hub.channels.history("log", limit=2)] == [0, 1]
    assert [m.body for m in await hub.channels.history("log", limit=2, tail=True)] == [4, 5]
    from_third = await hub.channels.history("log", start_seq=sent[2].seq)
    assert [m.body for m in from_third] == [2, 3, 4, 5]


async def test_channels_and_members(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    with pytest.raises(ChannelExistsError):
        await hub.channels.create("cell")
    await hub.subscribe("a", "cell")
    await hub.subscribe("b", "cell")
    assert hub.channels.members("cell") == ["a", "b"]
    assert "cell" in hub.channels.memberships("a")
    await hub.unsubscribe("a", "cell")
    assert hub.channels.members("cell") == ["b"]
    assert "cell" in [c.name for c in hub.channels.list()]


async def test_a_member_that_left_gets_nothing_new(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("a", "cell")
    await hub.subscribe("b", "cell")
    await hub.unsubscribe("a", "cell")
    await hub.publish("cell", "after", sender="b")
    assert await sub.fetch(timeout=0.5) is None


async def test_ephemeral_channel_delivers_to_members(hub: Hub) -> None:
    await hub.channels.create("telemetry", ephemeral=True, announce=False)
    sub = await hub.subscribe("r", "telemetry")
    await asyncio.sleep(0.2)  # the member is attached before the message flies
    await hub.publish("telemetry", {"v": 1}, sender="sensor")
    got = await _take(sub, 1)
    assert got[0].body == {"v": 1}


async def test_request_and_reply(hub: Hub) -> None:
    sub = await hub.subscribe("svc")

    async def serve() -> None:
        while True:
            batch = await sub.fetch(timeout=5)
            for d in batch or []:
                if d.message.kind == "request":
                    await d.reply({"echo": d.message.body})
                    return

    server = asyncio.create_task(serve())
    await asyncio.sleep(0.2)
    reply = await hub.request("@svc", "ping", sender="asker", timeout=5)
    assert reply.body == {"echo": "ping"}
    await server


async def test_closing_a_subscription_hands_its_deliveries_to_the_next(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    first = await hub.subscribe("r", "cell")
    sent = await hub.publish("cell", "keep", sender="ctl")
    batch = await first.fetch(timeout=5)
    assert batch is not None
    await first.close()  # left open: goes back to the queue
    second = await hub.subscribe("r")
    got = await _take(second, 1)
    assert [m.id for m in got] == [sent.id]


def test_fast_qos_is_what_the_suite_assumes() -> None:
    assert dataclasses.asdict(FAST_QOS)["max_attempts"] == 3


async def test_purge_empties_the_history(hub: Hub) -> None:
    await hub.channels.create("log", announce=False)
    for i in range(3):
        await hub.publish("log", i, sender="x")
    assert await hub.bus.purge("log") == 3
    assert await hub.channels.history("log") == []
    await hub.publish("log", "after", sender="x")
    assert [m.body for m in await hub.channels.history("log")] == ["after"]


async def test_deleting_a_channel_removes_it_and_its_members(hub: Hub) -> None:
    await hub.channels.create("gone", announce=False)
    await hub.subscribe("a", "gone")
    await hub.channels.delete("gone")
    assert hub.bus.channel("gone") is None
    assert "gone" not in hub.channels.memberships("a")


async def test_an_expired_message_is_not_delivered(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("r", "cell")
    await hub.publish("cell", "stale", sender="ctl", expires_in=0.2)
    await asyncio.sleep(0.5)
    fresh = await hub.publish("cell", "fresh", sender="ctl")
    got = await _take(sub, 1)
    assert [m.id for m in got] == [fresh.id]


async def test_a_nack_with_a_delay_waits_that_long(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("r", "cell")
    await hub.publish("cell", "later", sender="ctl")
    batch = await sub.fetch(timeout=5)
    assert batch is not None
    t0 = asyncio.get_running_loop().time()
    await batch.nack(delay=0.4)
    again = await sub.fetch(timeout=5)
    assert again is not None
    assert asyncio.get_running_loop().time() - t0 >= 0.35
    assert [d.attempt for d in again] == [2]
    await again.ack()


async def test_history_by_time(hub: Hub) -> None:
    await hub.channels.create("log", announce=False)
    first = await hub.publish("log", "old", sender="x")
    await asyncio.sleep(0.05)
    second = await hub.publish("log", "new", sender="x")
    since = await hub.channels.history("log", since=second.created_at)
    assert [m.id for m in since] == [second.id]
    until = await hub.channels.history("log", until=first.created_at)
    assert [m.id for m in until] == [first.id]


async def test_resume_settles_what_the_agent_already_processed(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("r", "cell")
    await sub.close()
    sent = [await hub.publish("cell", i, sender="ctl") for i in range(4)]
    await asyncio.sleep(0.3)
    # The agent says (hello resume) it had processed everything through the second.
    hub.bus.settle_through("r", "cell", sent[1].seq)
    again = await hub.subscribe("r")
    got = await _take(again, 2)
    assert [m.id for m in got] == [m.id for m in sent[2:]]


async def test_a_request_to_nobody_listening_times_out(hub: Hub) -> None:
    await hub.registry.register("ghost")
    with pytest.raises(RequestTimeoutError):
        await hub.request("@ghost", "anyone?", sender="asker", timeout=0.3)


async def test_an_ephemeral_delivery_nacked_comes_back(hub: Hub) -> None:
    await hub.channels.create("telemetry", ephemeral=True, announce=False)
    sub = await hub.subscribe("r", "telemetry")
    await asyncio.sleep(0.2)
    await hub.publish("telemetry", "again", sender="sensor")
    first = await sub.fetch(timeout=5)
    assert first is not None
    await first.nack()
    again = await sub.fetch(timeout=5)
    assert again is not None
    assert [(d.message.body, d.attempt) for d in again] == [("again", 2)]
    await again.ack()


async def test_resume_settles_deliveries_already_waiting(hub: Hub) -> None:
    await hub.channels.create("cell", announce=False)
    sub = await hub.subscribe("r", "cell")
    sent = [await hub.publish("cell", i, sender="ctl") for i in range(3)]
    await asyncio.sleep(0.3)  # queued for the member, not fetched
    assert hub.bus.settle_through("r", "cell", sent[1].seq) >= 0
    got = await _take(sub, 1)
    assert [m.id for m in got] == [sent[2].id]
    assert await sub.fetch(timeout=0.3) is None
