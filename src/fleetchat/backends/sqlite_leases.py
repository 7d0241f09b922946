"""Lease resources on SQLite: the Store port's ``load_resource(s)`` / ``save_resource``.

A mixin of :class:`~fleetchat.backends.sqlite_store.SqliteStore`. One row per resource, the
record as JSON beside its name and version. The compare-and-set is an ``UPDATE ... WHERE
version = ?`` run inside the writer's transaction: two saves made from the same version both
queue, the first commits, the second matches no row and reports False.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import msgspec

from fleetchat.leases.state import Resource

if TYPE_CHECKING:
    from fleetchat.backends.sqlite import SqliteDatabase

__all__ = ["LEASES_SCHEMA", "SqliteLeases"]

LEASES_SCHEMA = """
CREATE TABLE IF NOT EXISTS lease_resources (
    name TEXT PRIMARY KEY, version INTEGER NOT NULL, data BLOB NOT NULL
)
"""
"""Made at ``start()`` if missing: additive, so older databases need no version change."""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Resource).decode


def _row(name: str, version: int, data: bytes) -> Resource:
    return msgspec.structs.replace(_decode(data), version=version)


class SqliteLeases:
    """The lease part of SqliteStore."""

    db: SqliteDatabase

    async def _create_lease_table(self) -> None:
        await self.db.write(lambda c: c.execute(LEASES_SCHEMA))

    async def load_resource(self, name: str) -> Resource | None:
        rows = self.db.query(
            "SELECT name, version, data FROM lease_resources WHERE name = ?", (name,)
        )
        return _row(*rows[0]) if rows else None

    async def load_resources(self) -> list[Resource]:
        rows = self.db.query("SELECT name, version, data FROM lease_resources ORDER BY name")
        return [_row(*r) for r in rows]

    async def save_resource(self, resource: Resource, expected_version: int) -> bool:
        data = _encode(msgspec.structs.replace(resource, version=expected_version + 1))
        done: list[bool] = []

        def op(c: sqlite3.Connection) -> None:
            if expected_version == 0:
                cur = c.execute(
                    "INSERT OR IGNORE INTO lease_resources VALUES (?, 1, ?)", (resource.name, data)
                )
            else:
                cur = c.execute(
                    "UPDATE lease_resources SET version = ?, data = ? "
                    "WHERE name = ? AND version = ?",
                    (expected_version + 1, data, resource.name, expected_version),
                )
            done.append(cur.rowcount == 1)

        await self.db.write(op)
        return done[0]
