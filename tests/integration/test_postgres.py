"""PostgresDatabase and PostgresStore on a real PostgreSQL: migrations, concurrent starts, errors
at the boundary, and recovery after the server restarts."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from fleetchat.backends.postgres import PostgresDatabase, PostgresStore
from fleetchat.backends.postgres_schema import LATEST_VERSION, MIGRATIONS
from fleetchat.errors import BackendError, BackendUnavailableError
from fleetchat.models import AgentInfo, TokenRecord
from fleetchat.testing.services import PostgresServer, free_port

SECRET = "s3cret-pa55"


def with_password(url: str) -> str:
    """``url`` with a password (the test servers trust every login, so any password works)."""
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{SECRET}@{host}"


def everything_said(exc: BaseException) -> str:
    """The message, details, wire payload and full traceback chain of ``exc``."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if isinstance(exc, BackendError):
        parts += [repr(exc.details), repr(exc.to_dict())]
    return "\n".join(parts)


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[PostgresDatabase]:
    database = PostgresDatabase(postgres_url)
    await database.start()
    yield database
    await database.close()


async def migrations(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        return [(r["version"], r["name"]) for r in rows]
    finally:
        await conn.close()


# -- migrations ---------------------------------------------------------------------------


async def test_migrations_are_applied_once_and_recorded(postgres_url: str) -> None:
    first = PostgresDatabase(postgres_url)
    await first.start()
    await first.close()

    again = PostgresDatabase(postgres_url)
    await again.start()
    await again.close()

    assert await migrations(postgres_url) == [(v, name) for v, name, _ in MIGRATIONS]
    assert again.schema_version == LATEST_VERSION


async def test_databases_starting_together_on_an_empty_database_make_one_schema(
    postgres_url: str,
) -> None:
    nodes = [PostgresDatabase(postgres_url) for _ in range(4)]

    await asyncio.gather(*(n.start() for n in nodes))
    try:
        assert [n.schema_version for n in nodes] == [LATEST_VERSION] * 4
        assert await migrations(postgres_url) == [(v, name) for v, name, _ in MIGRATIONS]
        await PostgresStore(nodes[0]).save_agent(AgentInfo(id="robot-1"))
        seen = PostgresStore(nodes[3])
        await seen.start()
        assert [a.id for a in seen.load_agents()] == ["robot-1"]
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_database_with_a_newer_schema_is_refused(
    db: PostgresDatabase, postgres_url: str
) -> None:
    newer = LATEST_VERSION + 1
    await db.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')", newer
    )

    with pytest.raises(BackendError) as caught:
        await PostgresDatabase(postgres_url).start()

    assert not isinstance(caught.value, BackendUnavailableError)
    assert (
        f"schema version {newer} is newer than this fleetchat ({LATEST_VERSION}); "
        "upgrade fleetchat" in caught.value.message
    )
    assert caught.value.details["schema_version"] == newer


# -- errors at the boundary -----------------------------------------------------------------


async def test_unreachable_server_is_backend_unavailable_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens there
    database = PostgresDatabase(f"postgresql://fleet:{SECRET}@127.0.0.1:{port}/fleet")

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        await database.start()

    assert time.monotonic() - started < 3.0
    exc = caught.value
    assert exc.code == "backend_unavailable"
    assert exc.details == {"backend": "postgresql", "where": f"127.0.0.1:{port}"}
    assert exc.message.startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{port}: ")
    assert "Traceback" not in exc.message
    assert SECRET not in everything_said(exc)
    assert caplog.records == []  # the caller decides what to say


async def test_a_password_given_as_a_query_parameter_is_not_shown_either() -> None:
    port = free_port()
    database = PostgresDatabase(f"postgresql://fleet@127.0.0.1:{port}/fleet?password={SECRET}")

    with pytest.raises(BackendUnavailableError) as caught:
        await database.start()

    assert SECRET not in everything_said(caught.value)


async def test_an_unresolvable_host_is_backend_unavailable() -> None:
    database = PostgresDatabase("postgresql://fleet@no-such-host.invalid/fleet", connect_timeout=2)

    with pytest.raises(BackendUnavailableError) as caught:
        await database.start()

    assert caught.value.details["where"] == "no-such-host.invalid:5432"


async def test_a_server_that_never_answers_is_unavailable_after_the_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections (backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        database = PostgresDatabase(
            f"postgresql://fleet:{SECRET}@127.0.0.1:{port}/fleet", connect_timeout=0.5
        )

        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"no answer within 0\.5 s"):
            await database.start()

    assert time.monotonic() - started < 3.0


async def test_a_database_that_does_not_exist_is_a_backend_error(postgres_cluster: str) -> None:
    base, _, _ = with_password(postgres_cluster).rpartition("/")

    with pytest.raises(BackendError) as caught:
        await PostgresDatabase(f"{base}/no_such_db").start()

    assert not isinstance(caught.value, BackendUnavailableError)
    assert "no_such_db" in caught.value.message
    assert caught.value.details["sqlstate"] == "3D000"
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
    assert SECRET not in everything_said(caught.value)


async def test_a_driver_error_is_a_backend_error_and_changes_nothing(
    db: PostgresDatabase,
) -> None:
    store = PostgresStore(db)
    await store.start()
    await store.save_agent(AgentInfo(id="robot-1", labels={"zone": "a"}))

    # jsonb cannot hold a NUL character.
    with pytest.raises(BackendError) as caught:
        await store.save_agent(AgentInfo(id="robot-1", labels={"zone": "a\x00b"}))

    assert not isinstance(caught.value, BackendUnavailableError)
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
    assert store.load_agents() == [AgentInfo(id="robot-1", labels={"zone": "a"})]
    await store.refresh()
    assert store.load_agents() == [AgentInfo(id="robot-1", labels={"zone": "a"})]


async def test_calls_on_a_closed_database_are_backend_errors(postgres_url: str) -> None:
    database = PostgresDatabase(postgres_url)
    await database.start()
    await database.close()

    with pytest.raises(BackendError, match="not open"):
        await database.fetch("SELECT 1")


async def test_a_malformed_url_is_a_config_error() -> None:
    from fleetchat.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid PostgreSQL URL") as caught:
        await PostgresDatabase(f"postgresql://fleet:{SECRET}@127.0.0.1:notaport/x").start()

    assert SECRET not in everything_said(caught.value)


async def test_a_transaction_that_fails_midway_writes_nothing(db: PostgresDatabase) -> None:
    async def op(conn: Any) -> None:
        await conn.execute("INSERT INTO agents (id, data) VALUES ('robot-1', '{}')")
        await conn.execute("INSERT INTO agents (id, data) VALUES ('robot-1', '{}')")

    with pytest.raises(BackendError) as caught:
        await db.transaction(op)

    assert caught.value.details["sqlstate"] == "23505"  # unique_violation
    assert await db.fetch("SELECT id FROM agents") == []


async def test_a_misused_statement_is_a_backend_error_without_sqlstate(
    db: PostgresDatabase,
) -> None:
    with pytest.raises(BackendError) as caught:
        await db.execute("SELECT $1::int", 1, 2)  # one argument too many

    assert not isinstance(caught.value, BackendUnavailableError)
    assert "sqlstate" not in caught.value.details
    assert isinstance(caught.value.__cause__, asyncpg.InterfaceError)


async def test_a_call_past_the_command_timeout_is_unavailable_and_the_next_call_works(
    postgres_url: str,
) -> None:
    async with PostgresDatabase(postgres_url, command_timeout=0.3, max_size=1) as database:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"no answer within 0\.3 s"):
            await database.execute("SELECT pg_sleep(5)")

        assert time.monotonic() - started < 2.0
        assert [tuple(r) for r in await database.fetch("SELECT 1")] == [(1,)]


async def test_a_connection_lost_mid_call_is_unavailable_and_the_next_call_works(
    db: PostgresDatabase, postgres_url: str
) -> None:
    async def killed_midway(conn: Any) -> None:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        query = asyncio.create_task(conn.execute("SELECT pg_sleep(10)"))
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await query

    with pytest.raises(BackendUnavailableError):
        await db.run(killed_midway)

    assert [tuple(r) for r in await db.fetch("SELECT 1")] == [(1,)]


async def test_starting_an_open_database_again_changes_nothing(db: PostgresDatabase) -> None:
    await db.start()

    assert [tuple(r) for r in await db.fetch("SELECT count(*) FROM schema_migrations")] == [
        (len(MIGRATIONS),)
    ]


async def test_close_does_not_wait_long_for_a_call_in_flight(postgres_url: str) -> None:
    database = PostgresDatabase(postgres_url, command_timeout=0.3)
    await database.start()
    holding = asyncio.Event()

    async def hold(conn: Any) -> None:
        holding.set()
        await asyncio.sleep(5)

    call = asyncio.create_task(database.run(hold, timeout=10))
    await holding.wait()
    started = time.monotonic()

    await database.close()

    assert time.monotonic() - started < 2.0
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


# -- the store across nodes and restarts ------------------------------------------------------


async def test_agents_and_tokens_survive_reopening(postgres_url: str) -> None:
    async with PostgresDatabase(postgres_url) as first:
        store = PostgresStore(first)
        await store.start()
        await store.save_agent(AgentInfo(id="robot-1", capabilities={"nav": 0.9}))
        await store.save_agent(AgentInfo(id="robot-2"))
        await store.delete_agent("robot-2")
        await store.save_token(TokenRecord(agent_id="robot-1", sha256="aa", admin=True))

    async with PostgresDatabase(postgres_url) as again:
        reopened = PostgresStore(again)
        await reopened.start()
        assert reopened.load_agents() == [AgentInfo(id="robot-1", capabilities={"nav": 0.9})]
        assert reopened.load_tokens() == [TokenRecord(agent_id="robot-1", sha256="aa", admin=True)]


async def test_another_nodes_writes_are_seen_after_refresh(postgres_url: str) -> None:
    async with PostgresDatabase(postgres_url) as a_db, PostgresDatabase(postgres_url) as b_db:
        a, b = PostgresStore(a_db), PostgresStore(b_db)
        await a.start()
        await b.start()

        await a.save_agent(AgentInfo(id="robot-1"))
        await a.save_token(TokenRecord(agent_id="robot-1", sha256="aa"))
        assert b.load_agents() == []

        await b.refresh()

        assert b.load_agents() == [AgentInfo(id="robot-1")]
        assert b.load_tokens() == [TokenRecord(agent_id="robot-1", sha256="aa")]


async def test_store_calls_fail_while_the_server_is_down_and_recover_when_it_is_back(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    database = PostgresDatabase(
        with_password(postgres_server.url), min_size=2, command_timeout=3.0, connect_timeout=2.0
    )
    await database.start()
    try:
        store = PostgresStore(database)
        await store.start()
        await store.save_agent(AgentInfo(id="robot-1"))

        await asyncio.to_thread(postgres_server.stop)
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError) as caught:
            async with asyncio.timeout(15):
                await store.save_agent(AgentInfo(id="robot-2"))
        assert time.monotonic() - started < 6.0
        assert caught.value.details == {
            "backend": "postgresql",
            "where": f"127.0.0.1:{postgres_server.port}",
        }
        with pytest.raises(BackendUnavailableError):
            await store.delete_agent("robot-1")
        assert [a.id for a in store.load_agents()] == ["robot-1"]
        assert caplog.text.count("is unavailable") == 1

        await asyncio.to_thread(postgres_server.start)
        async with asyncio.timeout(15):
            await store.save_agent(AgentInfo(id="robot-2"))
            await store.refresh()

        assert [a.id for a in store.load_agents()] == ["robot-1", "robot-2"]
        assert SECRET not in everything_said(caught.value)
        assert caplog.text.count("reachable again") == 1
        assert SECRET not in caplog.text
    finally:
        await database.close()
