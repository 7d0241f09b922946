"""Request/reply: correlation, first reply wins, collect, timeouts, late replies."""

from __future__ import annotations

import asyncio

import pytest

from fleetchat import (
    AgentNotFoundError,
    ChannelNotFoundError,
    Hub,
    InvalidInputError,
    RequestTimeoutError,
    Subscription,
)
from fleetchat.testing import FakeClock


def _respond(sub: Subscription, answer: object) -> asyncio.Task[None]:
    async def loop() -> None:
        async for d in sub:
            if d.message.kind == "request":
                await d.reply({"from": sub.agent_id, "answer": answer, "q": d.body})
            else:
                await d.ack()

    return asyncio.ensure_future(loop())


async def test_request_to_an_agent_returns_its_reply(hub: Hub) -> None:
    task = _respond(await hub.subscribe("calc"), 42)
    reply = await hub.request("calc", {"op": "add"}, sender="planner", timeout=1)
    assert reply.body == {"from": "calc", "answer": 42, "q": {"op": "add"}}
    assert (reply.kind, reply.sender) == ("reply", "calc")
    task.cancel()


async def test_reply_is_matched_by_correlation_id(hub: Hub) -> None:
    sub = await hub.subscribe("calc")
    first = asyncio.ensure_future(hub.request("calc", 1, sender="a", timeout=5))
    second = asyncio.ensure_future(hub.request("calc", 2, sender="b", timeout=5))
    await asyncio.sleep(0)
    d1 = await sub.next(timeout=0)
    d2 = await sub.next(timeout=0)
    await d2.reply("two")
    await d1.reply("one")
    assert (await first).body == "one"
    assert (await second).body == "two"
    assert (await first).correlation_id == d1.message.id


async def test_request_to_a_channel_takes_the_first_reply(hub: Hub) -> None:
    tasks = [_respond(await hub.subscribe(a, "helpers"), a) for a in ("h1", "h2", "h3")]
    reply = await hub.request("helpers", "who?", sender="planner", timeout=1)
    assert reply.sender in {"h1", "h2", "h3"}
    for t in tasks:
        t.cancel()


async def test_collect_gathers_every_reply_until_the_timeout(hub: Hub, clock: FakeClock) -> None:
    tasks = [_respond(await hub.subscribe(a, "helpers"), a) for a in ("h1", "h2", "h3")]
    pending = asyncio.ensure_future(
        hub.request("helpers", "census", sender="planner", timeout=2, collect=True)
    )
    for _ in range(20):
        await asyncio.sleep(0)
    await clock.advance(2)
    replies = await pending
    assert sorted(r.sender for r in replies) == ["h1", "h2", "h3"]
    for t in tasks:
        t.cancel()


async def test_request_times_out_with_request_timeout_error_naming_the_id(
    hub: Hub, clock: FakeClock
) -> None:
    await hub.subscribe("sleepy")
    pending = asyncio.ensure_future(hub.request("sleepy", "hello?", sender="planner", timeout=5))
    await clock.advance(5)
    with pytest.raises(RequestTimeoutError) as err:
        await pending
    assert isinstance(err.value, TimeoutError)
    assert err.value.code == "request_timeout"
    assert err.value.details["request_id"] in str(err.value)
    assert hub.metrics.snapshot().request_timeouts == 1


async def test_late_reply_is_dropped_and_counted(hub: Hub, clock: FakeClock) -> None:
    sub = await hub.subscribe("sleepy")
    pending = asyncio.ensure_future(hub.request("sleepy", "hello?", sender="planner", timeout=1))
    await asyncio.sleep(0)
    d = await sub.next(timeout=0)
    await clock.advance(1)
    with pytest.raises(RequestTimeoutError):
        await pending
    assert await d.reply("too late") is False
    assert hub.metrics.snapshot().late_replies == 1


async def test_requests_are_never_stored(hub: Hub) -> None:
    await hub.channels.create("helpers", announce=False)
    task = _respond(await hub.subscribe("h1", "helpers"), 1)
    await hub.request("helpers", "q", sender="planner", timeout=1)
    assert await hub.channels.history("helpers") == []
    task.cancel()


async def test_request_to_an_unknown_target_fails_at_once(hub: Hub) -> None:
    with pytest.raises(ChannelNotFoundError):
        await hub.request("nobody", "x", sender="planner")
    with pytest.raises(AgentNotFoundError):
        await hub.request("@nobody", "x", sender="planner")


async def test_request_rejects_a_non_positive_timeout(hub: Hub) -> None:
    await hub.subscribe("calc")
    with pytest.raises(InvalidInputError):
        await hub.request("calc", "x", sender="planner", timeout=0)


async def test_only_requests_can_be_replied_to(hub: Hub) -> None:
    sub = await hub.subscribe("r1", "c")
    await hub.publish("c", "plain", sender="r2")
    d = await sub.next(timeout=0)
    with pytest.raises(InvalidInputError):
        await d.reply("no")
