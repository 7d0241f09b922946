"""``fleetchat workflow``: ``validate`` on files alone, the rest against a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from fleetchat.cli import app
from fleetchat.client.task_work import TaskWork
from fleetchat.testing import assert_eventually
from tests.e2e.conftest import MakeAgent, StartServer

runner = CliRunner()

EXAMPLES = Path(__file__).parents[2] / "examples" / "workflows"

ORDER = """\
schema: fleetchat.workflow/v1
name: cli-order
version: 1.0.0
input_schema: {type: object, required: [bin], properties: {bin: {type: string}}}
defaults:
  timeout: {start_to_close: 10s}
  retry: {max_attempts: 1}
steps:
  - id: pick
    type: agent_task
    agent: {capabilities: {pick: 1.0}}
    input: {bin: "${input.bin}"}
  - id: place
    type: agent_task
    agent: {capabilities: {place: 1.0}}
    input: "${steps.pick.output}"
"""

BROKEN = """\
schema: fleetchat.workflow/v1
name: cli-broken
version: one
steps:
  - id: pick
    type: agent_task
    agent: {capabilities: {pick: 1.0}}
    next: nowhere
  - id: pick
    type: succeed
"""


async def fleetchat(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_validate_lists_every_problem_with_its_path_and_step_and_exits_1(
    tmp_path: Path,
) -> None:
    got = await fleetchat("workflow", "validate", _write(tmp_path, "broken.yaml", BROKEN))

    assert got.exit_code == 1, got.output
    assert "problem(s)" in got.stderr
    assert "/version" in got.stderr
    assert "(step pick)" in got.stderr
    assert "nowhere" in got.stderr
    as_json = await fleetchat(
        "workflow", "validate", "--json", _write(tmp_path, "broken2.yaml", BROKEN)
    )
    report = json.loads(as_json.stdout)
    assert report["valid"] is False
    assert len(report["problems"]) >= 3


async def test_validate_accepts_the_examples_without_a_hub(tmp_path: Path) -> None:
    for example in sorted(EXAMPLES.glob("*.yaml")):
        got = await fleetchat("workflow", "validate", str(example))
        assert got.exit_code == 0, (example, got.output)
        assert got.stdout.startswith("ok: ")
    got = await fleetchat("workflow", "validate", "--json", _write(tmp_path, "o.yaml", ORDER))
    assert json.loads(got.stdout) == {"valid": True, "name": "cli-order", "version": "1.0.0"}


async def test_register_run_wait_status_list_and_graph_from_the_command_line(
    start_server: StartServer, agents: MakeAgent, tmp_path: Path
) -> None:
    running = await start_server(auth=False, url="memory://")
    hub = ("--hub", running.url)
    robot = agents("robot-1", {"pick": 0.9, "place": 0.9}, hub=running.url)

    @robot.on_task
    async def work(task: TaskWork) -> Any:
        return {"did": task.payload["workflow"]["step"]}

    file = _write(tmp_path, "order.yaml", ORDER)
    got = await fleetchat("workflow", "register", file, *hub)
    assert got.exit_code == 0, got.output
    assert got.stdout.startswith("registered cli-order@1.0.0")
    again = await fleetchat("workflow", "register", file, "--json", *hub)
    assert json.loads(again.stdout)["name"] == "cli-order"
    listed = await fleetchat("workflow", "definitions", *hub)
    assert "cli-order" in listed.stdout

    async with robot:
        done = await fleetchat(
            "workflow", "run", "cli-order", "--input", '{"bin": "b-7"}', "--wait", "--json", *hub
        )
    assert done.exit_code == 0, done.output
    execution = json.loads(done.stdout)
    assert (execution["status"], execution["output"]) == ("completed", {"did": "place"})

    shown = await fleetchat("workflow", "status", execution["id"], "--events", *hub)
    assert shown.exit_code == 0, shown.output
    assert f"execution {execution['id']}: completed (cli-order@1.0.0)" in shown.stdout
    assert " place " in shown.stdout
    assert "execution.completed" in shown.stdout
    as_json = await fleetchat("workflow", "status", execution["id"], "--events", "--json", *hub)
    events = json.loads(as_json.stdout)["events"]
    assert events[0]["type"] == "execution.started"

    table = await fleetchat("workflow", "list", "--status", "completed", *hub)
    assert execution["id"] in table.stdout
    assert "cli-order@1.0.0" in table.stdout
    none = await fleetchat("workflow", "list", "--workflow", "other", "--json", *hub)
    assert json.loads(none.stdout) == []

    drawn = await fleetchat("workflow", "graph", "cli-order", "--version", "1.0.0", *hub)
    assert drawn.exit_code == 0, drawn.output
    assert drawn.stdout.startswith("flowchart")


async def test_register_an_invalid_file_lists_its_problems_and_exits_1(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await start_server(auth=False, url="memory://")

    got = await fleetchat(
        "workflow", "register", _write(tmp_path, "b.yaml", BROKEN), "--hub", running.url
    )

    assert got.exit_code == 1
    assert "(step pick)" in got.stderr
    assert running.hub.workflows.definitions() == []


async def test_run_with_a_bad_input_cancel_and_redrive(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await start_server(auth=False, url="memory://")
    hub = ("--hub", running.url)
    await fleetchat("workflow", "register", _write(tmp_path, "o.yaml", ORDER), *hub)

    bad = await fleetchat("workflow", "run", "cli-order", "--input", '{"bin": 1}', *hub)
    assert bad.exit_code == 1
    assert "[invalid_input]" in bad.stderr
    started = await fleetchat("workflow", "run", "cli-order", "--input", '{"bin": "b"}', *hub)
    assert started.exit_code == 0, started.output
    execution_id = started.stdout.strip()

    async def scheduled() -> bool:
        return bool((await running.hub.workflows.get(execution_id)).runs)

    await assert_eventually(scheduled)
    got = await fleetchat("workflow", "cancel", execution_id, "--reason", "withdrawn", *hub)

    assert got.exit_code == 0, got.output
    assert got.stdout.strip() == f"execution {execution_id}: cancelled"
    assert (await running.hub.workflows.get(execution_id)).status == "cancelled"
    redrive = await fleetchat("workflow", "redrive", execution_id, *hub)
    assert redrive.exit_code == 1
    assert "[conflict]" in redrive.stderr


FAILING = """\
schema: fleetchat.workflow/v1
name: cli-refuse
version: 1.0.0
steps:
  - id: refuse
    type: fail
    error: fleetchat.failed
    message: out of parts
"""


async def test_run_wait_exits_1_and_prints_the_error_when_the_execution_fails(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await start_server(auth=False, url="memory://")
    hub = ("--hub", running.url)
    await fleetchat("workflow", "register", _write(tmp_path, "f.yaml", FAILING), *hub)

    got = await fleetchat("workflow", "run", "cli-refuse", "--wait", *hub)

    assert got.exit_code == 1, got.output
    assert ": failed (cli-refuse@1.0.0)" in got.stdout
    assert "out of parts" in got.stdout
    as_json = await fleetchat("workflow", "definitions", "--json", *hub)
    assert [d["name"] for d in json.loads(as_json.stdout)] == ["cli-refuse"]
    not_json = await fleetchat("workflow", "run", "cli-refuse", "--input", "{bin", *hub)
    assert not_json.exit_code == 1
    assert "--input is not JSON" in not_json.stderr


async def test_cancel_json_prints_the_execution(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(auth=False, url="memory://")
    hub = ("--hub", running.url)
    await fleetchat("workflow", "register", _write(tmp_path, "o.yaml", ORDER), *hub)
    started = await fleetchat(
        "workflow", "run", "cli-order", "--input", '{"bin": "b"}', "--json", *hub
    )
    execution_id = json.loads(started.stdout)["id"]

    got = await fleetchat("workflow", "cancel", execution_id, "--json", *hub)

    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["status"] == "cancelled"
    shown = await fleetchat("workflow", "status", execution_id, *hub)
    assert ": cancelled (cli-order@1.0.0)" in shown.stdout
