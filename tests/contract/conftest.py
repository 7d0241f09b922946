"""Fixtures for the backend contract tests: every port implementation, on a real file for SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from fleetchat.backends.memory import MemoryLog, MemoryStore
from fleetchat.backends.ports import ChannelLog, Store
from fleetchat.backends.postgres import PostgresDatabase, PostgresStore
from fleetchat.backends.sqlite import SqliteDatabase, SqliteLog
from fleetchat.backends.sqlite_store import SqliteStore

Commit = Callable[[], Awaitable[None]]


@pytest.fixture(params=["memory", "sqlite"])
async def channel_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChannelLog]:
    """A started ChannelLog: MemoryLog, or SqliteLog on a fresh file."""
    if request.param == "memory":
        mem = MemoryLog()
        await mem.start()
        yield mem
        await mem.close()
        return
    db = SqliteDatabase(tmp_path / "log.db")
    await db.start()
    log = SqliteLog(db)
    await log.start()
    yield log
    await log.close()
    await db.close()


@pytest.fixture
def commit(channel_log: ChannelLog) -> Commit:
    """Force a commit, so writes queued without a wait (save_cursors) reach the log."""

    async def run() -> None:
        if isinstance(channel_log, SqliteLog):
            await channel_log.db.write(lambda conn: None)

    return run


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Which Store to build, and where: PostgreSQL is started only for the postgres param
    (requested lazily, from a sync fixture, since the async fixtures run on the event loop)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_backend: str) -> AsyncIterator[Store]:
    """A started Store: MemoryStore, SqliteStore on a fresh file, or PostgresStore on a fresh
    database."""
    if store_backend == "memory://":
        mem = MemoryStore()
        await mem.start()
        yield mem
        await mem.close()
        return
    if store_backend.startswith("postgresql://"):
        pg = PostgresDatabase(store_backend)
        await pg.start()
        pg_store = PostgresStore(pg)
        await pg_store.start()
        yield pg_store
        await pg_store.close()
        await pg.close()
        return
    db = SqliteDatabase(store_backend)
    await db.start()
    sql = SqliteStore(db)
    await sql.start()
    yield sql
    await sql.close()
    await db.close()
