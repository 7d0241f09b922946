"""Workflow definitions and executions on SQLite (the Store port's workflow methods).

A mixin of :class:`~fleetchat.backends.sqlite_store.SqliteStore`. An execution is a row (its
projection as JSON, with the columns listings filter on) plus its append-only events, saved in
one transaction by ``save_execution``: a compare-and-set on the row's version, and the events
only if it succeeds.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.workflows.records import DefinitionRecord, ExecutionEvent, ExecutionRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fleetchat.backends.sqlite import SqliteDatabase

__all__ = ["WORKFLOW_SCHEMA", "SqliteWorkflows"]

WORKFLOW_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS workflow_definitions (
    name TEXT NOT NULL, version TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (name, version)
)""",
    """CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, status TEXT NOT NULL, name TEXT NOT NULL,
    created_at REAL NOT NULL, data BLOB NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS executions_status ON executions (status, created_at)",
    """CREATE TABLE IF NOT EXISTS execution_events (
    execution TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (execution, seq)
)""",
)
"""Made at ``start()`` if missing: additive, so older databases need no version change."""

_encode = msgspec.json.Encoder().encode
_decode_def = msgspec.json.Decoder(DefinitionRecord).decode
_decode_exec = msgspec.json.Decoder(ExecutionRecord).decode
_decode_event = msgspec.json.Decoder(ExecutionEvent).decode


def _executions(rows: list[Any]) -> list[ExecutionRecord]:
    return [msgspec.structs.replace(_decode_exec(data), version=v) for v, data in rows]


class SqliteWorkflows:
    """The workflow part of SqliteStore."""

    db: SqliteDatabase

    async def _create_workflow_tables(self) -> None:
        def op(c: sqlite3.Connection) -> None:
            for statement in WORKFLOW_SCHEMA:
                c.execute(statement)

        await self.db.write(op)

    async def save_definition(self, record: DefinitionRecord) -> bool:
        done: list[bool] = []
        data = _encode(record)

        def op(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "INSERT OR IGNORE INTO workflow_definitions VALUES (?, ?, ?)",
                (record.name, record.version, data),
            )
            done.append(cur.rowcount == 1)

        await self.db.write(op)
        return done[0]

    async def update_definition(self, record: DefinitionRecord) -> None:
        data = _encode(record)
        await self.db.write(
            lambda c: c.execute(
                "UPDATE workflow_definitions SET data = ? WHERE name = ? AND version = ?",
                (data, record.name, record.version),
            )
        )

    async def load_definitions(self) -> list[DefinitionRecord]:
        rows = self.db.query("SELECT data FROM workflow_definitions ORDER BY name, version")
        return [_decode_def(data) for (data,) in rows]

    async def save_execution(
        self, record: ExecutionRecord, expected_version: int, events: Sequence[ExecutionEvent]
    ) -> bool:
        version = expected_version + 1
        data = _encode(msgspec.structs.replace(record, version=version))
        done: list[bool] = []

        def op(c: sqlite3.Connection) -> None:
            if expected_version == 0:
                cur = c.execute(
                    "INSERT OR IGNORE INTO executions VALUES (?, 1, ?, ?, ?, ?)",
                    (record.id, record.status, record.workflow, record.created_at, data),
                )
            else:
                cur = c.execute(
                    "UPDATE executions SET version = ?, status = ?, data = ? "
                    "WHERE id = ? AND version = ?",
                    (version, record.status, data, record.id, expected_version),
                )
            ok = cur.rowcount == 1
            if ok and events:
                c.executemany(
                    "INSERT INTO execution_events VALUES (?, ?, ?)",
                    [(e.execution, e.seq, _encode(e)) for e in events],
                )
            done.append(ok)

        await self.db.write(op)
        return done[0]

    async def load_execution(self, execution_id: str) -> ExecutionRecord | None:
        rows = self.db.query("SELECT version, data FROM executions WHERE id = ?", (execution_id,))
        return _executions(rows)[0] if rows else None

    async def load_executions(
        self, *, status: str | None = None, name: str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        sql = "SELECT version, data FROM executions"
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return _executions(self.db.query(sql, tuple(args)))

    async def load_execution_events(self, execution_id: str) -> list[ExecutionEvent]:
        rows = self.db.query(
            "SELECT data FROM execution_events WHERE execution = ? ORDER BY seq", (execution_id,)
        )
        return [_decode_event(data) for (data,) in rows]

    async def delete_execution(self, execution_id: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM executions WHERE id = ?", (execution_id,))
            c.execute("DELETE FROM execution_events WHERE execution = ?", (execution_id,))

        await self.db.write(op)
