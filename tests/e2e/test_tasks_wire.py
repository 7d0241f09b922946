"""Tasks on the raw wire protocol (docs/protocol.md §7b and the ``task`` frame): what an agent
in another language sees and sends, and the errors for bad reports."""

from __future__ import annotations

from tests.e2e.conftest import RunningServer, StartServer


async def test_an_offer_and_the_reports_of_a_raw_agent(start_server: StartServer) -> None:
    server: RunningServer = await start_server(auth=False)
    arm = await server.connect("arm-2", capabilities={"weld": 0.9, "pick": 0.95})
    task = await server.hub.tasks.submit({"weld": 2, "pick": 1}, payload={"part": "b-7"})
    (offer,) = await arm.deliveries(1)
    m = offer.message
    assert (m["channel"], m["sender"], m["kind"]) == ("@arm-2", "$hub", "task")
    body = m["body"]
    assert body["action"] == "offer"
    assert (body["task"], body["attempt"], body["payload"]) == (task.id, 1, {"part": "b-7"})
    assert set(body) >= {"required", "priority", "start_to_close", "heartbeat", "offer_deadline"}
    await arm.ack(offer.tag)
    for i, (action, extra) in enumerate(
        (("start", {}), ("progress", {"progress": 0.5}), ("complete", {"result": {"mm": 182}}))
    ):
        frame = {"type": "task", "id": f"r{i}", "task": task.id, "action": action, "attempt": 1}
        await arm.send(frame | extra)
        assert (await arm.expect("ok", id=f"r{i}"))["channels"] == []
    done = await server.hub.tasks.get(task.id)
    assert (done.state, done.result) == ("succeeded", {"mm": 182})


async def test_bad_task_reports_get_typed_errors_and_change_nothing(
    start_server: StartServer,
) -> None:
    server: RunningServer = await start_server(auth=False)
    arm = await server.connect("arm-1", capabilities={"weld": 0.9})
    task = await server.hub.tasks.submit({"weld": 1.0})
    await arm.deliveries(1)
    cases = [
        ({"task": "nope", "action": "start"}, "task_not_found"),
        ({"task": task.id, "action": "start", "attempt": 0}, "invalid_input"),
        ({"task": task.id, "action": "bid", "cost": 1.0}, "invalid_input"),
        ({"task": task.id, "action": "complete", "attempt": 2}, "task_not_held"),
        ({"task": task.id, "action": "progress", "progress": 3}, "invalid_input"),
        ({"task": task.id, "action": "explode"}, "invalid_input"),
    ]
    for i, (frame, code) in enumerate(cases):
        await arm.send({"type": "task", "id": f"b{i}", **frame})
        error = await arm.expect("error", id=f"b{i}") if "explode" not in str(frame) else None
        if error is None:  # an unknown action is a malformed frame: no id to echo
            error = await arm.expect("error")
        assert error["code"] == code, (frame, error)
    after = await server.hub.tasks.get(task.id)
    assert (after.state, after.holder, after.attempt) == ("offered", "arm-1", 1)
