"""Workflow definitions and executions on PostgreSQL (the Store port's workflow methods).

A mixin of :class:`~fleetchat.backends.postgres.PostgresStore`. ``save_execution`` runs the
compare-and-set on the execution row and the insert of its events in one transaction, so the
log and the projection never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.workflows.records import DefinitionRecord, ExecutionEvent, ExecutionRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fleetchat.backends.postgres import PostgresDatabase

__all__ = ["PostgresWorkflows"]

_encode = msgspec.json.Encoder().encode
_decode_def = msgspec.json.Decoder(DefinitionRecord).decode
_decode_exec = msgspec.json.Decoder(ExecutionRecord).decode
_decode_event = msgspec.json.Decoder(ExecutionEvent).decode


def _executions(rows: list[Any]) -> list[ExecutionRecord]:
    return [msgspec.structs.replace(_decode_exec(r[1]), version=r[0]) for r in rows]


class PostgresWorkflows:
    """The workflow part of PostgresStore."""

    db: PostgresDatabase

    async def save_definition(self, record: DefinitionRecord) -> bool:
        status = await self.db.execute(
            "INSERT INTO workflow_definitions (name, version, data) VALUES ($1, $2, $3::jsonb) "
            "ON CONFLICT DO NOTHING",
            record.name,
            record.version,
            _encode(record).decode(),
        )
        return status.endswith(" 1")

    async def update_definition(self, record: DefinitionRecord) -> None:
        await self.db.execute(
            "UPDATE workflow_definitions SET data = $3::jsonb WHERE name = $1 AND version = $2",
            record.name,
            record.version,
            _encode(record).decode(),
        )

    async def load_definitions(self) -> list[DefinitionRecord]:
        rows = await self.db.fetch("SELECT data FROM workflow_definitions ORDER BY name, version")
        return [_decode_def(r[0]) for r in rows]

    async def save_execution(
        self, record: ExecutionRecord, expected_version: int, events: Sequence[ExecutionEvent]
    ) -> bool:
        version = expected_version + 1
        data = _encode(msgspec.structs.replace(record, version=version)).decode()
        rows = [(e.execution, e.seq, _encode(e).decode()) for e in events]
        return await self.db.transaction(
            lambda conn: self._save_execution(conn, record, expected_version, version, data, rows)
        )

    @staticmethod
    async def _save_execution(
        conn: Any,
        record: ExecutionRecord,
        expected: int,
        version: int,
        data: str,
        rows: list[tuple[str, int, str]],
    ) -> bool:
        if expected == 0:
            status = await conn.execute(
                "INSERT INTO executions (id, version, status, name, created_at, data) "
                "VALUES ($1, 1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING",
                record.id,
                record.status,
                record.workflow,
                record.created_at,
                data,
            )
        else:
            status = await conn.execute(
                "UPDATE executions SET version = $2, status = $3, data = $4::jsonb, "
                "updated_at = now() WHERE id = $1 AND version = $5",
                record.id,
                version,
                record.status,
                data,
                expected,
            )
        if not status.endswith(" 1"):
            return False
        if rows:
            await conn.executemany(
                "INSERT INTO execution_events (execution, seq, data) VALUES ($1, $2, $3::jsonb)",
                rows,
            )
        return True

    async def load_execution(self, execution_id: str) -> ExecutionRecord | None:
        rows = await self.db.fetch(
            "SELECT version, data FROM executions WHERE id = $1", execution_id
        )
        return _executions(rows)[0] if rows else None

    async def load_executions(
        self, *, status: str | None = None, name: str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        sql = "SELECT version, data FROM executions"
        where, args = [], []
        if status is not None:
            args.append(status)
            where.append(f"status = ${len(args)}")
        if name is not None:
            args.append(name)
            where.append(f"name = ${len(args)}")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return _executions(await self.db.fetch(sql, *args))

    async def load_execution_events(self, execution_id: str) -> list[ExecutionEvent]:
        rows = await self.db.fetch(
            "SELECT data FROM execution_events WHERE execution = $1 ORDER BY seq", execution_id
        )
        return [_decode_event(r[0]) for r in rows]

    async def delete_execution(self, execution_id: str) -> None:
        await self.db.execute("DELETE FROM execution_events WHERE execution = $1", execution_id)
        await self.db.execute("DELETE FROM executions WHERE id = $1", execution_id)
