"""Shared fixtures: a fake clock, and hubs on every embedded backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.testing import FakeClock

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
