"""Workflows through a real server: the REST API under /v1/workflows and /v1/executions, and
HubClient.workflows, with SDK agents doing the steps over the WebSocket."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fleetchat.client import HubClient, HubUnavailableError
from fleetchat.client.task_work import TaskWork
from fleetchat.errors import (
    ConflictError,
    InvalidDefinitionError,
    InvalidInputError,
    NotFoundError,
    RequestTimeoutError,
)
from fleetchat.workflows.schema import WORKFLOW_SCHEMA

from .conftest import MakeAgent, RunningServer, StartServer

YAML = {"Content-Type": "application/yaml"}


def definition(name: str, version: str = "1.0.0", **more: Any) -> dict[str, Any]:
    """pick -> place, each an agent task; the input must have a string ``bin``."""
    return {
        "schema": "fleetchat.workflow/v1",
        "name": name,
        "version": version,
        "input_schema": {
            "type": "object",
            "required": ["bin"],
            "properties": {"bin": {"type": "string"}},
        },
        "defaults": {"timeout": {"start_to_close": "10s"}, "retry": {"max_attempts": 1}},
        "steps": [
            {
                "id": "pick",
                "type": "agent_task",
                "agent": {"capabilities": {"pick": 1.0}},
                "input": {"bin": "${input.bin}"},
            },
            {
                "id": "place",
                "type": "agent_task",
                "agent": {"capabilities": {"place": 1.0}},
                "input": "${steps.pick.output}",
            },
        ],
        **more,
    }


WAITING_YAML = """\
schema: fleetchat.workflow/v1
name: {name}
version: 2.0.0
steps:
  - id: pause
    type: wait
    duration: 1h
  - id: done
    type: succeed
    output: slept
"""


@pytest.fixture
async def running(start_server: StartServer) -> RunningServer:
    return await start_server(auth=False)


async def test_a_definition_registers_from_json_and_from_yaml(running: RunningServer) -> None:
    status, json_record = await running.request(
        "POST", "/v1/workflows", json=definition("order-json")
    )
    assert status == 201, json_record
    text = WAITING_YAML.format(name="order-yaml")
    status, yaml_record = await running.request("POST", "/v1/workflows", data=text, headers=YAML)
    assert status == 201, yaml_record

    assert (json_record["name"], json_record["version"]) == ("order-json", "1.0.0")
    assert (yaml_record["name"], yaml_record["version"]) == ("order-yaml", "2.0.0")
    assert yaml_record["document"]["steps"][0]["duration"] == "1h"
    _, listed = await running.request("GET", "/v1/workflows")
    assert [d["name"] for d in listed["definitions"]] == ["order-json", "order-yaml"]
    status, got = await running.request("GET", "/v1/workflows/order-yaml?version=2.0.0")
    assert (status, got["content_hash"]) == (200, yaml_record["content_hash"])


async def test_the_same_definition_again_is_200_and_changed_content_is_a_409(
    running: RunningServer,
) -> None:
    body = definition("same-again")
    status, first = await running.request("POST", "/v1/workflows", json=body)
    assert status == 201, first

    status, again = await running.request("POST", "/v1/workflows", json=body)
    assert (status, again) == (200, first)
    changed = {**body, "description": "another text under the same version"}
    status, conflict = await running.request("POST", "/v1/workflows", json=changed)
    assert status == 409, conflict
    assert conflict["error"]["code"] == "conflict"
    status, bumped = await running.request(
        "POST", "/v1/workflows", json={**changed, "version": "1.1.0"}
    )
    assert status == 201, bumped


async def test_an_invalid_definition_is_a_400_listing_every_problem_with_path_and_step(
    running: RunningServer,
) -> None:
    body = definition("broken")
    body["steps"][0]["next"] = "nowhere"
    body["steps"][1]["input"] = "${steps.pick.output +}"
    body["steps"].append({"id": "pick", "type": "succeed"})

    status, answer = await running.request("POST", "/v1/workflows", json=body)

    assert status == 400, answer
    error = answer["error"]
    assert error["code"] == "invalid_definition"
    problems = error["details"]["problems"]
    assert len(problems) >= 3, problems
    assert all({"path", "step", "message"} <= set(p) for p in problems)
    text = json.dumps(problems)
    assert "nowhere" in text
    assert {"pick", "place"} <= {p["step"] for p in problems}
    _, listed = await running.request("GET", "/v1/workflows")
    assert listed["definitions"] == []


async def test_a_body_that_is_not_a_definition_is_a_400(running: RunningServer) -> None:
    status, answer = await running.request("POST", "/v1/workflows", data=b"[1, 2")
    assert (status, answer["error"]["code"]) == (400, "invalid_definition")
    status, answer = await running.request("POST", "/v1/workflows", data="- a list", headers=YAML)
    assert (status, answer["error"]["code"]) == (400, "invalid_definition")


async def test_a_body_over_the_frame_limit_is_413_and_one_nested_too_deeply_400(
    running: RunningServer,
) -> None:
    limit = running.hub.settings.server.max_frame_bytes
    status, answer = await running.request(
        "POST", "/v1/workflows", data=io.BytesIO(b" " * (limit + 1))
    )
    assert (status, answer["error"]["code"]) == (413, "message_too_large")

    status, answer = await running.request("POST", "/v1/workflows", data=b"[" * 100_000)
    assert (status, answer["error"]["code"]) == (400, "invalid_input")


async def test_the_client_says_when_the_hub_is_unreachable(running: RunningServer) -> None:
    async with HubClient("http://127.0.0.1:1") as hub:
        with pytest.raises(HubUnavailableError):
            await hub.workflows.graph("anything")


async def test_the_workflow_schema_is_served(running: RunningServer) -> None:
    status, schema = await running.request("GET", "/v1/schemas/workflow")
    assert (status, schema) == (200, json.loads(json.dumps(WORKFLOW_SCHEMA)))


async def test_an_input_that_fails_the_input_schema_is_a_400_and_starts_nothing(
    running: RunningServer,
) -> None:
    await running.request("POST", "/v1/workflows", json=definition("checked"))

    status, answer = await running.request(
        "POST", "/v1/workflows/checked/executions", json={"input": {"bin": 7}}
    )

    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_input"
    problems = answer["error"]["details"]["problems"]
    assert [p["path"] for p in problems] == ["/bin"]
    _, listed = await running.request("GET", "/v1/executions")
    assert listed["executions"] == []


async def test_a_two_step_workflow_runs_to_completion_on_an_sdk_agent(
    running: RunningServer, agents: MakeAgent
) -> None:
    robot = agents("robot-1", {"pick": 0.9, "place": 0.9}, hub=running.url)
    done: list[Any] = []

    @robot.on_task
    async def work(task: TaskWork) -> Any:
        done.append(task.payload["workflow"]["step"])
        step_input = task.payload["input"]
        return {"picked": step_input["bin"]} if "bin" in step_input else {"placed": step_input}

    async with robot, HubClient(running.url) as hub:
        await hub.workflows.register(definition("two-steps"))
        started = await hub.workflows.start("two-steps", {"bin": "b-7"})
        finished = await hub.workflows.wait(started.id, timeout=20)

        assert (finished.status, finished.output) == ("completed", {"placed": {"picked": "b-7"}})
        assert done == ["pick", "place"]
        assert {k: r.status for k, r in finished.runs.items()} == {
            "pick": "completed",
            "place": "completed",
        }
        events = await hub.workflows.events(started.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        types = [e.type for e in events]
        assert types[0] == "execution.started"
        assert types[-1] == "execution.completed"
        steps = [e.step for e in events if e.type == "step.completed"]
        assert steps == ["pick", "place"]
        listed = await hub.workflows.executions(status="completed", workflow="two-steps")
        assert [e.id for e in listed] == [started.id]


async def test_cancel_stops_a_running_execution(running: RunningServer) -> None:
    text = WAITING_YAML.format(name="sleeper")
    await running.request("POST", "/v1/workflows", data=text, headers=YAML)
    status, started = await running.request(
        "POST", "/v1/workflows/sleeper/executions", json={"version": "2.0.0"}
    )
    assert (status, started["status"]) == (201, "running")
    path = f"/v1/executions/{started['id']}"

    status, cancelled = await running.request(
        "POST", f"{path}/cancel", json={"reason": "order withdrawn"}
    )

    assert (status, cancelled["status"]) == (200, "cancelled")
    _, events = await running.request("GET", f"{path}/events")
    assert events["events"][-1]["type"] == "execution.cancelled"
    _, running_now = await running.request("GET", "/v1/executions?status=running")
    assert running_now["executions"] == []
    status, answer = await running.request("POST", f"{path}/redrive")
    assert (status, answer["error"]["code"]) == (409, "conflict")


async def test_a_failed_execution_is_redriven_from_its_failed_step(
    running: RunningServer, agents: MakeAgent
) -> None:
    robot = agents("robot-2", {"pick": 0.9, "place": 0.9}, hub=running.url)
    broken = asyncio.Event()
    broken.set()

    @robot.on_task
    async def work(task: TaskWork) -> Any:
        if task.payload["workflow"]["step"] == "place" and broken.is_set():
            raise RuntimeError("gripper jammed")
        return task.payload["workflow"]["step"]

    async with robot, HubClient(running.url) as hub:
        await hub.workflows.register(definition("flaky"))
        started = await hub.workflows.start("flaky", {"bin": "b-1"})
        failed = await hub.workflows.wait(started.id, timeout=20)
        assert failed.status == "failed", failed
        assert failed.runs["place"].status == "failed"

        broken.clear()
        redriven = await hub.workflows.redrive(started.id)
        assert redriven.status == "running"
        finished = await hub.workflows.wait(started.id, timeout=20)

    assert (finished.status, finished.output) == ("completed", "place")
    assert finished.runs["pick"].attempt == 1  # the completed step did not run again


async def test_graph_is_mermaid_text(running: RunningServer) -> None:
    await running.request("POST", "/v1/workflows", json=definition("drawn"))

    async with running.http.get(f"{running.url}/v1/workflows/drawn/graph") as r:
        text = await r.text()
        assert (r.status, r.content_type) == (200, "text/plain")
    async with HubClient(running.url) as hub:
        assert await hub.workflows.graph("drawn", "1.0.0") == text
    assert text.startswith("flowchart")
    assert "pick" in text
    assert "place" in text


async def test_a_deprecated_version_starts_nothing(running: RunningServer) -> None:
    await running.request("POST", "/v1/workflows", json=definition("old"))
    await running.request("POST", "/v1/workflows", json=definition("old", "1.1.0"))
    path = "/v1/workflows/old"

    status, record = await running.request("POST", f"{path}/deprecate", json={"version": "1.1.0"})

    assert (status, record["deprecated"]) == (200, True)
    _, latest = await running.request("GET", path)
    assert latest["version"] == "1.0.0"
    status, answer = await running.request(
        "POST", f"{path}/executions", json={"input": {"bin": "x"}, "version": "1.1.0"}
    )
    assert (status, answer["error"]["code"]) == (409, "conflict")
    await running.request(
        "POST", f"{path}/deprecate", json={"version": "1.1.0", "deprecated": False}
    )
    _, latest = await running.request("GET", path)
    assert latest["version"] == "1.1.0"


async def test_unknown_workflows_and_executions_are_404(running: RunningServer) -> None:
    for method, path in (
        ("GET", "/v1/workflows/ghost"),
        ("GET", "/v1/workflows/ghost/graph"),
        ("GET", "/v1/executions/ghost"),
        ("GET", "/v1/executions/ghost/events"),
        ("POST", "/v1/executions/ghost/redrive"),
    ):
        status, answer = await running.request(method, path)
        assert (status, answer["error"]["code"]) == (404, "not_found"), path
    status, answer = await running.request("GET", "/v1/executions?status=asleep")
    assert (status, answer["error"]["code"]) == (400, "invalid_input")


async def test_writes_need_a_token_when_auth_is_on(server: RunningServer) -> None:
    status, answer = await server.request("POST", "/v1/workflows", json=definition("guarded"))
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")

    token = await server.token("planner")
    status, _ = await server.request(
        "POST", "/v1/workflows", json=definition("guarded"), token=token
    )
    assert status == 201


async def test_the_client_maps_errors_and_registers_files(
    running: RunningServer, tmp_path: Path
) -> None:
    path = tmp_path / "sleeper.yaml"
    path.write_text(WAITING_YAML.format(name="filed"))
    as_json = tmp_path / "order.json"
    as_json.write_text(json.dumps(definition("filed-json")))

    async with HubClient(running.url) as hub:
        record = await hub.workflows.register(path)
        assert (record.name, record.version) == ("filed", "2.0.0")
        assert (await hub.workflows.register(as_json)).name == "filed-json"
        assert (await hub.workflows.register(path.read_text())).content_hash == (
            record.content_hash
        )
        assert [d.name for d in await hub.workflows.definitions()] == ["filed", "filed-json"]
        assert (await hub.workflows.get("filed")).version == "2.0.0"
        assert (await hub.workflows.deprecate("filed", "2.0.0")).deprecated

        with pytest.raises(InvalidDefinitionError) as invalid:
            await hub.workflows.register({"schema": "fleetchat.workflow/v1", "name": "x"})
        assert isinstance(invalid.value.details["problems"], list)
        with pytest.raises(InvalidInputError) as bad_input:
            await hub.workflows.start("filed-json", {"bin": 1})
        assert bad_input.value.details["problems"][0]["path"] == "/bin"
        with pytest.raises(ConflictError):
            await hub.workflows.start("filed", version="2.0.0")
        with pytest.raises(NotFoundError):
            await hub.workflows.execution("ghost")

        started = await hub.workflows.start("filed-json", {"bin": "b"})
        with pytest.raises(RequestTimeoutError):
            await hub.workflows.wait(started.id, timeout=0.1)
        cancelled = await hub.workflows.cancel(started.id, "no robot today")
        assert cancelled.status == "cancelled"
