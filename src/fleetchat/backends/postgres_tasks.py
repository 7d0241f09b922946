"""Tasks on PostgreSQL: the Store port's ``load_task(s)`` / ``find_task`` / ``save_task``.

A mixin of :class:`~fleetchat.backends.postgres.PostgresStore`. Not cached: every hub node
changes tasks (agents report to the node they are connected to; the leader schedules), so each
call reads the database. ``save_task`` is one statement (``INSERT ... ON CONFLICT DO NOTHING``
for a new task, ``UPDATE ... WHERE version = $n`` after), so of two nodes saving from the same
version exactly one succeeds: this is what makes one result win.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.tasks.records import ACTIVE_STATES, TaskRecord

if TYPE_CHECKING:
    from fleetchat.backends.postgres import PostgresDatabase

__all__ = ["PostgresTasks"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TaskRecord).decode
_ACTIVE = sorted(ACTIVE_STATES)


def _rows(rows: list[Any]) -> list[TaskRecord]:
    # jsonb comes back as text (asyncpg's default codec); the column's version is the truth.
    return [msgspec.structs.replace(_decode(r[1]), version=r[0]) for r in rows]


class PostgresTasks:
    """The task part of PostgresStore."""

    db: PostgresDatabase

    async def load_task(self, task_id: str) -> TaskRecord | None:
        rows = await self.db.fetch("SELECT version, data FROM tasks WHERE id = $1", task_id)
        return _rows(rows)[0] if rows else None

    async def find_task(self, idempotency_key: str) -> TaskRecord | None:
        rows = await self.db.fetch(
            "SELECT version, data FROM tasks WHERE idem = $1", idempotency_key
        )
        return _rows(rows)[0] if rows else None

    async def load_tasks(
        self, *, active: bool = False, state: str | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        sql = "SELECT version, data FROM tasks"
        args: list[Any] = []
        if active:
            sql += " WHERE state = ANY($1::text[])"
            args.append(_ACTIVE)
        elif state is not None:
            sql += " WHERE state = $1"
            args.append(state)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT ${len(args) + 1}"
            args.append(limit)
        return _rows(await self.db.fetch(sql, *args))

    async def save_task(self, task: TaskRecord, expected_version: int) -> bool:
        version = expected_version + 1
        data = _encode(msgspec.structs.replace(task, version=version)).decode()
        if expected_version == 0:
            status = await self.db.execute(
                "INSERT INTO tasks (id, version, state, holder, idem, created_at, data) "
                "VALUES ($1, 1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT DO NOTHING",
                task.id,
                task.state,
                task.holder,
                task.idempotency_key,
                task.created_at,
                data,
            )
        else:
            status = await self.db.execute(
                "UPDATE tasks SET version = $2, state = $3, holder = $4, data = $5::jsonb, "
                "updated_at = now() WHERE id = $1 AND version = $6",
                task.id,
                version,
                task.state,
                task.holder,
                data,
                expected_version,
            )
        return status.endswith(" 1")
