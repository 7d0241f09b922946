"""Lease resources on PostgreSQL: the Store port's ``load_resource(s)`` / ``save_resource``.

A mixin of :class:`~fleetchat.backends.postgres.PostgresStore`. Unlike agents, resources are
not cached: every hub node changes them, and a lease decision must see the latest record, so
each call reads the database. The compare-and-set is one statement (``INSERT ... ON CONFLICT
DO NOTHING`` for a new record, ``UPDATE ... WHERE version = $n`` after), so of two nodes
saving from the same version exactly one succeeds; this is what keeps a lease from being
granted twice when nodes race.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.leases.state import Resource

if TYPE_CHECKING:
    from fleetchat.backends.postgres import PostgresDatabase

__all__ = ["PostgresLeases"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Resource).decode


def _row(row: Any) -> Resource:
    # jsonb comes back as text (asyncpg's default codec); the column's version is the truth.
    return msgspec.structs.replace(_decode(row[1]), version=row[0])


class PostgresLeases:
    """The lease part of PostgresStore."""

    db: PostgresDatabase

    async def load_resource(self, name: str) -> Resource | None:
        rows = await self.db.fetch(
            "SELECT version, data FROM lease_resources WHERE name = $1", name
        )
        return _row(rows[0]) if rows else None

    async def load_resources(self) -> list[Resource]:
        # One statement: one snapshot, so the wait-for graph is consistent.
        rows = await self.db.fetch("SELECT version, data FROM lease_resources ORDER BY name")
        return [_row(r) for r in rows]

    async def save_resource(self, resource: Resource, expected_version: int) -> bool:
        version = expected_version + 1
        data = _encode(msgspec.structs.replace(resource, version=version)).decode()
        if expected_version == 0:
            status = await self.db.execute(
                "INSERT INTO lease_resources (name, version, data) VALUES ($1, 1, $2::jsonb) "
                "ON CONFLICT (name) DO NOTHING",
                resource.name,
                data,
            )
        else:
            status = await self.db.execute(
                "UPDATE lease_resources SET version = $2, data = $3::jsonb, updated_at = now() "
                "WHERE name = $1 AND version = $4",
                resource.name,
                version,
                data,
                expected_version,
            )
        return status.endswith(" 1")
