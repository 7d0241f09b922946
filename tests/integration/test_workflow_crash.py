"""A workflow execution survives its hub being killed with SIGKILL, twice: during a wait, and
while an agent task is in flight. ``fleetchat serve`` is a real subprocess on a SQLite file;
the agent is an SDK agent over WebSocket that reconnects by itself. No step runs twice and the
execution completes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.client import Agent, HubClient
from fleetchat.client.task_work import TaskWork
from fleetchat.testing.services import free_port
from tests.integration.test_server_restart import ServeProcess, _reap, create_token

pytestmark = pytest.mark.slow

FLOW = {
    "schema": "fleetchat.workflow/v1",
    "name": "two-steps",
    "version": "1.0.0",
    "defaults": {"timeout": {"start_to_close": "60s"}, "retry": {"max_attempts": 1}},
    "steps": [
        {
            "id": "first",
            "type": "agent_task",
            "agent": {"capabilities": {"work": 1.0}},
            "input": {"step": "first"},
        },
        {"id": "pause", "type": "wait", "duration": "3s"},
        {
            "id": "second",
            "type": "agent_task",
            "agent": {"capabilities": {"work": 1.0}},
            "input": {"step": "second"},
        },
        {"id": "done", "type": "succeed", "output": "${steps.second.output}"},
    ],
}


@pytest.fixture
async def servers() -> AsyncIterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for server in started:
        await _reap(server.proc)


async def until(check: object, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_an_execution_resumes_after_kills_and_runs_every_step_once(
    tmp_path: Path, servers: list[ServeProcess]
) -> None:
    db = tmp_path / "hub.db"
    db_url = f"sqlite:///{db}"
    log = tmp_path / "serve.log"
    async with Hub(HubSettings(url=db_url)) as hub:  # registered and started before any server
        await hub.workflows.register(FLOW)
        execution = await hub.workflows.start("two-steps")
    admin = await create_token(db_url, "ops", admin=True)
    token = await create_token(db_url, "worker")
    port = str(free_port())
    server = await ServeProcess.start(db_url, log, "--port", port)
    servers.append(server)

    runs: Counter[str] = Counter()
    second_started = asyncio.Event()
    agent = Agent("worker", {"work": 0.9}, hub=server.url, token=token, capacity=2)

    @agent.on_task
    async def work(task: TaskWork) -> str:
        step = task.payload["input"]["step"]
        runs[step] += 1
        if step == "second":
            second_started.set()
            await asyncio.sleep(2.0)  # the hub is killed meanwhile
        return f"{step} done"

    rest = HubClient(server.url, admin)
    async with agent, rest:

        async def first_done() -> bool:
            return any(t.state == "succeeded" for t in await rest.tasks.list())

        await until(first_done)
        await server.kill()  # 1: during the 3 s wait
        server = await ServeProcess.start(db_url, log, "--port", port)
        servers.append(server)
        await asyncio.wait_for(second_started.wait(), 30)
        await server.kill()  # 2: while the second task runs on the agent
        server = await ServeProcess.start(db_url, log, "--port", port)
        servers.append(server)

        async def finished() -> bool:
            tasks = await rest.tasks.list()
            return len(tasks) == 2 and all(t.state == "succeeded" for t in tasks)

        await until(finished, 60)
        tasks = await rest.tasks.list()
    assert await server.stop() == 0
    assert runs == {"first": 1, "second": 1}
    assert sorted(t.result for t in tasks) == ["first done", "second done"]
    async with Hub(HubSettings(url=db_url)) as hub:
        done = await hub.workflows.wait(execution.id, 30)
        assert (done.status, done.output) == ("completed", "second done")
        events = [e.type for e in await hub.workflows.events(execution.id)]
    assert events.count("step.completed") == 4
    assert events.count("step.scheduled") == 2  # each task once, never re-sent
