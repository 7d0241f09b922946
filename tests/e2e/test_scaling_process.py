"""The autoscaler with the ``process`` actuator: real worker processes (SDK agents,
tests/e2e/scaling_worker.py) started under a synthetic backlog, draining it, and stopped when
idle; a worker killed with SIGKILL is replaced.

Run with ``-s`` to see the timings (backlog to first worker, to drained, to scaled in).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from fleetchat import Hub, HubSettings
from fleetchat.config import ServerSettings
from fleetchat.ops.settings import PoolSettings, ScalingSettings
from fleetchat.server import HubServer
from fleetchat.testing import assert_eventually

WORKER = Path(__file__).with_name("scaling_worker.py")
FAST = ScalingSettings(interval=0.3, cooldown_out=0.5, cooldown_in=0.3, signal_delay=0.05)


@dataclasses.dataclass
class Scaled:
    hub: Hub
    url: str
    log: Path

    def pool(self, **fields: Any) -> PoolSettings:
        command = [sys.executable, str(WORKER), self.url, "scan", "0.05", str(self.log)]
        return PoolSettings(command=command, capability="scan", stop_timeout=5.0, **fields)

    def configure(self, **pools: PoolSettings) -> None:
        self.hub.ops.scaling.reconfigure(dataclasses.replace(FAST, pools=pools))

    def pids(self) -> list[int]:
        return self.hub.ops.scaling.status()[0].pids


@pytest.fixture
async def scaled(tmp_path: Path) -> AsyncIterator[Scaled]:
    """A hub served on a free port (auth off); pools are added once its URL is known."""
    settings = HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}", server=ServerSettings())
    async with Hub(settings) as hub, HubServer(hub, port=0) as server:
        yield Scaled(hub, server.url, tmp_path / "workers.log")


def running_worker(pid: int) -> bool:
    """``pid`` is a live process running the worker script (not a zombie)."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and str(WORKER) in proc.cmdline()
    return False


async def test_a_backlog_starts_worker_processes_that_drain_it_then_idle_stops_them(
    scaled: Scaled,
) -> None:
    hub = scaled.hub
    scaled.configure(scan=scaled.pool(min=0, max=4))
    await assert_eventually(lambda: hub.ops.scaling.rounds > 0)
    assert scaled.pids() == []

    start = time.monotonic()
    for i in range(150):
        await hub.tasks.submit({"scan": 1.0}, payload=i, must_be_satisfiable=False)
    submitted = time.monotonic()
    await assert_eventually(scaled.pids, timeout=5)
    first_worker = time.monotonic()
    seen = set(scaled.pids())
    assert all(running_worker(pid) for pid in seen)

    async def drained() -> bool:
        seen.update(scaled.pids())
        return len(await hub.tasks.list(state="succeeded", limit=1000)) == 150

    await assert_eventually(drained, timeout=30, interval=0.05)
    done = time.monotonic()
    await assert_eventually(lambda: scaled.hub.ops.scaling.status()[0].current == 0, timeout=20)
    idle = time.monotonic()
    assert not any(running_worker(pid) for pid in seen)

    events = await hub.ops.scaling.events()
    first = events[0]
    assert (first["kind"], first["from"], first["to"], first["ok"]) == ("out", 0, 3, True)
    assert first["reason"].startswith("queue")
    assert first["metrics"]["queued"] >= 101
    assert events[-1]["kind"] == "in"
    assert events[-1]["to"] == 0
    assert all(e["ok"] for e in events)
    assert hub.ops.scaling.counts["out"] >= 1
    assert hub.ops.scaling.counts["in"] >= 3
    lines = scaled.log.read_text().splitlines()
    workers = {line.split()[1] for line in lines if line.startswith("done")}
    assert len(workers) >= 2
    assert {f"scan-{i}" for i in range(3)} <= workers
    assert sum(line.startswith("exit") for line in lines) == len(seen)
    print(
        f"\nsubmit 150: {submitted - start:.2f}s; first worker started "
        f"{first_worker - submitted:.2f}s after; drained {done - submitted:.2f}s after; "
        f"back to 0 workers {idle - done:.2f}s after that; peak {max(e['to'] for e in events)} "
        f"workers, {len(seen)} processes in all"
    )


async def test_a_worker_killed_is_replaced_and_the_restart_recorded(scaled: Scaled) -> None:
    hub = scaled.hub
    scaled.configure(scan=scaled.pool(min=1, max=2))
    await assert_eventually(scaled.pids, timeout=5)
    [victim] = scaled.pids()
    os.kill(victim, signal.SIGKILL)
    await assert_eventually(lambda: scaled.pids() not in ([], [victim]), timeout=5)
    [replacement] = scaled.pids()
    assert running_worker(replacement)
    assert not running_worker(victim)

    async def restarts() -> list[dict[str, Any]]:
        return [e for e in await hub.ops.scaling.events() if e["kind"] == "restart"]

    await assert_eventually(restarts)
    [restart] = await restarts()
    assert (restart["from"], restart["to"], restart["ok"]) == (0, 1, True)
    assert f"pid {victim}" in restart["reason"]
    assert "exited -9" in restart["reason"]
    assert hub.ops.scaling.counts["restart"] == 1


async def test_the_rest_api_shows_pools_and_events_and_resizes_a_pool(scaled: Scaled) -> None:
    scaled.configure(scan=scaled.pool(min=0, max=3, cooldown_in=60.0))
    async with aiohttp.ClientSession(scaled.url) as http:
        async with http.post("/v1/scaling/scan", json={"count": 2}) as r:
            assert r.status == 200, await r.text()
            event = await r.json()
        assert (event["kind"], event["from"], event["to"], event["ok"]) == ("manual", 0, 2, True)
        assert len(scaled.pids()) == 2
        assert all(running_worker(p) for p in scaled.pids())
        async with http.get("/v1/scaling") as r:
            status = await r.json()
        [pool] = status["pools"]
        assert (pool["name"], pool["current"], pool["desired"], pool["active"]) == (
            "scan",
            2,
            2,
            True,
        )
        assert status["leader"] is True
        assert sorted(pool["pids"]) == sorted(scaled.pids())
        async with http.get("/v1/scaling/events", params={"limit": "5"}) as r:
            events = (await r.json())["events"]
        assert events[-1]["kind"] == "manual"
        assert events[-1]["seq"] > 0
        async with http.post("/v1/scaling/scan", json={"count": 9}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_input"
        async with http.post("/v1/scaling/nope", json={"count": 1}) as r:
            assert r.status == 404
        async with http.get("/v1/scaling/events", params={"limit": "0"}) as r:
            assert r.status == 400
