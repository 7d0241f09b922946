"""The test services themselves: a real nats-server and PostgreSQL come up and answer."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import nats
import pytest

from fleetchat.testing import services
from fleetchat.testing.services import NatsServer, PostgresServer, ServiceUnavailable


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


def test_a_missing_binary_is_a_clear_service_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(services, "find_nats_server", lambda: None)
    monkeypatch.setattr(services, "find_postgres_bindir", lambda: None)
    with pytest.raises(ServiceUnavailable, match="apt-get install nats-server"):
        NatsServer(tmp_path)
    with pytest.raises(ServiceUnavailable, match="apt-get install postgresql"):
        PostgresServer(tmp_path)


def test_binaries_are_found_off_the_path_in_debian_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    nats_server = services.find_nats_server()
    assert nats_server is None or nats_server.endswith("nats-server")
    bindir = services.find_postgres_bindir()
    assert bindir is None or (Path(bindir) / "initdb").exists()


def test_a_server_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "n")
    server.binary = "/bin/false"  # a server that dies before it listens
    with pytest.raises(ServiceUnavailable, match="exited with 1"):
        server.start(timeout=5)


def test_waiting_for_a_port_nobody_opens_times_out() -> None:
    with pytest.raises(ServiceUnavailable, match="nothing listens"):
        services._wait_port(services.free_port(), 0.1)


def test_a_nats_server_paused_and_resumed_answers_again(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "p") as server:
        server.pause()
        server.resume()
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
            assert s.recv(4) == b"INFO"
