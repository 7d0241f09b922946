"""ChannelLog contract: MemoryLog and SqliteLog behave the same (see backends/ports.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from fleetchat.backends.ports import ChannelLog, CursorRecord
from fleetchat.backends.sqlite import SqliteDatabase, SqliteLog
from fleetchat.config import StorageSettings
from fleetchat.errors import BackpressureError
from fleetchat.models import Channel, Message

Commit = Callable[[], Awaitable[None]]

T0 = 1_700_000_000.0


def msg(seq: int, channel: str = "ops", *, at: float | None = None) -> Message:
    """Message ``seq`` of ``channel``, created ``seq`` seconds after T0 unless ``at`` is given."""
    return Message(
        id=f"{channel}-{seq}",
        channel=channel,
        seq=seq,
        sender="robot-1",
        body={"n": seq},
        created_at=T0 + seq if at is None else at,
    )


def msgs(first: int, last: int, channel: str = "ops") -> list[Message]:
    return [msg(s, channel) for s in range(first, last + 1)]


def seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages]


# -- channels ---------------------------------------------------------------------------------


async def test_saved_channel_is_loaded(channel_log: ChannelLog) -> None:
    channel = Channel(name="ops", type="task", retention_count=50, created_at=T0)

    await channel_log.save_channel(channel)

    assert channel_log.load_channels() == [channel]


async def test_saving_a_channel_again_replaces_it(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops", announce=True))

    await channel_log.save_channel(Channel(name="ops", announce=False, writers=["boss"]))

    assert channel_log.load_channels() == [Channel(name="ops", announce=False, writers=["boss"])]


async def test_load_channels_of_empty_log_is_empty(channel_log: ChannelLog) -> None:
    assert channel_log.load_channels() == []


# -- members and cursors ----------------------------------------------------------------------


async def test_added_member_is_loaded_with_its_cursor(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops"))
    cursor = CursorRecord(member="robot-1", channel="ops", floor=3, above=[5], retries={"m": 1})

    await channel_log.add_member("ops", "robot-1", cursor)

    assert channel_log.load_members() == [("ops", "robot-1")]
    assert channel_log.load_cursors() == [cursor]


async def test_removed_member_loses_its_cursor(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops"))
    await channel_log.add_member("ops", "robot-1", CursorRecord("robot-1", "ops", 0))
    await channel_log.add_member("ops", "robot-2", CursorRecord("robot-2", "ops", 0))

    await channel_log.remove_member("ops", "robot-1")

    assert channel_log.load_members() == [("ops", "robot-2")]
    assert channel_log.load_cursors() == [CursorRecord("robot-2", "ops", 0)]


async def test_removing_an_unknown_member_is_a_no_op(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops"))

    await channel_log.remove_member("ops", "ghost")

    assert channel_log.load_members() == []


async def test_saved_cursors_are_loaded_after_the_next_commit(
    channel_log: ChannelLog, commit: Commit
) -> None:
    await channel_log.save_channel(Channel(name="ops"))
    await channel_log.add_member("ops", "robot-1", CursorRecord("robot-1", "ops", 0))
    moved = CursorRecord("robot-1", "ops", floor=7, above=[9, 10], retries={"ops-8": 2})

    channel_log.save_cursors([moved])
    await commit()

    assert channel_log.load_cursors() == [moved]


async def test_saved_cursors_ride_along_with_an_append(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops"))
    await channel_log.add_member("ops", "robot-1", CursorRecord("robot-1", "ops", 0))
    moved = CursorRecord("robot-1", "ops", floor=1)

    channel_log.save_cursors([moved])
    await channel_log.append([msg(1)])

    assert channel_log.load_cursors() == [moved]


async def test_save_cursors_ignores_cursors_of_non_members(
    channel_log: ChannelLog, commit: Commit
) -> None:
    await channel_log.save_channel(Channel(name="ops"))

    channel_log.save_cursors([CursorRecord("ghost", "ops", 4)])
    await commit()

    assert channel_log.load_cursors() == []


# -- append and read --------------------------------------------------------------------------


async def test_read_returns_messages_after_seq_in_order(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 3))
    await channel_log.append(msgs(4, 6))

    assert seqs(channel_log.read("ops", 2, 100)) == [3, 4, 5, 6]


async def test_read_returns_whole_messages(channel_log: ChannelLog) -> None:
    await channel_log.append([msg(1)])

    assert channel_log.read("ops", 0, 10) == [msg(1)]


async def test_read_stops_at_the_limit(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    assert seqs(channel_log.read("ops", 0, 4)) == [1, 2, 3, 4]


async def test_read_after_the_newest_seq_is_empty(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 3))

    assert channel_log.read("ops", 3, 10) == []


async def test_read_of_an_unknown_channel_is_empty(channel_log: ChannelLog) -> None:
    assert channel_log.read("nowhere", 0, 10) == []


async def test_read_keeps_channels_apart(channel_log: ChannelLog) -> None:
    await channel_log.append([msg(1, "ops"), msg(1, "telemetry"), msg(2, "ops")])

    assert [m.id for m in channel_log.read("ops", 0, 10)] == ["ops-1", "ops-2"]


# -- history ----------------------------------------------------------------------------------


async def test_history_by_seq_range_is_inclusive(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    got = channel_log.history("ops", start_seq=3, end_seq=6, since=None, until=None, limit=100)

    assert seqs(got) == [3, 4, 5, 6]


async def test_history_by_time_range_is_inclusive(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    got = channel_log.history(
        "ops", start_seq=None, end_seq=None, since=T0 + 4, until=T0 + 7, limit=100
    )

    assert seqs(got) == [4, 5, 6, 7]


async def test_history_limit_keeps_the_oldest_matches(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    got = channel_log.history("ops", start_seq=2, end_seq=None, since=None, until=None, limit=3)

    assert seqs(got) == [2, 3, 4]


async def test_history_by_time_range_with_limit(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    got = channel_log.history(
        "ops", start_seq=None, end_seq=None, since=T0 + 5, until=T0 + 9, limit=2
    )

    assert seqs(got) == [5, 6]


async def test_history_combines_seq_and_time_bounds(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    got = channel_log.history("ops", start_seq=3, end_seq=8, since=T0 + 5, until=None, limit=100)

    assert seqs(got) == [5, 6, 7, 8]


async def test_history_without_bounds_returns_everything(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 5))

    got = channel_log.history(
        "ops", start_seq=None, end_seq=None, since=None, until=None, limit=100
    )

    assert seqs(got) == [1, 2, 3, 4, 5]


async def test_history_of_an_unknown_channel_is_empty(channel_log: ChannelLog) -> None:
    got = channel_log.history(
        "nowhere", start_seq=None, end_seq=None, since=None, until=None, limit=100
    )

    assert got == []


# -- first and last seqs ----------------------------------------------------------------------


async def test_first_seq_of_an_untrimmed_channel_is_one(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 5))

    assert channel_log.first_seq("ops") == 1


async def test_first_seq_of_an_unused_channel_is_one(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops"))

    assert channel_log.first_seq("ops") == 1


async def test_last_seqs_reports_the_newest_seq_per_channel(channel_log: ChannelLog) -> None:
    await channel_log.append([*msgs(1, 4, "ops"), *msgs(1, 2, "telemetry")])

    assert channel_log.last_seqs() == {"ops": 4, "telemetry": 2}


async def test_last_seqs_of_an_empty_log_is_empty(channel_log: ChannelLog) -> None:
    assert channel_log.last_seqs() == {}


# -- trim -------------------------------------------------------------------------------------


async def test_trim_by_count_keeps_the_newest(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    dropped = await channel_log.trim("ops", keep=3, older_than=None)

    assert dropped == 7
    assert seqs(channel_log.read("ops", 0, 100)) == [8, 9, 10]


async def test_trim_by_count_moves_first_seq(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 10))

    await channel_log.trim("ops", keep=3, older_than=None)

    assert channel_log.first_seq("ops") == 8


async def test_trim_by_count_within_retention_drops_nothing(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 3))

    dropped = await channel_log.trim("ops", keep=5, older_than=None)

    assert dropped == 0
    assert seqs(channel_log.read("ops", 0, 100)) == [1, 2, 3]


async def test_trim_by_age_drops_strictly_older_messages(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 6))

    dropped = await channel_log.trim("ops", keep=None, older_than=T0 + 4)

    assert dropped == 3
    assert seqs(channel_log.read("ops", 0, 100)) == [4, 5, 6]


async def test_trim_leaves_other_channels_alone(channel_log: ChannelLog) -> None:
    await channel_log.append([*msgs(1, 5, "ops"), *msgs(1, 5, "telemetry")])

    await channel_log.trim("ops", keep=1, older_than=None)

    assert seqs(channel_log.read("telemetry", 0, 100)) == [1, 2, 3, 4, 5]


async def test_trim_keeps_last_seqs(channel_log: ChannelLog) -> None:
    await channel_log.append(msgs(1, 5))

    await channel_log.trim("ops", keep=2, older_than=None)

    assert channel_log.last_seqs() == {"ops": 5}


async def test_trim_of_an_unknown_channel_drops_nothing(channel_log: ChannelLog) -> None:
    assert await channel_log.trim("nowhere", keep=0, older_than=T0 + 100) == 0


async def test_first_seq_of_a_channel_trimmed_empty_is_last_seq_plus_one(
    channel_log: ChannelLog,
) -> None:
    await channel_log.append(msgs(1, 5))

    await channel_log.trim("ops", keep=None, older_than=T0 + 100)

    assert channel_log.first_seq("ops") == 6


# -- commit hook ------------------------------------------------------------------------------


async def test_on_commit_gets_each_committed_batch_in_order(channel_log: ChannelLog) -> None:
    seen: list[list[int]] = []
    channel_log.on_commit = lambda committed: seen.append(seqs(committed))

    await channel_log.append(msgs(1, 3))
    await channel_log.append(msgs(4, 5))

    assert seen == [[1, 2, 3], [4, 5]]


async def test_on_commit_has_run_when_append_returns(channel_log: ChannelLog) -> None:
    seen: list[Message] = []
    channel_log.on_commit = seen.extend

    await channel_log.append([msg(1)])

    assert seen == [msg(1)]


async def test_on_commit_sees_concurrent_appends_in_seq_order(channel_log: ChannelLog) -> None:
    seen: list[int] = []
    channel_log.on_commit = lambda committed: seen.extend(seqs(committed))

    await asyncio.gather(*(channel_log.append([msg(s)]) for s in range(1, 21)))

    assert seen == list(range(1, 21))


# -- delete -----------------------------------------------------------------------------------


async def test_delete_channel_removes_its_definition(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops"))
    await channel_log.save_channel(Channel(name="telemetry"))

    await channel_log.delete_channel("ops")

    assert [c.name for c in channel_log.load_channels()] == ["telemetry"]


async def test_delete_channel_removes_its_messages(channel_log: ChannelLog) -> None:
    await channel_log.save_channel(Channel(name="ops"))
    await channel_log.append(msgs(1, 3))

    await channel_log.delete_channel("ops")

    assert channel_log.read("ops", 0, 100) == []
    assert "ops" not in channel_log.last_seqs()


async def test_delete_channel_removes_its_members_and_cursors(channel_log: ChannelLog) -> None:
    for name in ("ops", "telemetry"):
        await channel_log.save_channel(Channel(name=name))
        await channel_log.add_member(name, "robot-1", CursorRecord("robot-1", name, 0))

    await channel_log.delete_channel("ops")

    assert channel_log.load_members() == [("telemetry", "robot-1")]
    assert channel_log.load_cursors() == [CursorRecord("robot-1", "telemetry", 0)]


# -- SQLite only: durability and backpressure -------------------------------------------------


async def test_sqlite_log_keeps_everything_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    cursor = CursorRecord("robot-1", "ops", floor=2, above=[4])
    db = SqliteDatabase(path)
    await db.start()
    log = SqliteLog(db)
    await log.save_channel(Channel(name="ops", type="task"))
    await log.add_member("ops", "robot-1", CursorRecord("robot-1", "ops", 0))
    await log.append(msgs(1, 5))
    log.save_cursors([cursor])
    await db.close()

    db = SqliteDatabase(path)
    await db.start()
    try:
        log = SqliteLog(db)
        assert [c.name for c in log.load_channels()] == ["ops"]
        assert log.load_members() == [("ops", "robot-1")]
        assert log.load_cursors() == [cursor]
        assert log.read("ops", 0, 100) == msgs(1, 5)
        assert log.last_seqs() == {"ops": 5}
    finally:
        await db.close()


async def test_sqlite_load_channels_restores_last_seq_from_the_log(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "log.db")
    await db.start()
    try:
        log = SqliteLog(db)
        await log.save_channel(Channel(name="ops"))
        await log.append(msgs(1, 4))

        (channel,) = log.load_channels()

        assert (channel.last_seq, channel.last_activity_at) == (4, T0 + 4)
    finally:
        await db.close()


async def test_sqlite_append_raises_backpressure_when_the_backlog_is_full(
    tmp_path: Path,
) -> None:
    db = SqliteDatabase(tmp_path / "log.db", StorageSettings(max_pending_writes=1))
    await db.start()
    try:
        log = SqliteLog(db, publish_timeout=0)

        first, second = await asyncio.gather(
            log.append([msg(1)]), log.append([msg(2)]), return_exceptions=True
        )

        assert first is None
        assert isinstance(second, BackpressureError)
        assert second.code == "backpressure"
    finally:
        await db.close()


async def test_sqlite_append_refused_by_backpressure_writes_nothing(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "log.db", StorageSettings(max_pending_writes=1))
    await db.start()
    try:
        log = SqliteLog(db, publish_timeout=0)

        await asyncio.gather(log.append([msg(1)]), log.append([msg(2)]), return_exceptions=True)

        assert seqs(log.read("ops", 0, 100)) == [1]
    finally:
        await db.close()


async def test_sqlite_load_channels_keeps_last_seq_after_trimming_everything(
    tmp_path: Path,
) -> None:
    db = SqliteDatabase(tmp_path / "log.db")
    await db.start()
    try:
        log = SqliteLog(db)
        await log.save_channel(Channel(name="ops"))
        await log.append(msgs(1, 3))
        await log.trim("ops", keep=None, older_than=T0 + 100)

        (channel,) = log.load_channels()

        assert channel.last_seq == 3
    finally:
        await db.close()
