"""Shared fixtures: a fake clock, and hubs on every embedded backend."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.testing import FakeClock
from fleetchat.testing.services import NatsServer, PostgresServer, ServiceUnavailable

BACKENDS = ["memory", "sqlite"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend URL per embedded backend: ``memory://`` and a fresh SQLite file."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture
async def hub(backend_url: str, clock: FakeClock) -> AsyncIterator[Hub]:
    """A started hub on each backend, driven by the fake clock."""
    async with Hub(HubSettings(url=backend_url), clock=clock) as h:
        yield h


# -- real services: nats-server and PostgreSQL on free ports ---------------------------------


def _unavailable(why: str) -> None:
    """Skip a test whose service cannot run here; with CI=true that is a failure instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and a backend is unavailable: {why}")
    pytest.skip(why)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream (file storage under tmp_path) for one test."""
    try:
        server = NatsServer(tmp_path / "nats").start()
    except ServiceUnavailable as exc:
        _unavailable(str(exc))
        raise
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def _postgres_dir() -> Iterator[Path]:
    """A directory for a PostgreSQL cluster, removed afterwards. Not under pytest's basetemp:
    as root, the server runs as another user that must traverse every parent, and each pytest
    session that starts resets the basetemp root to mode 0700, which would lock a concurrent
    session's server out of its own data (PANIC: could not open pg_control)."""
    path = Path(tempfile.mkdtemp(prefix="fleetchat-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _running_postgres() -> Iterator[PostgresServer]:
    with _postgres_dir() as base:
        try:
            server = PostgresServer(base).start()
        except (ServiceUnavailable, subprocess.CalledProcessError) as exc:
            _unavailable(f"PostgreSQL: {exc}")
            raise
        try:
            yield server
        finally:
            server.stop("immediate")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """The URL of a PostgreSQL server for the session: FLEETCHAT_TEST_POSTGRES_URL, or a
    throwaway cluster started from the installed binaries."""
    given = os.environ.get("FLEETCHAT_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    with _running_postgres() as server:
        yield server.url


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own (to stop, kill and start again), removed after."""
    with _running_postgres() as server:
        yield server


@pytest.fixture
async def postgres_url(postgres_cluster: str) -> AsyncIterator[str]:
    """A fresh, empty database on the session's PostgreSQL server, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_cluster)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = postgres_cluster.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(postgres_cluster)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
