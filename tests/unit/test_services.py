"""The test services themselves: a real nats-server and PostgreSQL come up and answer."""

from __future__ import annotations

import asyncpg
import nats

from fleetchat.testing.services import NatsServer


async def test_nats_server_with_jetstream(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        assert info.limits is not None
        assert nc.connected_server_version.major >= 2
    finally:
        await nc.close()


async def test_postgres_database_is_fresh(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
    finally:
        await conn.close()
