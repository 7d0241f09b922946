"""``fleetchat tasks`` against a real server."""

from __future__ import annotations

import asyncio
import json

from click.testing import Result
from typer.testing import CliRunner

from fleetchat.cli import app
from fleetchat.testing import assert_eventually
from tests.e2e.conftest import RunningServer, StartServer

runner = CliRunner()


async def fleetchat(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def _hub_with_a_welder(start_server: StartServer) -> RunningServer:
    running = await start_server(auth=False, url="memory://")
    await running.connect("welder-1", capabilities={"weld": 0.95, "inspect": 0.9})
    return running


async def _offered(running: RunningServer, task_id: str) -> None:
    async def offered() -> bool:
        return (await running.hub.tasks.get(task_id)).state == "offered"

    await assert_eventually(offered)


async def test_tasks_submit_list_get_and_cancel_from_the_command_line(
    start_server: StartServer,
) -> None:
    running = await _hub_with_a_welder(start_server)
    hub = ("--hub", running.url)

    got = await fleetchat(
        "tasks",
        "submit",
        "--require",
        "weld=1.0",
        "-r",
        "inspect",
        "--payload",
        '{"seam": 7}',
        "--priority",
        "high",
        "--key",
        "order-7",
        "--timeout",
        "12",
        "--retries",
        "1",
        "--json",
        *hub,
    )
    assert got.exit_code == 0, got.output
    task = json.loads(got.stdout)
    assert task["required"] == {"weld": 1.0, "inspect": 1.0}
    assert (task["payload"], task["priority"], task["max_retries"]) == ({"seam": 7}, "high", 1)
    assert task["timeouts"]["start_to_close"] == 12
    again = await fleetchat("tasks", "submit", "-r", "weld", "--key", "order-7", *hub)
    assert again.stdout.strip() == task["id"]

    listed = await fleetchat("tasks", "list", "--state", "active", *hub)
    assert task["id"] in listed.stdout
    assert "high" in listed.stdout
    shown = await fleetchat("tasks", "get", task["id"], *hub)
    assert f"task {task['id']}" in shown.stdout

    done = await fleetchat("tasks", "cancel", task["id"], "--reason", "withdrawn", *hub)

    assert done.exit_code == 0, done.output
    stored = await running.hub.tasks.get(task["id"])
    assert (stored.state, stored.reason) == ("cancelled", "withdrawn")
    as_json = await fleetchat("tasks", "list", "--json", *hub)
    assert [t["state"] for t in json.loads(as_json.stdout)] == ["cancelled"]


async def test_tasks_submit_wait_prints_the_result_when_an_agent_completes_it(
    start_server: StartServer,
) -> None:
    running = await _hub_with_a_welder(start_server)
    waiting = asyncio.ensure_future(
        fleetchat("tasks", "submit", "-r", "weld=1", "--wait", "--json", "--hub", running.url)
    )
    tasks = running.hub.tasks

    async def submitted() -> bool:
        return bool(await tasks.list(state="offered"))

    await assert_eventually(submitted)
    (task,) = await tasks.list(state="offered")
    await tasks.start(task.id, "welder-1")
    await tasks.complete(task.id, "welder-1", result={"welded": True})

    got = await asyncio.wait_for(waiting, 10)

    assert got.exit_code == 0, got.output
    printed = json.loads(got.stdout)
    assert (printed["id"], printed["state"], printed["result"]) == (
        task.id,
        "succeeded",
        {"welded": True},
    )


async def test_tasks_submit_wait_exits_1_when_the_task_fails(start_server: StartServer) -> None:
    running = await _hub_with_a_welder(start_server)
    waiting = asyncio.ensure_future(
        fleetchat("tasks", "submit", "-r", "weld", "--retries", "0", "--wait", "--hub", running.url)
    )
    tasks = running.hub.tasks

    async def submitted() -> bool:
        return bool(await tasks.list(state="offered"))

    await assert_eventually(submitted)
    (task,) = await tasks.list(state="offered")
    await tasks.fail(task.id, "welder-1", error="torch jammed")

    got = await asyncio.wait_for(waiting, 10)

    assert got.exit_code == 1
    assert "failed" in got.stdout
    assert "torch jammed" in got.stdout


async def test_tasks_get_shows_every_attempt(start_server: StartServer) -> None:
    running = await _hub_with_a_welder(start_server)
    task = await running.hub.tasks.submit({"weld": 1.0})
    await _offered(running, task.id)
    await running.hub.tasks.reject(task.id, "welder-1", reason="busy welding")

    got = await fleetchat("tasks", "get", task.id, "--hub", running.url)

    assert got.exit_code == 0, got.output
    assert "attempt 1: welder-1 -> rejected (busy welding)" in got.stdout


async def test_tasks_submit_for_an_unknown_capability_prints_one_error_line(
    start_server: StartServer,
) -> None:
    running = await _hub_with_a_welder(start_server)

    got = await fleetchat("tasks", "submit", "-r", "paint=1", "--hub", running.url)

    assert got.exit_code == 1
    assert got.stderr.strip().startswith("error [unsatisfiable] ")
    assert await running.hub.tasks.list() == []


async def test_tasks_submit_with_a_bad_weight_or_payload_is_invalid_input(
    start_server: StartServer,
) -> None:
    running = await _hub_with_a_welder(start_server)

    weight = await fleetchat("tasks", "submit", "-r", "weld=lots", "--hub", running.url)
    payload = await fleetchat(
        "tasks", "submit", "-r", "weld", "--payload", "{oops", "--hub", running.url
    )

    assert weight.exit_code == payload.exit_code == 1
    assert weight.stderr.startswith("error [invalid_input] --require")
    assert payload.stderr.startswith("error [invalid_input] --payload")


async def test_tasks_get_of_an_unknown_id_prints_task_not_found(
    start_server: StartServer,
) -> None:
    running = await start_server(auth=False, url="memory://")

    got = await fleetchat("tasks", "get", "nope", "--hub", running.url)

    assert got.exit_code == 1
    assert got.stderr.strip().startswith("error [task_not_found] ")
