"""What survives a restart of an embedded SQLite hub, and edge cases of settling."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetchat import ChatSettings, ClosedError, Hub, HubSettings, Priority, QosSettings
from fleetchat.testing import FakeClock


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}"


async def test_out_of_order_acks_survive_a_restart(tmp_path: Path) -> None:
    async with Hub.open(_url(tmp_path)) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        routine = await hub.publish("c", "routine", sender="boss", priority="normal")
        await hub.publish("c", "urgent", sender="boss", priority="critical")
        urgent = await sub.next(timeout=0)
        assert urgent.body == "urgent"
        await urgent.ack()  # acked before the older normal message: settled above the floor
    async with Hub.open(_url(tmp_path)) as hub:
        sub = await hub.subscribe("arm")
        again = await sub.next(timeout=1)
        assert again.message.id == routine.id
        assert await sub.fetch(timeout=0) is None


async def test_failed_attempts_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    qos = {p: QosSettings(ack_timeout=1.0, max_attempts=5) for p in Priority}
    settings = HubSettings(url=_url(tmp_path), chat=ChatSettings(qos=qos))
    async with Hub(settings, clock=clock) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        await hub.publish("c", "x", sender="boss")
        await sub.next(timeout=0)
        await clock.advance(1.0)  # attempt 1 times out
        await clock.advance(0.2)  # backoff passes, and cursors are flushed
    async with Hub(settings, clock=FakeClock()) as hub:
        d = await (await hub.subscribe("arm")).next(timeout=1)
        assert d.attempt == 2


async def test_a_members_own_messages_are_skipped_when_it_catches_up(tmp_path: Path) -> None:
    settings = HubSettings(url=_url(tmp_path), chat=ChatSettings(member_queue_limit=3))
    async with Hub(settings) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        await hub.subscribe("other", "c")
        for i in range(10):
            await hub.publish("c", f"theirs-{i}", sender="other")
            await hub.publish("c", f"mine-{i}", sender="arm")
        got = []
        while (batch := await sub.fetch(timeout=0)) is not None:
            got.extend(m.body for m in batch.messages)
            await batch.ack()
        assert got == [f"theirs-{i}" for i in range(10)]


async def test_a_retry_for_a_channel_left_meanwhile_is_not_delivered(
    hub: Hub, clock: FakeClock
) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    await hub.publish("c", "x", sender="boss")
    d = await sub.next(timeout=0)
    await d.nack()
    await hub.unsubscribe("arm", "c")
    await clock.advance(1.0)
    assert await sub.fetch(timeout=0) is None


async def test_acking_twice_changes_nothing(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    await hub.publish("c", "x", sender="boss")
    batch = await sub.fetch(timeout=0)
    assert batch is not None
    assert await batch.ack() == 1
    assert await batch.ack() == 0
    assert hub.metrics.snapshot().delivered == 1


async def test_a_closed_hub_refuses_publish_and_fetch(backend_url: str) -> None:
    hub = Hub.open(backend_url)
    await hub.start()
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    await hub.close()
    await hub.close()  # closing twice is fine
    with pytest.raises(ClosedError):
        await hub.publish("c", "x", sender="boss")
    with pytest.raises(ClosedError):
        await sub.fetch(timeout=0)
    with pytest.raises(ClosedError):
        await hub.start()


async def test_a_closed_subscription_refuses_fetch(hub: Hub) -> None:
    sub = await hub.subscribe("arm")
    await sub.close()
    with pytest.raises(ClosedError):
        await sub.fetch()
    assert [d async for d in sub] == []


async def test_deleting_an_ephemeral_channel_drops_its_ring(hub: Hub) -> None:
    await hub.channels.create("t", ephemeral=True, announce=False)
    await hub.publish("t", 1, sender="sensor")
    await hub.channels.delete("t")
    await hub.channels.create("t", ephemeral=True, announce=False)
    assert await hub.channels.history("t") == []


async def test_dead_letters_survive_a_restart(tmp_path: Path) -> None:
    async with Hub.open(_url(tmp_path)) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        msg = await hub.publish("c", "poison", sender="boss")
        await (await sub.next(timeout=0)).nack(dead_letter=True)
        from fleetchat.testing import assert_eventually

        await assert_eventually(hub.dead_letters)
    async with Hub.open(_url(tmp_path)) as hub:
        (letter,) = await hub.dead_letters()
        assert letter.message.id == msg.id
        assert await (await hub.subscribe("arm")).fetch(timeout=0) is None


async def test_seqs_never_rewind_after_retention_empties_a_channel(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = HubSettings(url=_url(tmp_path))
    async with Hub(settings, clock=clock) as hub:
        await hub.channels.create("c", retention_age=10, announce=False)
        for i in range(3):
            await hub.publish("c", i, sender="boss")
        await clock.advance(60)
        await hub.bus.sweep()
        assert await hub.channels.history("c") == []
    async with Hub(settings, clock=clock) as hub:
        msg = await hub.publish("c", "next", sender="boss")
        assert msg.seq == 4


async def test_closing_a_subscription_wakes_a_waiting_next(hub: Hub) -> None:
    import asyncio

    sub = await hub.subscribe("arm")
    waiting = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)
    await sub.close()
    with pytest.raises(ClosedError):
        await asyncio.wait_for(waiting, 5)


async def test_a_delivered_receipt_names_the_attempt(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    receipts = hub.receipts("boss")
    await hub.publish("c", "x", sender="boss")
    await (await sub.next(timeout=0)).nack()
    await clock.advance(1.0)
    await (await sub.next(timeout=0)).ack()
    assert (await receipts.next(timeout=1)).attempts == 2


async def test_an_undeliverable_dead_letter_is_not_dead_lettered_again(
    hub: Hub, clock: FakeClock
) -> None:
    await hub.channels.create("c", announce=False)
    watcher = await hub.subscribe("watcher")
    await hub.bus.add_member("$dlq", "watcher")
    arm = await hub.subscribe("arm", "c")
    await hub.publish("c", "poison", sender="boss")
    await (await arm.next(timeout=0)).nack(dead_letter=True)
    from fleetchat.testing import assert_eventually

    async def one_letter() -> bool:
        return len(await hub.dead_letters()) == 1

    await assert_eventually(one_letter)
    for _ in range(3):
        await (await watcher.next(timeout=0)).nack(dead_letter=True)
        await clock.advance(10)
        if await watcher.fetch(timeout=0) is None:
            break
    assert len(await hub.dead_letters()) == 1


async def test_a_request_reaches_a_registered_agent_without_an_inbox_yet(
    hub: Hub, clock: FakeClock
) -> None:
    import asyncio

    from fleetchat import RequestTimeoutError

    await hub.registry.register("calc")
    pending = asyncio.ensure_future(hub.request("calc", "q", sender="planner", timeout=1))
    await clock.advance(1)
    with pytest.raises(RequestTimeoutError):
        await pending
    assert hub.channels.members("@calc") == ["calc"]
