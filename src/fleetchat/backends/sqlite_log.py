"""SqliteLog: the ChannelLog on a :class:`fleetchat.backends.sqlite.SqliteDatabase`.

Channels, members, cursors and messages, in the tables the database creates. Reads query the
connection directly; every write goes through the database's group-commit writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from fleetchat.backends.memory import select_history
from fleetchat.backends.ports import CursorRecord
from fleetchat.models import Channel, Message

if TYPE_CHECKING:
    from fleetchat.backends.sqlite import SqliteDatabase

__all__ = ["SqliteLog"]

_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(Message).decode
_decode_channel = msgspec.json.Decoder(Channel).decode
_decode_cursor = msgspec.json.Decoder(CursorRecord).decode


class SqliteLog:
    """ChannelLog on a SqliteDatabase."""

    durable = True

    def __init__(self, db: SqliteDatabase, publish_timeout: float = 5.0) -> None:
        self.db = db
        self.publish_timeout = publish_timeout

    @property
    def on_commit(self) -> Callable[[list[Message]], None]:
        return self.db.on_commit

    @on_commit.setter
    def on_commit(self, hook: Callable[[list[Message]], None]) -> None:
        self.db.on_commit = hook

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def load_channels(self) -> list[Channel]:
        rows = self.db.query(
            "SELECT c.data, COALESCE(h.last_seq, 0) FROM channels c "
            "LEFT JOIN high_water h ON h.channel = c.name"
        )
        channels = []
        stats = {
            r[0]: (r[1], r[2])
            for r in self.db.query(
                "SELECT channel, MAX(seq), MAX(created_at) FROM messages GROUP BY channel"
            )
        }
        for data, high_water in rows:
            c = _decode_channel(data)
            if not c.ephemeral:
                last_seq, last_at = stats.get(c.name, (0, c.last_activity_at))
                c.last_seq = max(last_seq, high_water)
                c.last_activity_at = max(last_at, c.last_activity_at)
            channels.append(c)
        return channels

    def load_members(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.db.query("SELECT channel, member FROM members")]

    def load_cursors(self) -> list[CursorRecord]:
        return [_decode_cursor(r[0]) for r in self.db.query("SELECT data FROM cursors")]

    def last_seqs(self) -> dict[str, int]:
        out = {
            r[0]: r[1]
            for r in self.db.query("SELECT channel, MAX(seq) FROM messages GROUP BY channel")
        }
        for name, high_water in self.db.query("SELECT channel, last_seq FROM high_water"):
            if high_water > out.get(name, 0):
                out[name] = high_water
        return out

    async def save_channel(self, channel: Channel) -> None:
        data = _encode(channel)
        await self.db.write(
            lambda c: c.execute(
                "INSERT INTO channels (name, data) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                (channel.name, data),
            )
        )

    async def delete_channel(self, name: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM channels WHERE name = ?", (name,))
            c.execute("DELETE FROM members WHERE channel = ?", (name,))
            c.execute("DELETE FROM messages WHERE channel = ?", (name,))
            c.execute("DELETE FROM cursors WHERE channel = ?", (name,))
            c.execute("DELETE FROM high_water WHERE channel = ?", (name,))

        await self.db.write(op)

    async def add_member(self, channel: str, member: str, cursor: CursorRecord) -> None:
        data = _encode(cursor)

        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO members VALUES (?, ?)", (channel, member))
            c.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)", (member, channel, data))

        await self.db.write(op)

    async def remove_member(self, channel: str, member: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM members WHERE channel = ? AND member = ?", (channel, member))
            c.execute("DELETE FROM cursors WHERE channel = ? AND member = ?", (channel, member))

        await self.db.write(op)

    async def append(self, messages: list[Message], timeout: float | None = None) -> None:
        await self.db.write_messages(messages, self.publish_timeout if timeout is None else timeout)

    def save_cursors(self, cursors: list[CursorRecord]) -> None:
        self.db.save_cursors(cursors)

    def first_seq(self, channel: str) -> int:
        row = self.db.query("SELECT MIN(seq) FROM messages WHERE channel = ?", (channel,))
        if row and row[0][0] is not None:
            return int(row[0][0])
        high = self.db.query("SELECT last_seq FROM high_water WHERE channel = ?", (channel,))
        return int(high[0][0]) + 1 if high else 1

    def read(self, channel: str, after_seq: int, limit: int) -> list[Message]:
        rows = self.db.query(
            "SELECT data FROM messages WHERE channel = ? AND seq > ? ORDER BY seq LIMIT ?",
            (channel, after_seq, limit),
        )
        return [_decode_message(r[0]) for r in rows]

    def history(
        self,
        channel: str,
        *,
        start_seq: int | None,
        end_seq: int | None,
        since: float | None,
        until: float | None,
        limit: int,
    ) -> list[Message]:
        where, params = ["channel = ?"], [channel]
        for clause, value in (
            ("seq >= ?", start_seq),
            ("seq <= ?", end_seq),
            ("created_at >= ?", since),
            ("created_at <= ?", until),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)  # type: ignore[arg-type]
        sql = f"SELECT data FROM messages WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        rows = self.db.query(sql, (*params, limit))
        msgs = [_decode_message(r[0]) for r in rows]
        return select_history(
            msgs, start_seq=start_seq, end_seq=end_seq, since=since, until=until, limit=limit
        )

    async def trim(self, channel: str, *, keep: int | None, older_than: float | None) -> int:
        counts: list[int] = []

        def op(c: sqlite3.Connection) -> None:
            # Remember the newest seq first, so emptying the log never rewinds the channel.
            c.execute(
                "INSERT INTO high_water (channel, last_seq) "
                "SELECT channel, MAX(seq) FROM messages WHERE channel = ? GROUP BY channel "
                "ON CONFLICT (channel) DO UPDATE SET "
                "last_seq = MAX(high_water.last_seq, excluded.last_seq)",
                (channel,),
            )
            n = 0
            if keep is not None:
                n += c.execute(
                    "DELETE FROM messages WHERE channel = ? AND seq <= "
                    "(SELECT MAX(seq) FROM messages WHERE channel = ?) - ?",
                    (channel, channel, keep),
                ).rowcount
            if older_than is not None:
                n += c.execute(
                    "DELETE FROM messages WHERE channel = ? AND created_at < ?",
                    (channel, older_than),
                ).rowcount
            counts.append(n)

        await self.db.write(op)
        return counts[0] if counts else 0
