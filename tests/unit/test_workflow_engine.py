"""The workflow engine with a fake clock, on memory and SQLite: every step type, retries and
catch, timeouts, parallel joins, waits, map, sub-workflows, cancel and redrive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fleetchat import Hub
from fleetchat.errors import ConflictError, InvalidInputError, NotFoundError, TaskNotHeldError
from fleetchat.testing import FakeClock
from fleetchat.workflows.records import ExecutionRecord

Behaviour = Callable[[dict[str, Any], int], Any]
"""(task input, attempt) -> result; raising fails the attempt."""


async def settle(clock: FakeClock, rounds: int = 6) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0.002)
        await clock.advance(0)


class Fleet:
    """Agents answering their task offers by hand-written behaviours."""

    def __init__(self, hub: Hub, clock: FakeClock) -> None:
        self.hub, self.clock = hub, clock
        self.behaviour: dict[str, Behaviour] = {}
        self.seen: dict[str, list[tuple[Any, int]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self.hold: set[str] = set()
        """Agents that accept and then never answer."""

    async def add(self, agent: str, caps: dict[str, float], behaviour: Behaviour) -> None:
        await self.hub.registry.register(agent, capabilities=caps, capacity=4)
        self.behaviour[agent] = behaviour
        sub = await self.hub.subscribe(agent)
        self._loops.append(asyncio.get_running_loop().create_task(self._serve(agent, sub)))

    async def _serve(self, agent: str, sub: Any) -> None:
        while True:
            batch = await sub.fetch(timeout=None)
            if batch is None:
                continue
            for m in batch.messages:
                body = m.body
                if m.kind != "task" or body.get("action") != "offer":
                    continue
                task, attempt = body["task"], body["attempt"]
                payload = body["payload"]["input"]
                self.seen.setdefault(agent, []).append(
                    (payload, body["payload"]["workflow"]["attempt"])
                )
                try:
                    await self.hub.tasks.start(task, agent, attempt)
                except TaskNotHeldError:
                    continue  # cancelled before it was taken (a join that no longer needs it)
                if agent in self.hold:
                    continue
                try:
                    result = self.behaviour[agent](payload, body["payload"]["workflow"]["attempt"])
                except Exception as exc:
                    report = self.hub.tasks.fail(task, agent, attempt, str(exc))
                else:
                    report = self.hub.tasks.complete(task, agent, attempt, result)
                with contextlib.suppress(TaskNotHeldError):  # cancelled while it ran
                    await report
            await batch.ack()

    def beat(self) -> None:
        for agent in self.behaviour:
            self.hub.registry.heartbeat(agent)

    async def advance(self, seconds: float) -> None:
        steps = max(int(seconds / 0.5), 1)
        for _ in range(steps):
            self.beat()
            await self.clock.advance(seconds / steps)
            await settle(self.clock)

    def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()


@pytest.fixture
async def fleet(hub: Hub, clock: FakeClock) -> AsyncIterator[Fleet]:
    f = Fleet(hub, clock)
    yield f
    f.stop()


async def run(
    hub: Hub, fleet: Fleet, definition: dict[str, Any], data: Any = None
) -> ExecutionRecord:
    await hub.workflows.register(definition)
    execution = await hub.workflows.start(definition["name"], data)
    for _ in range(40):
        await settle(fleet.clock)
        record = await hub.workflows.get(execution.id)
        if record.finished:
            return record
        await fleet.advance(0.5)
    return await hub.workflows.get(execution.id)


def wf(name: str, steps: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "schema": "fleetchat.workflow/v1",
        "name": name,
        "version": "1.0.0",
        "defaults": {"timeout": {"start_to_close": "30s"}, "retry": {"max_attempts": 1}},
        "steps": steps,
        **more,
    }


def task(step_id: str, capability: str, input: Any = None, **more: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "agent_task",
        "agent": {"capabilities": {capability: 1.0}},
        "input": input,
        **more,
    }


async def test_tasks_set_and_condition_run_in_order_to_success(hub: Hub, fleet: Fleet) -> None:
    await fleet.add("picker", {"pick": 0.9}, lambda inp, a: {"bin": inp["bin"], "ok": True})
    await fleet.add("packer", {"pack": 0.9}, lambda inp, a: {"box": f"box-{inp}"})
    definition = wf(
        "order",
        [
            task("pick", "pick", {"bin": "${input.bin}"}),
            {"id": "note", "type": "set", "values": {"picked": "${steps.pick.output.bin}"}},
            {
                "id": "check",
                "type": "condition",
                "cases": [{"when": "steps.pick.output.ok", "next": "pack"}],
                "default": "reject",
            },
            task("pack", "pack", "${vars.picked}", next="done"),
            {"id": "reject", "type": "fail", "error": "fleetchat.failed", "message": "bad pick"},
            {"id": "done", "type": "succeed", "output": "${steps.pack.output}"},
        ],
    )
    record = await run(hub, fleet, definition, {"bin": 7})
    assert (record.status, record.output) == ("completed", {"box": "box-7"})
    assert record.vars == {"picked": 7}
    events = [e.type for e in await hub.workflows.events(record.id)]
    assert events[0] == "execution.started"
    assert events[-1] == "execution.completed"
    assert events.count("step.completed") == 5
    assert fleet.seen["picker"] == [({"bin": 7}, 1)]
    assert (record.runs["pick"].agent, record.runs["pack"].agent) == ("picker", "packer")


async def test_a_failed_attempt_is_retried_then_caught(hub: Hub, fleet: Fleet) -> None:
    calls: list[int] = []

    def flaky(inp: Any, attempt: int) -> Any:
        calls.append(attempt)
        raise RuntimeError("jammed")

    await fleet.add("arm", {"weld": 0.9}, flaky)
    definition = wf(
        "weld",
        [
            task(
                "weld",
                "weld",
                retry={"max_attempts": 3, "initial_interval": "1s"},
                catch=[{"errors": ["fleetchat.agent_error"], "next": "fallback", "as": "why"}],
            ),
            {"id": "ok", "type": "succeed"},
            {"id": "fallback", "type": "succeed", "output": "${vars.why.type}"},
        ],
    )
    record = await run(hub, fleet, definition)
    assert (record.status, record.output) == ("completed", "fleetchat.agent_error")
    assert calls == [1, 2, 3]
    types = [e.type for e in await hub.workflows.events(record.id)]
    assert types.count("step.retrying") == 2
    assert "step.caught" in types


async def test_an_uncaught_failure_fails_the_execution_and_redrive_resumes_it(
    hub: Hub, fleet: Fleet
) -> None:
    broken = {"on": True}

    def sometimes(inp: Any, attempt: int) -> Any:
        if broken["on"]:
            raise RuntimeError("offline")
        return "fixed"

    await fleet.add("a", {"x": 0.9}, lambda inp, at: "first")
    await fleet.add("b", {"y": 0.9}, sometimes)
    definition = wf("two", [task("one", "x"), task("two", "y")])
    failed = await run(hub, fleet, definition)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error["type"], failed.error["step"]) == ("fleetchat.agent_error", "two")
    broken["on"] = False
    await hub.workflows.redrive(failed.id)
    for _ in range(10):
        await fleet.advance(0.5)
    done = await hub.workflows.get(failed.id)
    assert (done.status, done.output) == ("completed", "fixed")
    assert [p for p, _ in fleet.seen["a"]] == [None]  # the completed step was not run again


async def test_parallel_join_all_any_and_tolerated_failures(hub: Hub, fleet: Fleet) -> None:
    await fleet.add("ok", {"good": 0.9}, lambda inp, a: inp)
    await fleet.add("bad", {"bad": 0.9}, lambda inp, a: 1 / 0)

    def parallel(join: Any, tolerated: int = 0) -> dict[str, Any]:
        return {
            "id": "both",
            "type": "parallel",
            "join": join,
            "tolerated_failures": tolerated,
            "branches": {
                "left": [task(f"l_{join}_{tolerated}", "good", "L")],
                "right": [task(f"r_{join}_{tolerated}", "bad", "R")],
            },
        }

    all_ = await run(hub, fleet, wf("p-all", [parallel("all")]))
    assert all_.status == "failed"
    assert all_.error is not None
    assert all_.error["type"] == "fleetchat.branch_failed"
    tolerant = await run(hub, fleet, wf("p-tol", [parallel("all", 1)]))
    assert (tolerant.status, tolerant.output) == ("completed", {"left": "L"})
    any_ = await run(hub, fleet, wf("p-any", [parallel("any")]))
    assert (any_.status, any_.output) == ("completed", {"left": "L"})


async def test_a_wait_for_a_duration_and_for_a_matching_message(
    hub: Hub, fleet: Fleet, clock: FakeClock
) -> None:
    await hub.channels.create("approvals", announce=False)
    definition = wf(
        "approve",
        [
            {"id": "pause", "type": "wait", "duration": "10s"},
            {
                "id": "approval",
                "type": "wait",
                "message": {
                    "channel": "approvals",
                    "when": "message.body.order == input.order && message.body.ok",
                },
                "timeout": {"schedule_to_close": "1h"},
            },
            {"id": "done", "type": "succeed", "output": "${steps.approval.output.sender}"},
        ],
    )
    await hub.workflows.register(definition)
    execution = await hub.workflows.start("approve", {"order": 5})
    await fleet.advance(5)
    assert (await hub.workflows.get(execution.id)).runs["pause"].status == "waiting"
    await fleet.advance(6)
    assert (await hub.workflows.get(execution.id)).runs["approval"].status == "waiting"
    await hub.publish("approvals", {"order": 4, "ok": True}, sender="lead")  # another order
    await hub.publish("approvals", {"order": 5, "ok": True}, sender="lead")
    await settle(clock, 12)
    done = await hub.workflows.get(execution.id)
    assert (done.status, done.output) == ("completed", "lead")


async def test_a_wait_that_times_out_is_caught(hub: Hub, fleet: Fleet) -> None:
    definition = wf(
        "impatient",
        [
            {
                "id": "approval",
                "type": "wait",
                "message": {"channel": "nobody"},
                "timeout": {"schedule_to_close": "3s"},
                "catch": [{"errors": ["fleetchat.timeout"], "next": "escalate"}],
            },
            {"id": "ok", "type": "succeed", "output": "approved"},
            {"id": "escalate", "type": "succeed", "output": "escalated"},
        ],
    )
    record = await run(hub, fleet, definition)
    assert (record.status, record.output) == ("completed", "escalated")


async def test_map_runs_every_item_within_its_concurrency(hub: Hub, fleet: Fleet) -> None:
    await fleet.add("cam", {"inspect": 0.9}, lambda inp, a: inp * 10)
    definition = wf(
        "inspect-all",
        [
            {
                "id": "each",
                "type": "map",
                "items": "input.parts",
                "max_concurrency": 2,
                "steps": [task("look", "inspect", "${item}")],
            },
            {"id": "done", "type": "succeed", "output": "${steps.each.output}"},
        ],
    )
    record = await run(hub, fleet, definition, {"parts": [1, 2, 3, 4, 5]})
    assert (record.status, record.output) == ("completed", [10, 20, 30, 40, 50])
    assert sorted(p for p, _ in fleet.seen["cam"]) == [1, 2, 3, 4, 5]


async def test_a_sub_workflow_runs_as_a_child_execution(hub: Hub, fleet: Fleet) -> None:
    await fleet.add("arm", {"weld": 0.9}, lambda inp, a: f"welded {inp}")
    await hub.workflows.register(wf("child", [task("w", "weld", "${input.part}")]))
    parent = wf(
        "parent",
        [
            {"id": "sub", "type": "sub_workflow", "workflow": "child@1.0.0", "input": {"part": 3}},
            {"id": "done", "type": "succeed", "output": "${steps.sub.output}"},
        ],
    )
    record = await run(hub, fleet, parent)
    assert (record.status, record.output) == ("completed", "welded 3")
    children = [e for e in await hub.workflows.list(name="child")]
    assert [c.parent for c in children] == [f"{record.id}/sub"]


async def test_cancel_stops_the_running_task(hub: Hub, fleet: Fleet, clock: FakeClock) -> None:
    await fleet.add("slow", {"think": 0.9}, lambda inp, a: "never")
    fleet.hold.add("slow")
    await hub.workflows.register(wf("long", [task("think", "think")]))
    execution = await hub.workflows.start("long")
    await fleet.advance(1)
    running = await hub.workflows.get(execution.id)
    assert running.runs["think"].status == "running"
    cancelled = await hub.workflows.cancel(execution.id, "no longer needed")
    assert cancelled.status == "cancelled"
    await settle(clock)
    tasks = await hub.tasks.list()
    assert [t.state for t in tasks] == ["cancelled"]


async def test_registration_versions_inputs_and_expression_errors(hub: Hub, fleet: Fleet) -> None:
    first = wf("greet", [{"id": "s", "type": "succeed", "output": "${input.name}"}])
    first["input_schema"] = {"type": "object", "required": ["name"]}
    await hub.workflows.register(first)
    await hub.workflows.register(first)  # the same content again: fine
    changed = {**first, "description": "other"}
    with pytest.raises(ConflictError):
        await hub.workflows.register(changed)
    with pytest.raises(InvalidInputError):
        await hub.workflows.start("greet", {"nom": "x"})
    assert await hub.workflows.list() == []
    await hub.workflows.register({**changed, "version": "1.1.0"})
    assert (await hub.workflows.resolve("greet")).version == "1.1.0"
    await hub.workflows.deprecate("greet", "1.1.0")
    assert (await hub.workflows.resolve("greet")).version == "1.0.0"
    with pytest.raises(ConflictError):
        await hub.workflows.start("greet", {"name": "x"}, version="1.1.0")
    with pytest.raises(NotFoundError):
        await hub.workflows.start("nope")
    broken = wf(
        "divide",
        [
            {
                "id": "calc",
                "type": "set",
                "values": {"x": "${input.a / input.b}"},
                "catch": [{"errors": ["fleetchat.expression"], "next": "bad"}],
            },
            {"id": "good", "type": "succeed", "output": "ok"},
            {"id": "bad", "type": "succeed", "output": "${steps.calc.error.type}"},
        ],
    )
    record = await run(hub, fleet, broken, {"a": 1, "b": 0})
    assert (record.status, record.output) == ("completed", "fleetchat.expression")


async def test_finished_executions_are_dropped_after_the_retention() -> None:
    from fleetchat import HubSettings
    from fleetchat.config import WorkflowSettings

    clock = FakeClock()
    settings = HubSettings(url="memory://", workflows=WorkflowSettings(retention=30.0))
    async with Hub(settings, clock=clock) as hub:
        fleet = Fleet(hub, clock)
        record = await run(hub, fleet, wf("quick", [{"id": "s", "type": "succeed", "output": 1}]))
        assert record.status == "completed"
        assert await hub.workflows.engine.sweep() == 0  # not old enough
        await clock.advance(31)
        assert await hub.workflows.engine.sweep() == 1
        with pytest.raises(NotFoundError):
            await hub.workflows.get(record.id)
        assert hub.bus.channel(f"$wf.{record.id}") is None


async def test_step_and_execution_timeouts_and_a_fail_step(hub: Hub, fleet: Fleet) -> None:
    await fleet.add("slow", {"think": 0.9}, lambda inp, a: "late")
    fleet.hold.add("slow")
    step_timeout = wf(
        "step-timeout",
        [
            task(
                "think",
                "think",
                timeout={"schedule_to_close": "5s", "start_to_close": "60s"},
                catch=[{"errors": ["fleetchat.timeout"], "next": "give_up"}],
            ),
            {"id": "ok", "type": "succeed"},
            {"id": "give_up", "type": "fail", "message": "no answer for ${input.who}"},
        ],
    )
    record = await run(hub, fleet, step_timeout, {"who": "ana"})
    assert record.status == "failed"
    assert record.error is not None
    assert (record.error["type"], record.error["message"]) == (
        "fleetchat.failed",
        "no answer for ana",
    )
    assert record.runs["think"].status == "failed"
    whole = wf("whole", [{"id": "nap", "type": "wait", "duration": "1h"}], execution_timeout="4s")
    timed_out = await run(hub, fleet, whole)
    assert timed_out.status == "failed"
    assert timed_out.error is not None
    assert timed_out.error["type"] == "fleetchat.timeout"


async def test_loops_guards_named_agents_joins_of_n_and_tolerated_map_failures(
    hub: Hub, fleet: Fleet
) -> None:
    await fleet.add("arm-7", {"weld": 0.9}, lambda inp, a: inp)
    await fleet.add("flaky", {"check": 0.9}, lambda inp, a: 1 / 0 if inp == 2 else inp)
    loop = wf(
        "loop",
        [
            {"id": "count", "type": "set", "values": {"n": "${has(vars.n) ? vars.n + 1 : 1}"}},
            {
                "id": "again",
                "type": "condition",
                "cases": [{"when": "vars.n < 10", "next": "count"}],
                "default": "out",
                "max_visits": 3,
            },
            {"id": "out", "type": "succeed"},
        ],
    )
    looped = await run(hub, fleet, loop)
    assert looped.status == "failed"
    assert looped.error is not None
    assert looped.error["type"] == "fleetchat.loop_limit"
    named = wf(
        "named",
        [{"id": "w", "type": "agent_task", "agent": {"id": "${input.who}"}, "input": "seam"}],
    )
    done = await run(hub, fleet, named, {"who": "arm-7"})
    assert (done.status, done.output) == ("completed", "seam")
    assert done.runs["w"].agent == "arm-7"
    first_of_three = wf(
        "first",
        [
            {
                "id": "race",
                "type": "parallel",
                "join": 1,
                "branches": {
                    "a": [task("race_a", "check", 1)],
                    "b": [task("race_b", "check", 2)],
                    "c": [{"id": "race_c", "type": "wait", "duration": "1h"}],
                },
            }
        ],
    )
    raced = await run(hub, fleet, first_of_three)
    assert (raced.status, raced.output) == ("completed", {"a": 1})
    assert raced.runs["race_c"].status == "cancelled"
    tolerant_map = wf(
        "tolerant",
        [
            {
                "id": "each",
                "type": "map",
                "items": "input.items",
                "tolerated_failures": "50%",
                "steps": [task("one", "check", "${item}")],
            }
        ],
    )
    mapped = await run(hub, fleet, tolerant_map, {"items": [1, 2, 3]})
    assert (mapped.status, mapped.output) == ("completed", [1, None, 3])
    not_a_list = wf(
        "notalist",
        [
            {
                "id": "each",
                "type": "map",
                "items": "input.items",
                "steps": [task("two", "check", "${item}")],
                "catch": [{"errors": ["fleetchat.expression"], "next": "bad"}],
            },
            {"id": "good", "type": "succeed"},
            {"id": "bad", "type": "succeed", "output": "${error.type}"},
        ],
    )
    caught = await run(hub, fleet, not_a_list, {"items": "abc"})
    assert (caught.status, caught.output) == ("completed", "fleetchat.expression")


async def test_a_failing_child_fails_its_step_and_a_wait_until_a_time(
    hub: Hub, fleet: Fleet, clock: FakeClock
) -> None:
    await hub.workflows.register(
        wf("broken-child", [{"id": "no", "type": "fail", "message": "child says no"}])
    )
    parent = wf(
        "parent-of-broken",
        [
            {
                "id": "sub",
                "type": "sub_workflow",
                "workflow": "broken-child@latest",
                "retry": {"max_attempts": 1},
            },
        ],
    )
    failed = await run(hub, fleet, parent)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error["step"], failed.error["message"]) == ("sub", "child says no")
    until = wf(
        "until",
        [
            {"id": "hold", "type": "wait", "until": "input.at"},
            {"id": "go", "type": "succeed", "output": "released"},
        ],
    )
    await hub.workflows.register(until)
    import datetime as dt

    at = dt.datetime.fromtimestamp(clock.time() + 20, dt.UTC).isoformat()
    execution = await hub.workflows.start("until", {"at": at})
    await fleet.advance(10)
    assert (await hub.workflows.get(execution.id)).status == "running"
    await fleet.advance(11)
    done = await hub.workflows.get(execution.id)
    assert (done.status, done.output) == ("completed", "released")


async def test_the_engine_catches_up_with_what_happened_while_it_was_stopped(
    hub: Hub, fleet: Fleet, clock: FakeClock
) -> None:
    await fleet.add("arm", {"weld": 0.9}, lambda inp, a: f"{inp} welded")
    fleet.hold.add("arm")  # takes the task, does not answer
    await hub.workflows.register(wf("catchup", [task("w", "weld", "seam")]))
    execution = await hub.workflows.start("catchup")
    await fleet.advance(1)
    (held,) = await hub.tasks.list()
    assert held.state == "running"
    engine = hub.workflows.engine
    await engine.stop()  # as if leadership moved away
    await hub.tasks.complete(held.id, "arm", held.attempt, "seam welded")
    late = await hub.workflows.start("catchup")  # started while no engine runs
    await engine.start()  # resumes both: the first finds its task done
    await fleet.advance(1)
    done = await hub.workflows.get(execution.id)
    assert (done.status, done.output) == ("completed", "seam welded")
    assert (await hub.workflows.get(late.id)).runs["w"].status == "running"
    # A task result the engine never heard of (its watcher gone) is found by the 5 s check.
    hub.tasks.watchers.clear()
    (second,) = [t for t in await hub.tasks.list() if t.state == "running"]
    await hub.tasks.complete(second.id, "arm", second.attempt, "late seam")
    await fleet.advance(6)
    assert (await hub.workflows.get(late.id)).status == "completed"


async def test_a_sub_workflow_that_does_not_exist_fails_the_step(hub: Hub, fleet: Fleet) -> None:
    parent = wf(
        "orphan",
        [
            {
                "id": "sub",
                "type": "sub_workflow",
                "workflow": "nowhere@1.0.0",
                "retry": {"max_attempts": 1},
                "catch": [{"errors": ["fleetchat.validation"], "next": "lost"}],
            },
            {"id": "found", "type": "succeed"},
            {"id": "lost", "type": "succeed", "output": "${error.message}"},
        ],
    )
    record = await run(hub, fleet, parent)
    assert record.status == "completed"
    assert "nowhere" in record.output
