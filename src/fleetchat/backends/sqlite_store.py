"""SqliteStore on the shared SqliteDatabase: agents, tokens, lease resources
(sqlite_leases.py), tasks (sqlite_tasks.py) and workflows (sqlite_workflows.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fleetchat.backends.sqlite_leases import SqliteLeases
from fleetchat.backends.sqlite_tasks import SqliteTasks
from fleetchat.backends.sqlite_workflows import SqliteWorkflows
from fleetchat.models import AgentInfo, TokenRecord

if TYPE_CHECKING:
    from fleetchat.backends.sqlite import SqliteDatabase

__all__ = ["SqliteStore"]

_encode = msgspec.json.Encoder().encode
_decode_agent = msgspec.json.Decoder(AgentInfo).decode
_decode_token = msgspec.json.Decoder(TokenRecord).decode


class SqliteStore(SqliteLeases, SqliteTasks, SqliteWorkflows):
    """Store on a SqliteDatabase."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.write(
            lambda c: c.execute(
                "CREATE TABLE IF NOT EXISTS health_probe (node TEXT PRIMARY KEY, at REAL NOT NULL)"
            )
        )
        await self._create_lease_table()
        await self._create_task_table()
        await self._create_workflow_tables()

    async def close(self) -> None:
        return None

    async def probe(self, node: str, now: float) -> None:
        await self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO health_probe VALUES (?, ?)", (node, now))
        )

    async def save_agent(self, agent: AgentInfo) -> None:
        data = _encode(agent)
        await self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO agents VALUES (?, ?)", (agent.id, data))
        )

    async def delete_agent(self, agent_id: str) -> None:
        await self.db.write(lambda c: c.execute("DELETE FROM agents WHERE id = ?", (agent_id,)))

    def load_agents(self) -> list[AgentInfo]:
        return [_decode_agent(r[0]) for r in self.db.query("SELECT data FROM agents")]

    async def save_token(self, token: TokenRecord) -> None:
        data = _encode(token)
        await self.db.write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?)",
                (token.sha256, token.agent_id, data),
            )
        )

    async def delete_tokens(self, agent_id: str) -> int:
        counts: list[int] = []
        await self.db.write(
            lambda c: counts.append(
                c.execute("DELETE FROM tokens WHERE agent_id = ?", (agent_id,)).rowcount
            )
        )
        return counts[0]

    def load_tokens(self) -> list[TokenRecord]:
        return [_decode_token(r[0]) for r in self.db.query("SELECT data FROM tokens")]
