"""Tasks end to end with SDK agents over WebSocket: in this process, and in separate processes
killed with SIGKILL mid-task."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetchat.client.task_work import CallForProposals, TaskWork
from fleetchat.config import RegistrySettings
from fleetchat.tasks.records import TaskRecord
from tests.e2e.conftest import MakeAgent, RunningServer, StartServer

WORKER = Path(__file__).with_name("task_worker.py")


async def finished(server: RunningServer, task_id: str, timeout: float = 15.0) -> TaskRecord:
    async with asyncio.timeout(timeout):
        while True:
            task = await server.hub.tasks.get(task_id)
            if task.terminal:
                return task
            await asyncio.sleep(0.02)


@pytest.fixture
async def open_server(start_server: StartServer) -> RunningServer:
    return await start_server(auth=False, registry=RegistrySettings(heartbeat_interval=0.25))


async def test_an_sdk_agent_runs_a_task_and_reports_progress(
    open_server: RunningServer, agents: MakeAgent
) -> None:
    seen: list[float | None] = []
    arm = agents("arm-1", {"weld": 0.9}, hub=open_server.url)

    @arm.on_task
    async def weld(work: TaskWork) -> dict[str, Any]:
        await work.progress(0.5)
        seen.append((await open_server.hub.tasks.get(work.id)).progress)
        return {"seam": work.payload["seam"]}

    async with arm:
        task = await open_server.hub.tasks.submit({"weld": 1.0}, payload={"seam": 3}, heartbeat=1)
        done = await finished(open_server, task.id)
    assert (done.state, done.result, done.attempts[0].agent) == ("succeeded", {"seam": 3}, "arm-1")
    assert seen == [0.5]


async def test_a_failing_handler_is_retried_on_another_agent(
    open_server: RunningServer, agents: MakeAgent
) -> None:
    flaky = agents("arm-1", {"weld": 0.95}, hub=open_server.url)
    steady = agents("arm-2", {"weld": 0.85}, hub=open_server.url)

    @flaky.on_task
    async def jam(work: TaskWork) -> None:
        raise RuntimeError("gripper jammed")

    @steady.on_task
    async def ok(work: TaskWork) -> str:
        return "welded"

    async with flaky, steady:
        task = await open_server.hub.tasks.submit({"weld": 1.0})
        done = await finished(open_server, task.id)
    assert done.state == "succeeded"
    assert [(a.agent, a.outcome) for a in done.attempts] == [
        ("arm-1", "failed"),
        ("arm-2", "succeeded"),
    ]
    assert done.attempts[0].reason == "RuntimeError: gripper jammed"


async def test_a_declined_offer_and_a_cancelled_task(
    open_server: RunningServer, agents: MakeAgent
) -> None:
    picky = agents("amr-1", {"carry": 0.95}, hub=open_server.url)
    worker = agents("amr-2", {"carry": 0.9}, hub=open_server.url)
    started = asyncio.Event()
    stopped = asyncio.Event()

    @picky.on_task(accept=lambda work: False)  # battery low: declines everything
    async def never(work: TaskWork) -> None:
        raise AssertionError("declined tasks do not run")

    @worker.on_task
    async def carry(work: TaskWork) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    async with picky, worker:
        task = await open_server.hub.tasks.submit({"carry": 1.0})
        await asyncio.wait_for(started.wait(), 10)
        await open_server.hub.tasks.cancel(task.id, "order withdrawn")
        await asyncio.wait_for(stopped.wait(), 10)  # the hub told the holder to stop
    done = await open_server.hub.tasks.get(task.id)
    assert done.state == "cancelled"
    assert [(a.agent, a.outcome) for a in done.attempts] == [
        ("amr-1", "rejected"),
        ("amr-2", "cancelled"),
    ]


async def test_an_auction_goes_to_the_cheapest_bid(
    open_server: RunningServer, agents: MakeAgent
) -> None:
    fleet = [agents(f"amr-{i}", {"carry": 0.9}, hub=open_server.url) for i in (1, 2, 3)]
    ran: list[str] = []
    for i, robot in enumerate(fleet, 1):

        @robot.on_cfp
        async def bid(cfp: CallForProposals, cost: float = 10.0 - 3 * i) -> tuple[float, float]:
            return cost, 5.0

        @robot.on_task
        async def carry(work: TaskWork, me: str = robot.agent_id) -> str:
            ran.append(me)
            return me

    for robot in fleet:
        await robot.start()
    task = await open_server.hub.tasks.submit({"carry": 1.0}, mode="auction")
    done = await finished(open_server, task.id)
    assert (done.result, ran) == ("amr-3", ["amr-3"])  # cost 1, the lowest
    assert sorted(b.agent for b in done.bids) == ["amr-1", "amr-2", "amr-3"]


# -- agent processes killed mid-task ---------------------------------------------------------


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def spawn(url: str, agent_id: str, delay: float) -> tuple[Any, Path]:
        log = tmp_path / f"{agent_id}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), url, agent_id, "weld", str(delay), str(log), env=env
        )
        procs.append(proc)
        async with asyncio.timeout(20):
            while not (log.exists() and "ready" in log.read_text()):  # noqa: ASYNC110 - a file
                await asyncio.sleep(0.05)
        return proc, log

    yield spawn
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_task_whose_agent_is_killed_completes_on_another_exactly_once(
    open_server: RunningServer, workers: Any
) -> None:
    doomed, doomed_log = await workers(open_server.url, "w-1", 30.0)  # the best, and slow
    _, spare_log = await workers(open_server.url, "w-2", 0.2)
    task = await open_server.hub.tasks.submit({"weld": 1.0}, payload="seam-9")
    async with asyncio.timeout(10):
        while f"start {task.id} 1" not in doomed_log.read_text():  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.02)
    killed = time.monotonic()
    doomed.send_signal(signal.SIGKILL)
    await doomed.wait()
    done = await finished(open_server, task.id)
    assert done.state == "succeeded"
    assert done.result == {"by": "w-2", "payload": "seam-9"}
    assert [(a.agent, a.outcome) for a in done.attempts] == [
        ("w-1", "agent_lost"),
        ("w-2", "succeeded"),
    ]
    runs = [line for line in spare_log.read_text().splitlines() if line.startswith("start")]
    assert runs == [f"start {task.id} 2"]  # run once on the spare
    assert done.dropped_results == 0
    started_elsewhere = done.attempts[1].started_at
    assert started_elsewhere is not None
    # Noticed from the dropped connection, not after missed heartbeats.
    assert started_elsewhere - done.attempts[0].offered_at < 30
    assert time.monotonic() - killed < 10
