"""What PostgresDatabase reads from its URL before connecting: where the servers are."""

from __future__ import annotations

import pytest

from fleetchat.backends.postgres import PostgresDatabase


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
