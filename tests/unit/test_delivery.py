"""Delivery semantics on every embedded backend, driven by a fake clock."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetchat import (
    ChatSettings,
    Hub,
    HubSettings,
    Priority,
    QosSettings,
)
from fleetchat.testing import FakeClock


def _settings(url: str, **chat: object) -> HubSettings:
    return HubSettings(url=url, chat=ChatSettings(**chat))  # type: ignore[arg-type]


def _qos(**kw: object) -> dict[Priority, QosSettings]:
    return {p: QosSettings(**kw) for p in Priority}  # type: ignore[arg-type]


@pytest.fixture
async def retry_hub(backend_url: str, clock: FakeClock) -> AsyncIterator[Hub]:
    """Ack timeout 1 s, four attempts: the backoff schedule 0.1, 0.2, 0.4 s is visible."""
    settings = _settings(backend_url, qos=_qos(ack_timeout=1.0, max_attempts=4))
    async with Hub(settings, clock=clock) as h:
        yield h


async def test_publish_reaches_every_member_except_the_sender(hub: Hub) -> None:
    subs = {a: await hub.subscribe(a, "cell") for a in ("r1", "r2", "r3")}
    msg = await hub.publish("cell", {"do": "pick"}, sender="r1")
    for agent in ("r2", "r3"):
        got = [d async for d in _drain(subs[agent])]
        assert msg.id in [d.message.id for d in got]
    assert msg.id not in [d.message.id for d in [d async for d in _drain(subs["r1"])]]


async def _drain(sub: object) -> AsyncIterator[object]:
    from fleetchat import Subscription

    assert isinstance(sub, Subscription)
    while True:
        batch = await sub.fetch(timeout=0)
        if batch is None:
            return
        for d in batch:
            yield d
        await batch.ack()


async def test_deliveries_come_highest_priority_first_and_fifo_within_a_priority(hub: Hub) -> None:
    await hub.channels.create("ops", announce=False)
    sub = await hub.subscribe("arm", "ops")
    order = ["low", "normal", "high", "critical", "low", "critical", "normal", "high"]
    sent = [await hub.publish("ops", i, sender="planner", priority=p) for i, p in enumerate(order)]
    got = []
    while (batch := await sub.fetch(timeout=0)) is not None:
        assert len({m.priority for m in batch.messages}) == 1
        got.extend(m.body for m in batch.messages)
        await batch.ack()
    rank = {"critical": 0, "high": 1, "normal": 2, "low": 3}
    expected = sorted(range(len(sent)), key=lambda i: (rank[order[i]], i))
    assert got == expected


async def test_unacked_delivery_is_retried_after_0_1_0_2_0_4_s(
    retry_hub: Hub, clock: FakeClock
) -> None:
    await retry_hub.channels.create("c", announce=False)
    sub = await retry_hub.subscribe("silent", "c")
    msg = await retry_hub.publish("c", "ping", sender="boss")
    first = await sub.next(timeout=0)
    assert (first.message.id, first.attempt) == (msg.id, 1)
    for attempt, backoff in ((2, 0.1), (3, 0.2), (4, 0.4)):
        await clock.advance(1.0)  # the ack timeout fails the attempt
        await clock.advance(backoff - 0.01)
        assert await sub.fetch(timeout=0) is None, f"attempt {attempt} came before its backoff"
        await clock.advance(0.01)
        again = await sub.next(timeout=0)
        assert (again.message.id, again.attempt) == (msg.id, attempt)


async def test_delivery_goes_to_dead_letters_after_the_attempt_budget(
    hub: Hub, clock: FakeClock
) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("silent", "c")
    receipts = hub.receipts("boss")
    msg = await hub.publish("c", "ping", sender="boss", priority="high")
    attempts = 0
    for _ in range(3):
        d = await sub.next(timeout=0)
        attempts += 1
        assert d.message.id == msg.id
        await clock.advance(5.0 + 5.0)  # ack timeout, then the backoff
    assert attempts == 3
    assert await sub.fetch(timeout=0) is None
    await _wait_for_dead_letters(hub, 1)
    (letter,) = await hub.dead_letters()
    assert (letter.member, letter.message.id, letter.reason, letter.attempts) == (
        "silent",
        msg.id,
        "ack_timeout",
        3,
    )
    receipt = await receipts.next(timeout=1)
    assert (receipt.status, receipt.member, receipt.attempts) == ("dead_lettered", "silent", 3)
    assert hub.metrics.snapshot().dead_lettered == 1


async def _wait_for_dead_letters(hub: Hub, n: int) -> None:
    from fleetchat.testing import assert_eventually

    async def enough() -> bool:
        return len(await hub.dead_letters()) >= n

    await assert_eventually(enough)


async def test_nack_retries_after_the_backoff(retry_hub: Hub, clock: FakeClock) -> None:
    await retry_hub.channels.create("c", announce=False)
    sub = await retry_hub.subscribe("arm", "c")
    await retry_hub.publish("c", "x", sender="boss")
    d = await sub.next(timeout=0)
    await d.nack()
    assert await sub.fetch(timeout=0) is None
    await clock.advance(0.1)
    again = await sub.next(timeout=0)
    assert again.attempt == 2
    assert retry_hub.metrics.snapshot().retries == 1


async def test_nack_with_dead_letter_skips_the_retries(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    await hub.publish("c", "poison", sender="boss")
    d = await sub.next(timeout=0)
    await d.nack(dead_letter=True)
    await _wait_for_dead_letters(hub, 1)
    assert (await hub.dead_letters())[0].reason == "rejected"


async def test_ack_timeout_and_attempts_can_differ_per_priority(
    backend_url: str, clock: FakeClock
) -> None:
    qos = _qos()
    qos[Priority.CRITICAL] = QosSettings(ack_timeout=0.5, max_attempts=5)
    async with Hub(_settings(backend_url, qos=qos), clock=clock) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        await hub.publish("c", "urgent", sender="boss", priority="critical")
        await hub.publish("c", "routine", sender="boss", priority="normal")
        urgent = await sub.next(timeout=0)
        routine = await sub.next(timeout=0)
        assert (urgent.body, routine.body) == ("urgent", "routine")
        await clock.advance(0.6)  # past the critical timeout only
        again = await sub.next(timeout=0)
        assert (again.body, again.attempt) == ("urgent", 2)
        await routine.ack()


async def test_expired_message_is_dropped_and_counted_never_delivered_late(
    hub: Hub, clock: FakeClock
) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    receipts = hub.receipts("boss")
    await hub.publish("c", "stale soon", sender="boss", expires_in=1.0)
    await clock.advance(1.5)
    assert await sub.fetch(timeout=0) is None
    assert hub.metrics.snapshot().expired == 1
    assert (await receipts.next(timeout=1)).status == "expired"


async def test_silent_member_does_not_delay_the_others(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("c", announce=False)
    silent = await hub.subscribe("silent", "c")
    busy = await hub.subscribe("worker", "c")
    await silent.fetch(timeout=0)
    for i in range(50):
        await hub.publish("c", i, sender="boss")
        d = await busy.next(timeout=0)
        assert d.body == i
        await d.ack()
        await clock.advance(0.2)  # the silent member's attempts time out meanwhile


async def test_closing_a_subscription_returns_unacked_deliveries_without_an_attempt(
    hub: Hub,
) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    msg = await hub.publish("c", "x", sender="boss")
    assert (await sub.next(timeout=0)).message.id == msg.id
    await sub.close()
    again = await (await hub.subscribe("arm")).next(timeout=0)
    assert (again.message.id, again.attempt) == (msg.id, 1)


async def test_receipt_says_delivered_when_the_member_acks(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    async with hub.receipts("boss") as receipts:
        msg = await hub.publish("c", "x", sender="boss")
        await (await sub.next(timeout=0)).ack()
        receipt = await receipts.next(timeout=1)
    assert (receipt.message_id, receipt.member, receipt.status) == (msg.id, "arm", "delivered")


async def test_metrics_count_volume_priorities_and_latency(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    await hub.publish("c", 1, sender="boss", priority="high")
    await hub.publish("c", 2, sender="boss", priority="low")
    await clock.advance(0.01)
    while (batch := await sub.fetch(timeout=0)) is not None:
        await batch.ack()
    snap = hub.metrics.snapshot()
    assert (snap.published, snap.delivered, snap.success_rate) == (2, 2, 1.0)
    assert snap.published_by_priority["high"] == 1
    assert snap.delivered_by_priority["low"] == 1
    assert 9 <= snap.latency_p50_ms <= 11.5


async def test_competing_subscriptions_of_one_agent_share_its_queue(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    a = await hub.subscribe("arm", "c")
    b = await hub.subscribe("arm")
    for i in range(4):
        await hub.publish("c", i, sender="boss")
    first = await a.fetch(max_items=2, timeout=0)
    second = await b.fetch(max_items=2, timeout=0)
    assert first is not None
    assert second is not None
    assert [m.body for m in first.messages] + [m.body for m in second.messages] == [0, 1, 2, 3]


async def test_unacked_delivery_comes_again_with_the_same_id_after_a_restart(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    async with Hub.open(url) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        acked = await hub.publish("c", "done", sender="boss")
        pending = await hub.publish("c", "todo", sender="boss")
        d = await sub.next(timeout=0)
        assert d.message.id == acked.id
        await d.ack()
        assert (await sub.next(timeout=0)).message.id == pending.id
    async with Hub.open(url) as hub:
        assert hub.channels.members("c") == ["arm"]
        sub = await hub.subscribe("arm")
        d = await sub.next(timeout=1)
        assert (d.message.id, d.body) == (pending.id, "todo")
        assert await sub.fetch(timeout=0) is None


async def test_fetch_waits_for_a_publish(hub: Hub) -> None:
    import asyncio

    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    waiting = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    await hub.publish("c", "wake", sender="boss")
    assert (await asyncio.wait_for(waiting, 5)).body == "wake"


async def test_next_times_out_on_the_clock(hub: Hub, clock: FakeClock) -> None:
    import asyncio

    sub = await hub.subscribe("arm")
    waiting = asyncio.ensure_future(sub.next(timeout=2.0))
    await clock.advance(2.0)
    with pytest.raises(TimeoutError):
        await waiting


async def test_iteration_stops_when_the_hub_closes(backend_url: str, clock: FakeClock) -> None:
    import asyncio

    hub = Hub(HubSettings(url=backend_url), clock=clock)
    await hub.start()
    sub = await hub.subscribe("arm")
    collected: list[object] = []

    async def consume() -> None:
        async for d in sub:
            collected.append(d)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    await hub.close()
    await asyncio.wait_for(task, 5)
    assert collected == []


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        HubSettings().url = "memory://"  # type: ignore[misc]


async def test_dead_letters_are_the_newest_ones_oldest_first(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    for i in range(5):
        await hub.publish("c", i, sender="boss")
        await (await sub.next(timeout=0)).nack(dead_letter=True)
    await _wait_for_dead_letters(hub, 5)
    assert [d.message.body for d in await hub.dead_letters(limit=2)] == [3, 4]
    assert await hub.dead_letters(limit=0) == []
    entries = await hub.dead_letter_entries(limit=3)
    assert [(seq, d.message.body) for seq, d in entries] == [(3, 2), (4, 3), (5, 4)]
    assert await hub.bus.purge("$dlq") == 5
    assert await hub.dead_letters() == []
    await hub.publish("c", "after", sender="boss")
    await (await sub.next(timeout=0)).nack(dead_letter=True)
    await _wait_for_dead_letters(hub, 1)
    assert await hub.dead_letter_entries(limit=10) == [
        (6, (await hub.dead_letters())[0]),
    ]
