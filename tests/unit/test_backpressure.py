"""Bounded member queues: a stalled member costs bounded memory and delays nobody."""

from __future__ import annotations

import asyncio

import pytest

from fleetchat import BackpressureError, ChatSettings, Hub, HubSettings
from fleetchat.testing import FakeClock

LIMIT = 20


@pytest.fixture
async def small_hub(backend_url: str, clock: FakeClock) -> Hub:
    settings = HubSettings(url=backend_url, chat=ChatSettings(member_queue_limit=LIMIT))
    async with Hub(settings, clock=clock) as h:
        yield h  # type: ignore[misc]


async def test_stalled_member_stays_at_its_bound_while_others_get_everything(
    small_hub: Hub,
) -> None:
    hub = small_hub
    await hub.channels.create("c", announce=False)
    await hub.subscribe("stalled", "c")  # never fetches
    worker = await hub.subscribe("worker", "c")
    for i in range(10 * LIMIT):
        await hub.publish("c", i, sender="boss")
        d = await worker.next(timeout=0)
        assert d.body == i  # delivered at once, publisher never waited
        await d.ack()
    state = hub.bus._members["stalled"]
    assert state.queued <= LIMIT
    assert "c" in state.lagging


async def test_stalled_member_catches_up_from_the_log_in_order(small_hub: Hub) -> None:
    hub = small_hub
    await hub.channels.create("c", announce=False)
    stalled = await hub.subscribe("stalled", "c")
    for i in range(5 * LIMIT):
        await hub.publish("c", i, sender="boss")
    got: list[int] = []
    while (batch := await stalled.fetch(max_items=7, timeout=0)) is not None:
        got.extend(m.body for m in batch.messages)
        await batch.ack()
    assert got == list(range(5 * LIMIT))


async def test_lagging_ephemeral_member_loses_what_fell_out_of_retention(
    backend_url: str, clock: FakeClock
) -> None:
    settings = HubSettings(url=backend_url, chat=ChatSettings(member_queue_limit=5))
    async with Hub(settings, clock=clock) as hub:
        await hub.channels.create("t", ephemeral=True, retention_count=10, announce=False)
        sub = await hub.subscribe("slow", "t")
        for i in range(30):
            await hub.publish("t", i, sender="sensor")
        got: list[int] = []
        while (batch := await sub.fetch(timeout=0)) is not None:
            got.extend(m.body for m in batch.messages)
            await batch.ack()
        assert got[:5] == [0, 1, 2, 3, 4]  # what was queued before it lagged
        assert got[5:] == list(range(20, 30))  # the rest, from the in-memory ring
        assert hub.metrics.snapshot().dropped == 15


async def test_blocking_channel_makes_the_publisher_wait_then_raise(
    backend_url: str, clock: FakeClock
) -> None:
    settings = HubSettings(url=backend_url, chat=ChatSettings(member_queue_limit=3))
    async with Hub(settings, clock=clock) as hub:
        await hub.channels.create("orders", overflow="block", announce=False)
        await hub.subscribe("stalled", "orders")
        for i in range(3):
            await hub.publish("orders", i, sender="boss")
        pending = asyncio.ensure_future(
            hub.publish("orders", "one too many", sender="boss", timeout=2)
        )
        await clock.advance(1.9)
        assert not pending.done()
        await clock.advance(0.2)
        with pytest.raises(BackpressureError) as err:
            await pending
        assert err.value.code == "backpressure"
        assert err.value.details["member"] == "stalled"
        assert [m.body for m in await hub.channels.history("orders")] == [0, 1, 2]


async def test_blocking_channel_publisher_resumes_when_the_member_acks(
    backend_url: str, clock: FakeClock
) -> None:
    settings = HubSettings(url=backend_url, chat=ChatSettings(member_queue_limit=2))
    async with Hub(settings, clock=clock) as hub:
        await hub.channels.create("orders", overflow="block", announce=False)
        sub = await hub.subscribe("slow", "orders")
        await hub.publish("orders", 0, sender="boss")
        await hub.publish("orders", 1, sender="boss")
        pending = asyncio.ensure_future(hub.publish("orders", 2, sender="boss", timeout=5))
        await asyncio.sleep(0)
        assert not pending.done()
        batch = await sub.fetch(timeout=0)
        assert batch is not None
        await batch.ack()
        msg = await asyncio.wait_for(pending, 5)
        assert msg.body == 2
