"""Edge cases: failing storage, bad arguments, bounded streams, sampled latency."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from fleetchat import (
    BackendError,
    ChatSettings,
    ConfigError,
    Hub,
    HubSettings,
    InvalidInputError,
)
from fleetchat.backends.sqlite import SqliteDatabase
from fleetchat.chat.publisher import build_message
from fleetchat.hub import parse_url
from fleetchat.testing import FakeClock, assert_eventually


@pytest.mark.parametrize("url", ["sqlite://", "redis://x", "postgresql://db"])
def test_unusable_backend_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_url(url)


def test_nats_urls_pick_the_distributed_bus() -> None:
    assert parse_url("nats://localhost:4222") == ("nats", None)
    assert parse_url("nats://a:4222,nats://b:4222") == ("nats", None)


def test_a_store_url_without_the_distributed_bus_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="distributed bus"):
        Hub(HubSettings(url="memory://", store_url="postgresql://x@db/fleet"))
    with pytest.raises(ConfigError, match="postgresql://"):
        Hub(HubSettings(url="nats://localhost:4222", store_url="mysql://db"))


def test_sqlite_urls_name_relative_and_absolute_paths() -> None:
    assert parse_url("sqlite:///hub.db") == ("sqlite", Path("hub.db"))
    assert parse_url("sqlite:////var/hub.db") == ("sqlite", Path("/var/hub.db"))
    assert parse_url("memory://") == ("memory", None)


async def test_a_database_from_a_newer_fleetchat_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(BackendError, match="schema version 99"):
        async with Hub.open(f"sqlite:///{path}"):
            pass


async def test_an_unopenable_database_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        async with Hub.open(f"sqlite:///{tmp_path}"):  # a directory, not a file
            pass


async def test_a_failed_commit_writes_nothing_of_its_batch(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "x.db")
    await db.start()
    try:
        good = db.write(lambda c: c.execute("INSERT INTO agents VALUES ('a', 'x')"))
        bad = db.write(lambda c: c.execute("INSERT INTO no_such_table VALUES (1)"))
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert all(isinstance(r, BackendError) for r in results)
        assert db.query("SELECT COUNT(*) FROM agents") == [(0,)]
        await db.write(lambda c: c.execute("INSERT INTO agents VALUES ('b', 'y')"))
        assert db.query("SELECT id FROM agents") == [("b",)]
    finally:
        await db.close()
    with pytest.raises(BackendError):
        db.query("SELECT 1")


async def test_a_failed_publish_gives_its_seq_back(tmp_path: Path) -> None:
    async with Hub.open(f"sqlite:///{tmp_path / 'hub.db'}") as hub:
        await hub.channels.create("c", announce=False)
        first = await hub.publish("c", 1, sender="boss")
        assert hub._db is not None
        hub._db.conn.execute("ALTER TABLE messages RENAME TO messages_away")
        with pytest.raises(BackendError):
            await hub.publish("c", 2, sender="boss")
        hub._db.conn.execute("ALTER TABLE messages_away RENAME TO messages")
        second = await hub.publish("c", 3, sender="boss")
        assert second.seq == first.seq + 1


async def test_a_lagging_member_counts_what_retention_removed(tmp_path: Path) -> None:
    settings = HubSettings(
        url=f"sqlite:///{tmp_path / 'hub.db'}", chat=ChatSettings(member_queue_limit=2)
    )
    async with Hub(settings) as hub:
        await hub.channels.create("c", retention_count=3, announce=False)
        sub = await hub.subscribe("slow", "c")
        for i in range(10):
            await hub.publish("c", i, sender="boss")
        await hub.bus.sweep()
        got = []
        while (batch := await sub.fetch(timeout=0)) is not None:
            got.extend(m.body for m in batch.messages)
            await batch.ack()
        assert got == [0, 1, 7, 8, 9]
        assert hub.metrics.snapshot().dropped == 5


async def test_latency_of_large_batches_is_sampled_with_weights(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    for i in range(100):
        await hub.publish("c", i, sender="boss")
    await clock.advance(0.002)
    batch = await sub.fetch(timeout=0)
    assert batch is not None
    assert len(batch) == 100
    await batch.ack()
    assert hub.metrics.latency.count == 100
    assert 1.5 <= hub.delivery_metrics().latency_p50_ms <= 2.5


async def test_bad_arguments_to_deliveries_and_fetch_are_invalid_input(hub: Hub) -> None:
    sub = await hub.subscribe("arm", "c")
    await hub.publish("c", "x", sender="boss")
    with pytest.raises(InvalidInputError):
        await sub.fetch(max_items=0)
    d = await sub.next(timeout=0)
    assert d.body == "x"
    assert "attempt 1" in repr(d)
    with pytest.raises(InvalidInputError):
        await d.nack(delay=-1)


async def test_a_batch_can_be_nacked_whole(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("c", announce=False)
    async with await hub.subscribe("arm", "c") as sub:
        for i in range(3):
            await hub.publish("c", i, sender="boss")
        batch = await sub.fetch(timeout=0)
        assert batch is not None
        assert await batch.nack(delay=0.5) == 3
        await clock.advance(0.5)
        again = await sub.fetch(timeout=0)
        assert again is not None
        assert [d.attempt for d in again] == [2, 2, 2]


def test_a_client_message_id_must_be_short(clock: FakeClock) -> None:
    with pytest.raises(InvalidInputError):
        build_message(ChatSettings(), clock, channel="c", sender="a", body=1, message_id="x" * 65)
    msg = build_message(ChatSettings(), clock, channel="c", sender="a", body=1, message_id="m-1")
    assert msg.id == "m-1"


async def test_receipt_streams_are_bounded_and_end_when_closed(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    sub = await hub.subscribe("arm", "c")
    receipts = hub.receipts("boss")
    receipts._items = type(receipts._items)(maxlen=2)
    for i in range(3):
        await hub.publish("c", i, sender="boss")
    batch = await sub.fetch(timeout=0)
    assert batch is not None
    await batch.ack()
    assert receipts.dropped == 1
    got = [await receipts.__anext__(), await receipts.__anext__()]
    assert [r.status for r in got] == ["delivered", "delivered"]
    waiting = asyncio.ensure_future(receipts.__anext__())
    await asyncio.sleep(0)
    receipts.close()
    with pytest.raises(StopAsyncIteration):
        await waiting
    with pytest.raises(Exception, match="closed"):
        await receipts.next(timeout=1)


async def test_registry_event_streams_wake_waiters_and_end_when_closed(hub: Hub) -> None:
    events = hub.registry.events()
    waiting = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0)
    await hub.registry.register("r1")
    assert (await waiting).kind == "registered"
    waiting = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0)
    events.close()
    with pytest.raises(StopAsyncIteration):
        await waiting


async def test_assert_eventually_gives_up_after_its_timeout() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="never"):
        await assert_eventually(never, timeout=0.02, message="never")

    def failing() -> None:
        raise AssertionError("still wrong")

    with pytest.raises(AssertionError):
        await assert_eventually(failing, timeout=0.02)


async def test_publishers_over_the_write_backlog_wait_their_turn(tmp_path: Path) -> None:
    from fleetchat import StorageSettings

    storage = StorageSettings(max_pending_writes=4, commit_max_batch=2)
    settings = HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}", storage=storage)
    async with Hub(settings) as hub:
        await hub.channels.create("c", announce=False)
        sent = await asyncio.wait_for(
            asyncio.gather(*[hub.publish("c", i, sender="boss") for i in range(40)]), 10
        )
        assert sorted(m.seq for m in sent) == list(range(1, 41))
        assert len(await hub.channels.history("c")) == 40
