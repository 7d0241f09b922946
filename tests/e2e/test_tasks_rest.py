"""Tasks through a real server: the REST API under /v1/tasks and HubClient.tasks.

Agents register over the WebSocket (a ``hello`` with capabilities) and are offered tasks in
their inboxes; the tests drive them through the REST agent reports.
"""

from __future__ import annotations

from typing import Any

import pytest

from fleetchat.client import HubClient
from fleetchat.errors import (
    ConflictError,
    RequestTimeoutError,
    TaskNotFoundError,
    TaskNotHeldError,
    UnsatisfiableError,
)
from fleetchat.testing import assert_eventually

from .conftest import RawAgent, RunningServer, StartServer

WELD = {"weld": 0.95}


async def _offered(
    running: RunningServer, task_id: str, agent: str, token: str | None = None
) -> dict[str, Any]:
    """The task once the scheduler has offered it to ``agent``."""
    task: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal task
        _, task = await running.request("GET", f"/v1/tasks/{task_id}", token=token)
        return task.get("state") == "offered" and task.get("holder") == agent

    await assert_eventually(check, message=f"task {task_id} was never offered to {agent}")
    return task


async def _welder(running: RunningServer, agent_id: str = "welder-1") -> RawAgent:
    return await running.connect(agent_id, capabilities=WELD)


async def test_a_task_runs_its_whole_lifecycle_through_the_rest_reports(
    server: RunningServer,
) -> None:
    arm_token = await server.token("arm-1")
    arm = await server.connect("arm-1", arm_token, capabilities=WELD)
    planner = await server.token("planner")

    status, submitted = await server.request(
        "POST",
        "/v1/tasks",
        token=planner,
        json={"required": {"weld": 1.0}, "payload": {"seam": 7}, "priority": "high"},
    )
    assert status == 201, submitted
    task_id = submitted["id"]
    offer = (await arm.deliveries(1))[0].body
    assert (offer["action"], offer["task"], offer["attempt"]) == ("offer", task_id, 1)
    await _offered(server, task_id, "arm-1", planner)

    path = f"/v1/tasks/{task_id}"
    for action, body in (
        ("accept", {"attempt": 1}),
        ("start", {}),
        ("progress", {"progress": 0.5}),
        ("complete", {"result": {"ok": True}}),
    ):
        status, task = await server.request("POST", f"{path}/{action}", token=arm_token, json=body)
        assert status == 200, (action, task)

    assert task["state"] == "succeeded"
    assert task["result"] == {"ok": True}
    assert task["submitted_by"] == "planner"
    assert [(a["agent"], a["outcome"]) for a in task["attempts"]] == [("arm-1", "succeeded")]
    assert (await server.hub.tasks.get(task_id)).state == "succeeded"


async def test_submit_get_list_and_cancel(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    await _welder(running)
    status, task = await running.request(
        "POST",
        "/v1/tasks",
        json={
            "required": {"weld": 1.0},
            "timeouts": {"start_to_close": 12, "heartbeat": 2},
            "max_retries": 1,
        },
    )
    assert status == 201, task
    assert task["timeouts"]["start_to_close"] == 12
    assert task["timeouts"]["heartbeat"] == 2
    assert task["max_retries"] == 1

    status, got = await running.request("GET", f"/v1/tasks/{task['id']}")
    assert (status, got["id"]) == (200, task["id"])
    _, active = await running.request("GET", "/v1/tasks?state=active")
    assert [t["id"] for t in active["tasks"]] == [task["id"]]

    status, cancelled = await running.request(
        "POST", f"/v1/tasks/{task['id']}/cancel", json={"reason": "order withdrawn"}
    )

    assert (status, cancelled["state"]) == (200, "cancelled")
    assert cancelled["reason"] == "order withdrawn"
    _, listed = await running.request("GET", "/v1/tasks?state=cancelled&limit=5")
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]
    _, active = await running.request("GET", "/v1/tasks?state=active")
    assert active["tasks"] == []


async def test_the_same_idempotency_key_returns_the_same_task(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    await _welder(running)
    body = {"required": {"weld": 1.0}, "idempotency_key": "order-42", "payload": 1}

    _, first = await running.request("POST", "/v1/tasks", json=body)
    _, second = await running.request("POST", "/v1/tasks", json={**body, "payload": 2})

    assert second["id"] == first["id"]
    assert second.get("payload") == 1
    _, listed = await running.request("GET", "/v1/tasks")
    assert len(listed["tasks"]) == 1


async def test_an_unknown_capability_is_422_unsatisfiable(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    await _welder(running)

    status, body = await running.request("POST", "/v1/tasks", json={"required": {"paint": 1}})

    assert (status, body["error"]["code"]) == (422, "unsatisfiable")
    _, listed = await running.request("GET", "/v1/tasks")
    assert listed["tasks"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"required": {"weld": 1}, "timeouts": {"start_to_close": -1}},
        {"required": {"weld": 1}, "timeouts": {"heartbeat": 0}},
        {"required": {"weld": 1}, "max_retries": -1},
        {"required": {"weld": 1}, "mode": "lottery"},
        {"required": {"weld": 1}, "channel": "no spaces allowed"},
        {"required": {"weld": 1}, "surprise": True},
    ],
)
async def test_bad_submissions_are_400_and_queue_nothing(
    start_server: StartServer, body: dict[str, Any]
) -> None:
    running = await start_server(auth=False)
    await _welder(running)

    status, answer = await running.request("POST", "/v1/tasks", json=body)

    assert status == 400, answer
    assert answer["error"]["code"] in ("invalid_input", "invalid_id")
    _, listed = await running.request("GET", "/v1/tasks")
    assert listed["tasks"] == []


async def test_an_unknown_task_id_is_404(start_server: StartServer) -> None:
    running = await start_server(auth=False)

    got = await running.request("GET", "/v1/tasks/nope")
    done = await running.request(
        "POST", "/v1/tasks/nope/complete", json={"agent": "welder-1", "result": 1}
    )

    assert got[0] == done[0] == 404
    assert got[1]["error"]["code"] == done[1]["error"]["code"] == "task_not_found"


async def test_a_list_in_an_unknown_state_is_400(start_server: StartServer) -> None:
    running = await start_server(auth=False)

    status, body = await running.request("GET", "/v1/tasks?state=lost")

    assert (status, body["error"]["code"]) == (400, "invalid_input")


async def test_a_result_from_an_agent_that_does_not_hold_the_task_is_409_and_changes_nothing(
    start_server: StartServer,
) -> None:
    running = await start_server(auth=False)
    await _welder(running)
    _, task = await running.request("POST", "/v1/tasks", json={"required": {"weld": 1}})
    before = await _offered(running, task["id"], "welder-1")

    status, body = await running.request(
        "POST", f"/v1/tasks/{task['id']}/complete", json={"agent": "intruder", "result": "x"}
    )

    assert (status, body["error"]["code"]) == (409, "task_not_held")
    _, after = await running.request("GET", f"/v1/tasks/{task['id']}")
    assert (after["state"], after["holder"], after["attempts"]) == (
        before["state"],
        before["holder"],
        before["attempts"],
    )
    assert after["result"] is None
    assert after["dropped_results"] == 1  # counted, as every late or foreign result is


async def test_without_auth_a_report_must_name_its_agent(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    await _welder(running)
    _, task = await running.request("POST", "/v1/tasks", json={"required": {"weld": 1}})

    status, body = await running.request("POST", f"/v1/tasks/{task['id']}/accept", json={})

    assert (status, body["error"]["code"], body["error"]["details"]["field"]) == (
        400,
        "invalid_input",
        "agent",
    )


async def test_with_auth_a_report_cannot_act_as_another_agent(server: RunningServer) -> None:
    token = await server.token("welder-1")
    await server.connect("welder-1", token, capabilities=WELD)
    _, task = await server.request("POST", "/v1/tasks", token=token, json={"required": {"weld": 1}})

    status, body = await server.request(
        "POST", f"/v1/tasks/{task['id']}/accept", token=token, json={"agent": "welder-2"}
    )

    assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_the_sdk_submits_waits_and_sees_the_result(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    await _welder(running)
    async with HubClient(running.url) as rest:
        task = await rest.tasks.submit({"weld": 1.0}, payload="seam", idempotency_key="k-1")
        assert task.state == "queued"
        assert (await rest.tasks.submit({"weld": 1.0}, idempotency_key="k-1")).id == task.id
        await _offered(running, task.id, "welder-1")
        with pytest.raises(RequestTimeoutError):
            await rest.tasks.wait(task.id, timeout=0.1)
        worker = rest.tasks
        worker.agent = "welder-1"
        await worker.start(task.id, attempt=1)
        await worker.progress(task.id, 0.9)
        await worker.complete(task.id, {"done": True})

        done = await rest.tasks.wait(task.id, timeout=5)

        assert (done.state, done.result) == ("succeeded", {"done": True})
        assert [t.id for t in await rest.tasks.list(state="succeeded")] == [task.id]


async def test_the_sdk_raises_the_typed_errors(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    await _welder(running)
    async with HubClient(running.url) as rest:
        with pytest.raises(UnsatisfiableError):
            await rest.tasks.submit({"fly": 1.0})
        with pytest.raises(TaskNotFoundError):
            await rest.tasks.get("missing")
        task = await rest.tasks.submit({"weld": 1.0})
        with pytest.raises(TaskNotHeldError):
            await rest.tasks.complete(task.id, 1, agent="welder-9")
        await rest.tasks.cancel(task.id)
        with pytest.raises(ConflictError):
            await rest.tasks.cancel(task.id)


async def test_a_rejected_offer_and_a_failure_without_retry_fail_the_task(
    start_server: StartServer,
) -> None:
    running = await start_server(auth=False)
    await _welder(running, "welder-1")
    async with HubClient(running.url) as rest:
        task = await rest.tasks.submit({"weld": 1.0}, agent_id="welder-1", max_retries=0)
        await _offered(running, task.id, "welder-1")
        await rest.tasks.accept(task.id, agent="welder-1")

        failed = await rest.tasks.fail(task.id, "torch jammed", retry=False, agent="welder-1")

        assert failed.state == "failed"
        assert failed.attempts[-1].outcome == "failed"
        assert failed.attempts[-1].reason == "torch jammed"


async def test_an_auction_takes_bids_over_rest(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    await _welder(running, "welder-1")
    async with HubClient(running.url) as rest:
        task = await rest.tasks.submit({"weld": 1.0}, mode="auction")

        async def bidding_open() -> bool:
            return (await rest.tasks.get(task.id)).auction_until is not None

        await assert_eventually(bidding_open)
        bid = await rest.tasks.bid(task.id, cost=3.0, eta=12.0, agent="welder-1")

        assert [(b.agent, b.cost, b.eta) for b in bid.bids] == [("welder-1", 3.0, 12.0)]


async def test_with_auth_only_the_submitter_or_an_admin_cancels_a_task(
    server: RunningServer,
) -> None:
    planner = await server.token("planner")
    other = await server.token("intruder")
    admin = await server.token("ops", admin=True)
    await server.connect("welder-1", await server.token("welder-1"), capabilities={"paint": 1.0})
    tasks = []
    for _ in range(2):
        status, task = await server.request(
            "POST", "/v1/tasks", token=planner, json={"required": {"paint": 1}}
        )
        assert status == 201, task
        tasks.append(task["id"])

    status, body = await server.request(
        "POST", f"/v1/tasks/{tasks[0]}/cancel", token=other, json={"reason": "mine now"}
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    assert "only its submitter (planner)" in body["error"]["message"]
    assert (await server.hub.tasks.get(tasks[0])).state != "cancelled"

    status, body = await server.request(
        "POST", f"/v1/tasks/{tasks[0]}/cancel", token=planner, json={}
    )
    assert (status, body["state"]) == (200, "cancelled")
    status, body = await server.request(
        "POST", f"/v1/tasks/{tasks[1]}/cancel", token=admin, json={}
    )
    assert (status, body["state"]) == (200, "cancelled")
