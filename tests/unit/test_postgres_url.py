"""PostgresDatabase without a server: what it reads from its URL, how it words socket errors."""

from __future__ import annotations

import socket

import pytest

from fleetchat.backends.postgres import PostgresDatabase
from fleetchat.backends.postgres_conn import os_reason
from fleetchat.errors import BackendError


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("postgresql://fleet:pw@db.example:6432/fleet", "db.example:6432"),
        ("postgresql://db.example/fleet", "db.example:5432"),
        ("postgres://fleet@10.0.0.1,10.0.0.2:5433/fleet", "10.0.0.1:5432,10.0.0.2:5433"),
        ("postgresql://fleet@[::1]:6000/fleet", "::1:6000"),
        ("postgresql://fleet@[fe80::1]/fleet", "fe80::1:5432"),
        ("postgresql:///fleet", "localhost:5432"),
        ("postgresql:///fleet?host=/run/postgresql&port=5433", "/run/postgresql:5433"),
    ],
)
def test_where_names_every_server_as_host_and_port(url: str, where: str) -> None:
    assert PostgresDatabase(url).where == where


def test_a_new_database_is_not_migrated_yet() -> None:
    assert PostgresDatabase("postgresql://db.example/fleet").schema_version == 0


async def test_closing_a_database_that_never_started_does_nothing() -> None:
    database = PostgresDatabase("postgresql://db.example/fleet")

    await database.close()

    with pytest.raises(BackendError, match="not open"):
        await database.fetch("SELECT 1")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
            "connection refused",
        ),
        (socket.gaierror(-2, "Name or service not known"), "name or service not known"),
        (OSError("Multiple exceptions: [Errno 111] ..."), "Multiple exceptions: [Errno 111] ..."),
    ],
)
def test_socket_errors_are_put_in_words(error: OSError, reason: str) -> None:
    assert os_reason(error) == reason
