"""Tasks on SQLite: the Store port's ``load_task(s)`` / ``find_task`` / ``save_task``.

A mixin of :class:`~fleetchat.backends.sqlite_store.SqliteStore`. One row per task: the record
as JSON beside the columns the scheduler and listings filter on. ``save_task`` is a
compare-and-set on ``version`` run inside the writer's transaction, so of two saves made from
the same version only the first lands; an idempotency key is unique, so two submissions with
one key store one task.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.tasks.records import ACTIVE_STATES, TaskRecord

if TYPE_CHECKING:
    from fleetchat.backends.sqlite import SqliteDatabase

__all__ = ["TASKS_SCHEMA", "SqliteTasks"]

TASKS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL, holder TEXT,
    idem TEXT, created_at REAL NOT NULL, data BLOB NOT NULL
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS tasks_idem ON tasks (idem) WHERE idem IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, created_at)",
)
"""Made at ``start()`` if missing: additive, so older databases need no version change."""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TaskRecord).decode
_ACTIVE = tuple(sorted(ACTIVE_STATES))


def _rows(rows: list[Any]) -> list[TaskRecord]:
    return [msgspec.structs.replace(_decode(data), version=version) for version, data in rows]


class SqliteTasks:
    """The task part of SqliteStore."""

    db: SqliteDatabase

    async def _create_task_table(self) -> None:
        def op(c: sqlite3.Connection) -> None:
            for statement in TASKS_SCHEMA:
                c.execute(statement)

        await self.db.write(op)

    async def load_task(self, task_id: str) -> TaskRecord | None:
        rows = self.db.query("SELECT version, data FROM tasks WHERE id = ?", (task_id,))
        return _rows(rows)[0] if rows else None

    async def find_task(self, idempotency_key: str) -> TaskRecord | None:
        rows = self.db.query("SELECT version, data FROM tasks WHERE idem = ?", (idempotency_key,))
        return _rows(rows)[0] if rows else None

    async def load_tasks(
        self, *, active: bool = False, state: str | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        sql = "SELECT version, data FROM tasks"
        args: list[Any] = []
        if active:
            sql += f" WHERE state IN ({', '.join('?' * len(_ACTIVE))})"
            args.extend(_ACTIVE)
        elif state is not None:
            sql += " WHERE state = ?"
            args.append(state)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return _rows(self.db.query(sql, tuple(args)))

    async def save_task(self, task: TaskRecord, expected_version: int) -> bool:
        version = expected_version + 1
        data = _encode(msgspec.structs.replace(task, version=version))
        done: list[bool] = []

        def op(c: sqlite3.Connection) -> None:
            if expected_version == 0:
                cur = c.execute(
                    "INSERT OR IGNORE INTO tasks VALUES (?, 1, ?, ?, ?, ?, ?)",
                    (task.id, task.state, task.holder, task.idempotency_key, task.created_at, data),
                )
            else:
                cur = c.execute(
                    "UPDATE tasks SET version = ?, state = ?, holder = ?, data = ? "
                    "WHERE id = ? AND version = ?",
                    (version, task.state, task.holder, data, task.id, expected_version),
                )
            done.append(cur.rowcount == 1)

        await self.db.write(op)
        return done[0]
