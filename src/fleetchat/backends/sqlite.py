"""The embedded backend: one SQLite file in WAL mode, one writer with group commit.

Every write goes through :class:`SqliteDatabase`'s single writer. Writers queue rows; the commit
task writes everything queued in one short transaction on the event-loop thread (a writer
thread beside a busy loop starves on the GIL, see docs/performance.md), then wakes the writers.
Reads run directly on the same connection between commits.

This module holds :class:`SqliteDatabase`: the connection, its schema and the writer. The
channel log on it is :class:`fleetchat.backends.sqlite_log.SqliteLog` (re-exported here), the
store :class:`fleetchat.backends.sqlite_store.SqliteStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from fleetchat.backends.ports import CursorRecord
from fleetchat.backends.sqlite_log import SqliteLog
from fleetchat.config import StorageSettings
from fleetchat.errors import BackendError, BackpressureError
from fleetchat.models import Message

__all__ = ["SqliteDatabase", "SqliteLog"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, data BLOB NOT NULL);
-- Newest seq per channel, kept by retention sweeps so emptying a log never rewinds it.
CREATE TABLE IF NOT EXISTS high_water (channel TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    channel TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (channel, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    channel TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (channel, created_at);
CREATE TABLE IF NOT EXISTS cursors (
    member TEXT NOT NULL, channel TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (member, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT PRIMARY KEY, agent_id TEXT NOT NULL, data BLOB NOT NULL
);
"""

_encode = msgspec.json.Encoder().encode

Op = Callable[[sqlite3.Connection], object]


class SqliteDatabase:
    """One SQLite connection and its group-commit writer.

    Args:
        path: the database file; created with its directory when missing.
        settings: sync mode, batch sizes and the write backlog bound.
    """

    def __init__(self, path: str | Path, settings: StorageSettings | None = None) -> None:
        self.path = Path(path)
        self.settings = settings or StorageSettings()
        self.on_commit: Callable[[list[Message]], None] = lambda messages: None
        self._conn: sqlite3.Connection | None = None
        self._rows: list[tuple[str, int, float, bytes]] = []
        self._messages: list[Message] = []
        # (rows queued before it, op): an op commits only with or after those rows, so writes
        # land in the order they were made (a membership never before the messages it follows).
        self._ops: list[tuple[int, Op]] = []
        self._cursors: dict[tuple[str, str], CursorRecord] = {}
        # (rows queued before it, future): a writer is woken once those rows are committed.
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._queued_rows = 0
        self._committed_rows = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendError("the SQLite database is not open")
        return self._conn

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.settings.sync.upper()}")
            conn.execute("PRAGMA busy_timeout=5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise BackendError(
                    f"{self.path} has schema version {version}; this fleetchat knows "
                    f"{SCHEMA_VERSION}: upgrade fleetchat"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._conn = conn
        self._room.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._wake.set()
            await self._flush_now()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- writes ---------------------------------------------------------------------------

    async def write_messages(self, messages: list[Message], timeout: float) -> None:
        """Queue messages and return once they are committed.

        Raises:
            BackpressureError: the write backlog stayed full for ``timeout`` seconds.
            BackendError: the commit failed; nothing of it was written.
        """
        if len(self._rows) >= self.settings.max_pending_writes:
            try:
                async with asyncio.timeout(timeout):
                    while len(self._rows) >= self.settings.max_pending_writes:
                        # Clear first: a set event returns without yielding, which would spin
                        # and starve the writer that makes the room.
                        self._room.clear()
                        await self._room.wait()
            except TimeoutError:
                raise BackpressureError(
                    f"{len(self._rows)} writes are waiting for the disk; try again later",
                    pending=len(self._rows),
                ) from None
        for m in messages:
            self._rows.append((m.channel, m.seq, m.created_at, _encode(m)))
        self._messages.extend(messages)
        self._queued_rows += len(messages)
        # Shielded: once queued the rows commit whether or not this caller still waits.
        await asyncio.shield(self._wait_commit())

    async def write(self, op: Op) -> None:
        """Run ``op(conn)`` inside the next commit and return once it is committed."""
        self._ops.append((self._queued_rows, op))
        await self._wait_commit()

    def save_cursors(self, cursors: list[CursorRecord]) -> None:
        for c in cursors:
            self._cursors[(c.member, c.channel)] = c
        self._wake.set()

    def _wait_commit(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued_rows, fut))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._rows or self._ops or self._cursors or self._waiters:
                self._commit_once()
                # Let writers run, so the next commit gathers what they queue meanwhile.
                await asyncio.sleep(0)

    async def _flush_now(self) -> None:
        while self._rows or self._ops or self._cursors or self._waiters:
            self._commit_once()

    def _commit_once(self) -> None:
        limit = self.settings.commit_max_batch
        rows, self._rows = self._rows[:limit], self._rows[limit:]
        messages, self._messages = self._messages[:limit], self._messages[limit:]
        # Wake only writers whose rows are all committed (a batch may stop mid-backlog).
        done_rows = self._committed_rows + len(rows)
        cut = 0
        while cut < len(self._waiters) and self._waiters[cut][0] <= done_rows:
            cut += 1
        waiters = [fut for _, fut in self._waiters[:cut]]
        self._waiters = self._waiters[cut:]
        cut_ops = 0
        while cut_ops < len(self._ops) and self._ops[cut_ops][0] <= done_rows:
            cut_ops += 1
        ops = [op for _, op in self._ops[:cut_ops]]
        self._ops = self._ops[cut_ops:]
        cursors, self._cursors = list(self._cursors.values()), {}
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            if rows:
                conn.executemany(
                    "INSERT OR IGNORE INTO messages (channel, seq, created_at, data) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
            for op in ops:
                op(conn)
            if cursors:
                conn.executemany(
                    "UPDATE cursors SET data = ? WHERE member = ? AND channel = ?",
                    [(_encode(c), c.member, c.channel) for c in cursors],
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("SQLite commit failed: %s", exc)
            error = BackendError(f"SQLite commit failed: {exc}")
            self._committed_rows = done_rows
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(error)
            self._room.set()
            return
        self._committed_rows = done_rows
        self.commits += 1
        if messages:
            try:
                self.on_commit(messages)
            except Exception:
                log.exception("commit hook failed")
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if len(self._rows) < self.settings.max_pending_writes:
            self._room.set()

    # -- reads ----------------------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite read failed: {exc}") from exc
