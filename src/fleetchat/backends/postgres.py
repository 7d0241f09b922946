"""The distributed-mode Store: PostgreSQL through an asyncpg connection pool.

:class:`PostgresDatabase` owns the pool. ``start()`` connects (bounded by ``connect_timeout``)
and applies the schema migrations of postgres_schema.py that the database has not recorded yet,
each in its own transaction under an advisory lock, so hub nodes starting together do not race.

Driver errors are wrapped at this boundary: a server that cannot be reached, or a connection
lost during a call, is a :class:`BackendUnavailableError` naming PostgreSQL and ``host:port``;
anything else is a :class:`BackendError` with the driver's error as ``__cause__``. The pool
reconnects by itself: once the server is back, the next call succeeds. The password in the URL
never appears in a message or a log record.

asyncpg is an optional extra (``pip install 'fleetchat[postgres]'``), imported lazily by
postgres_conn.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from fleetchat.backends.postgres_conn import (
    import_asyncpg,
    is_unavailable,
    os_reason,
    url_secrets,
    url_where,
)
from fleetchat.backends.postgres_leases import PostgresLeases
from fleetchat.backends.postgres_schema import BOOTSTRAP, LATEST_VERSION, LOCK_KEY, MIGRATIONS
from fleetchat.backends.postgres_tasks import PostgresTasks
from fleetchat.backends.postgres_workflows import PostgresWorkflows
from fleetchat.errors import BackendError, BackendUnavailableError, ConfigError, FleetchatError
from fleetchat.models import AgentInfo, TokenRecord

__all__ = ["PostgresDatabase", "PostgresStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = Any
"""An asyncpg connection (asyncpg ships no type information)."""

MIGRATION_TIMEOUT = 300.0
"""Seconds a migration statement (or the wait for another node's migration) may take."""

_encode = msgspec.json.Encoder().encode
_decode_agent = msgspec.json.Decoder(AgentInfo).decode
_decode_token = msgspec.json.Decoder(TokenRecord).decode


class PostgresDatabase:
    """An asyncpg pool on one PostgreSQL database, with the fleetchat schema applied.

    Args:
        url: ``postgresql://user:password@host:port/database``; asyncpg's other forms work too
            (several ``host:port`` comma-separated, ``?sslmode=require``, and unknown query
            parameters become server settings, e.g. ``?search_path=fleet``).
        min_size: connections the pool keeps open.
        max_size: most connections the pool opens.
        command_timeout: seconds one call (taking a connection and running its statements)
            may take; then it fails with BackendUnavailableError. Default 10.
        connect_timeout: seconds to open a connection, at start and on every reconnect.
            Default 5.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.where = url_where(url)
        self.min_size = min_size
        self.max_size = max_size
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.schema_version = 0
        """The schema version after ``start()`` (``LATEST_VERSION`` once migrated)."""
        self._secrets = url_secrets(url)
        self._pool: Any = None
        self._asyncpg: Any = None
        self._down: str | None = None  # why the server is unavailable, while it is

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and apply pending migrations.

        Raises:
            BackendUnavailableError: no server answered within ``connect_timeout``.
            BackendError: the login or database was refused, a migration failed, or the
                database's schema is newer than this fleetchat knows.
            ConfigError: asyncpg is not installed, or the URL is malformed.
        """
        if self._pool is not None:
            return
        asyncpg = self._asyncpg = import_asyncpg()
        try:
            # Bound the whole start: create_pool's own timeout covers one connect attempt.
            async with asyncio.timeout(self.connect_timeout):
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    command_timeout=self.command_timeout,
                    timeout=self.connect_timeout,
                )
        except (asyncpg.exceptions.ClientConfigurationError, ValueError) as exc:
            raise ConfigError(f"invalid PostgreSQL URL: {self._scrub(exc)}") from None
        except Exception as exc:
            if is_unavailable(asyncpg, exc):
                raise BackendUnavailableError(
                    f"cannot connect to PostgreSQL at {self.where}: "
                    f"{self._reason(exc, self.connect_timeout)}",
                    backend="postgresql",
                    where=self.where,
                ) from exc
            raise self._error(exc, " refused the login") from exc
        self._pool = pool
        try:
            self.schema_version = await self.run(self._migrate, timeout=MIGRATION_TIMEOUT)
        except BaseException:
            self._pool = None
            pool.terminate()
            raise
        log.info(
            "postgresql: connected to %s, schema version %d",
            self.where,
            self.schema_version,
            extra={"backend": "postgresql", "where": self.where},
        )

    async def close(self) -> None:
        """Close the pool: gracefully within ``command_timeout``, else by force."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.command_timeout):
                await pool.close()
        except Exception:
            pool.terminate()

    async def __aenter__(self) -> PostgresDatabase:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self, conn: Connection) -> int:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", LOCK_KEY, timeout=MIGRATION_TIMEOUT
            )
            await conn.execute(BOOTSTRAP)
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        newest = max(applied, default=0)
        if newest > LATEST_VERSION:
            raise BackendError(
                f"PostgreSQL at {self.where}: schema version {newest} is newer than this "
                f"fleetchat ({LATEST_VERSION}); upgrade fleetchat",
                backend="postgresql",
                where=self.where,
                schema_version=newest,
                known_version=LATEST_VERSION,
            )
        for version, name, sql in MIGRATIONS:
            if version in applied:
                continue
            async with conn.transaction():
                # Another node may have applied it while this one waited for the lock.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1)", LOCK_KEY, timeout=MIGRATION_TIMEOUT
                )
                done = await conn.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", version
                )
                if done:
                    continue
                await conn.execute(sql, timeout=MIGRATION_TIMEOUT)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info(
                "postgresql: applied migration %d (%s)",
                version,
                name,
                extra={"backend": "postgresql", "where": self.where},
            )
        return max(newest, LATEST_VERSION)

    # -- calls ----------------------------------------------------------------------------

    async def run(
        self,
        op: Callable[[Connection], Awaitable[T]],
        *,
        transaction: bool = False,
        timeout: float | None = None,
    ) -> T:
        """``await op(conn)`` on a pooled connection (in a transaction if asked).

        Args:
            op: what to do with the connection; it must not keep it.
            transaction: run ``op`` in a transaction (committed when it returns).
            timeout: seconds for the whole call; default ``command_timeout``.

        Raises:
            BackendUnavailableError: the server cannot be reached, the connection was lost, or
                no answer came in time. A transaction is then rolled back unless the loss
                happened during its COMMIT, when its outcome is unknown.
            BackendError: any other driver error (its ``__cause__``); nothing was written.
        """
        pool = self._pool
        if pool is None:
            raise BackendError("the PostgreSQL database is not open", backend="postgresql")
        lost = False
        try:
            async with asyncio.timeout(self.command_timeout if timeout is None else timeout):
                async with pool.acquire() as conn:
                    try:
                        if not transaction:
                            result = await op(conn)
                        else:
                            async with conn.transaction():
                                result = await op(conn)
                    except Exception:
                        try:
                            lost = conn.is_closed()
                        except Exception:  # released to the pool already: closed under us
                            lost = True
                        raise
        except FleetchatError:
            raise
        except Exception as exc:
            raise self._error(exc, lost=lost, timeout=timeout) from exc
        if self._down is not None:
            log.info(
                "postgresql: %s is reachable again",
                self.where,
                extra={"backend": "postgresql", "where": self.where},
            )
            self._down = None
        return result

    async def execute(self, sql: str, *args: Any) -> str:
        """Run one statement; its status (e.g. ``"DELETE 3"``)."""
        return str(await self.run(lambda conn: conn.execute(sql, *args)))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows (asyncpg Records: index or key access) of one query."""
        return list(await self.run(lambda conn: conn.fetch(sql, *args)))

    async def transaction(self, op: Callable[[Connection], Awaitable[T]]) -> T:
        """``await op(conn)`` in one transaction: all of it is committed, or none."""
        return await self.run(op, transaction=True)

    # -- errors ---------------------------------------------------------------------------

    def _scrub(self, exc: BaseException | str) -> str:
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _reason(self, exc: BaseException, timeout: float) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {timeout:g} s"
        if isinstance(exc, OSError) and exc.errno is not None:
            return os_reason(exc)
        return self._scrub(exc) or type(exc).__name__

    def _error(
        self,
        exc: BaseException,
        what: str = "",
        *,
        lost: bool = False,
        timeout: float | None = None,
    ) -> BackendError:
        """The error to raise for the driver's ``exc``: unavailable, or a plain BackendError
        whose message is "PostgreSQL at host:port{what}: {driver message}"."""
        if lost or is_unavailable(self._asyncpg, exc):
            reason = (
                self._reason(exc, self.command_timeout if timeout is None else timeout)
                if is_unavailable(self._asyncpg, exc)
                else "the connection was lost"  # the driver's own words are internal here
            )
            if self._down is None:
                log.warning(
                    "postgresql: %s is unavailable: %s",
                    self.where,
                    reason,
                    extra={"backend": "postgresql", "where": self.where},
                )
            self._down = reason
            return BackendUnavailableError(
                f"PostgreSQL at {self.where} is unavailable: {reason}",
                backend="postgresql",
                where=self.where,
            )
        sqlstate = getattr(exc, "sqlstate", None)
        details: dict[str, Any] = {"backend": "postgresql", "where": self.where}
        if sqlstate:
            details["sqlstate"] = sqlstate
        return BackendError(f"PostgreSQL at {self.where}{what}: {self._scrub(exc)}", **details)


class PostgresStore(PostgresLeases, PostgresTasks, PostgresWorkflows):
    """Store on a PostgresDatabase (agents and tokens as JSONB rows keyed by id; lease
    resources in postgres_leases.py, read from the database on every call).

    The port's ``load_agents`` and ``load_tokens`` are synchronous, so ``start()`` loads both
    into memory and this store's own writes keep that copy current. Writes made by other hub
    nodes reach it at the next ``start()`` or :meth:`refresh`.
    """

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self._agents: dict[str, AgentInfo] = {}
        self._tokens: dict[str, TokenRecord] = {}

    async def start(self) -> None:
        await self.refresh()

    async def close(self) -> None:
        return None

    async def refresh(self) -> None:
        """Reload every agent and token from the database (other nodes' writes included)."""

        async def load(conn: Connection) -> tuple[list[Any], list[Any]]:
            # Repeatable read: one snapshot for both tables (read committed takes one per
            # statement, so a token could arrive without its agent).
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                agents = await conn.fetch("SELECT data FROM agents ORDER BY id")
                tokens = await conn.fetch("SELECT data FROM tokens ORDER BY sha256")
            return agents, tokens

        agents, tokens = await self.db.run(load)
        self._agents = {a.id: a for a in (_decode_agent(r[0]) for r in agents)}
        self._tokens = {t.sha256: t for t in (_decode_token(r[0]) for r in tokens)}

    async def probe(self, node: str, now: float) -> None:
        await self.db.execute(
            "INSERT INTO health_probe (node, at) VALUES ($1, $2) "
            "ON CONFLICT (node) DO UPDATE SET at = EXCLUDED.at",
            node,
            now,
        )

    async def save_agent(self, agent: AgentInfo) -> None:
        data = _encode(agent)
        await self.db.execute(
            "INSERT INTO agents (id, data) VALUES ($1, $2::jsonb) "
            "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
            agent.id,
            data.decode(),
        )
        # A copy, so the cache holds what the database holds even if the caller mutates.
        self._agents[agent.id] = _decode_agent(data)

    async def delete_agent(self, agent_id: str) -> None:
        await self.db.execute("DELETE FROM agents WHERE id = $1", agent_id)
        self._agents.pop(agent_id, None)

    def load_agents(self) -> list[AgentInfo]:
        return list(self._agents.values())

    async def save_token(self, token: TokenRecord) -> None:
        data = _encode(token)
        await self.db.execute(
            "INSERT INTO tokens (sha256, agent_id, data) VALUES ($1, $2, $3::jsonb) "
            "ON CONFLICT (sha256) DO UPDATE SET agent_id = EXCLUDED.agent_id, "
            "data = EXCLUDED.data, updated_at = now()",
            token.sha256,
            token.agent_id,
            data.decode(),
        )
        self._tokens[token.sha256] = _decode_token(data)

    async def delete_tokens(self, agent_id: str) -> int:
        rows = await self.db.fetch("DELETE FROM tokens WHERE agent_id = $1 RETURNING 1", agent_id)
        self._tokens = {h: t for h, t in self._tokens.items() if t.agent_id != agent_id}
        return len(rows)

    def load_tokens(self) -> list[TokenRecord]:
        return list(self._tokens.values())
