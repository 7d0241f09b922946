"""The SDK's TaskRunner on its own: what it reports for each notice (the hub side is tested
end to end in tests/e2e/test_tasks_agents.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fleetchat import protocol as p
from fleetchat.client.task_work import TaskRunner, TaskWork
from fleetchat.errors import TaskNotHeldError
from fleetchat.models import Message


def notice(body: dict[str, Any]) -> Message:
    return Message(id="n", channel="@arm-1", sender="$hub", kind="task", body=body)


def offer(task: str = "t-1", attempt: int = 1, **more: Any) -> Message:
    return notice({"action": "offer", "task": task, "attempt": attempt, "payload": 7, **more})


class Hub:
    """Records the frames; ``refuse`` answers task_not_held for those actions."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.frames: list[p.TaskReport] = []
        self.refuse = refuse

    async def call(self, frame: p.TaskReport) -> None:
        self.frames.append(frame)
        if frame.action in self.refuse:
            raise TaskNotHeldError("not yours")

    def sent(self) -> list[tuple[str, int | None]]:
        return [(f.action, f.attempt) for f in self.frames]


async def test_an_offer_runs_the_handler_and_reports_the_result() -> None:
    hub = Hub()
    runner = TaskRunner(hub.call, capacity=1)

    async def handler(work: TaskWork) -> int:
        return int(work.payload) * 2

    runner.handler = handler
    await runner.on_notice(offer())
    await asyncio.sleep(0.01)
    assert hub.sent() == [("start", 1), ("complete", 1)]
    assert hub.frames[-1].result == 14
    assert runner.running == {}


async def test_an_offer_again_while_running_carries_on_under_the_new_attempt() -> None:
    hub = Hub()
    runner = TaskRunner(hub.call, capacity=1)
    go = asyncio.Event()
    runs = 0

    async def handler(work: TaskWork) -> str:
        nonlocal runs
        runs += 1
        await go.wait()
        return "done"

    runner.handler = handler
    await runner.on_notice(offer(attempt=1))
    await asyncio.sleep(0.01)
    await runner.on_notice(offer(attempt=2))  # the hub re-offered it after a reconnect
    go.set()
    await asyncio.sleep(0.01)
    assert runs == 1
    assert hub.sent() == [("start", 1), ("start", 2), ("complete", 2)]


async def test_offers_beyond_capacity_or_declined_are_rejected() -> None:
    hub = Hub()
    runner = TaskRunner(hub.call, capacity=1)
    block = asyncio.Event()

    async def handler(work: TaskWork) -> None:
        await block.wait()

    runner.handler = handler
    runner.accept = lambda work: work.payload != "no"
    await runner.on_notice(offer("t-1"))
    await runner.on_notice(offer("t-2"))  # busy
    await asyncio.sleep(0.01)
    block.set()
    await asyncio.sleep(0.01)
    await runner.on_notice(offer("t-3", payload="no"))
    assert [(f.task, f.action, f.error) for f in hub.frames if f.action == "reject"] == [
        ("t-2", "reject", "busy"),
        ("t-3", "reject", "declined"),
    ]


async def test_a_cancel_stops_the_handler_and_nothing_is_reported() -> None:
    hub = Hub()
    runner = TaskRunner(hub.call, capacity=1)
    stopped = asyncio.Event()

    async def handler(work: TaskWork) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    runner.handler = handler
    await runner.on_notice(offer())
    await asyncio.sleep(0.01)
    await runner.on_notice(notice({"action": "cancel", "task": "t-1", "attempt": 1}))
    await asyncio.wait_for(stopped.wait(), 1)
    await asyncio.sleep(0.01)
    assert hub.sent() == [("start", 1)]


async def test_a_failure_is_reported_and_a_refused_start_runs_nothing() -> None:
    hub = Hub()
    runner = TaskRunner(hub.call, capacity=2)

    async def handler(work: TaskWork) -> None:
        raise ValueError("no part")

    runner.handler = handler
    await runner.on_notice(offer())
    await asyncio.sleep(0.01)
    assert hub.sent() == [("start", 1), ("fail", 1)]
    assert hub.frames[-1].error == "ValueError: no part"
    late = Hub(refuse=("start",))
    runner = TaskRunner(late.call, capacity=1)
    runner.handler = handler
    await runner.on_notice(offer())
    await asyncio.sleep(0.01)
    assert late.sent() == [("start", 1)]  # the offer ran out first: the handler never ran
    assert runner.failed == 0


async def test_a_call_for_proposals_gets_a_bid_or_nothing() -> None:
    hub = Hub()
    runner = TaskRunner(hub.call, capacity=1)
    cfp = notice({"action": "cfp", "task": "t-9", "required": {"carry": 1}, "closes_at": 5.0})
    await runner.on_notice(cfp)  # no bidder: nothing

    async def bidder(call: Any) -> tuple[float, float] | None:
        return (3.5, 12.0) if call.task == "t-9" else None

    runner.bidder = bidder
    await runner.on_notice(cfp)
    assert [(f.action, f.cost, f.eta) for f in hub.frames] == [("bid", 3.5, 12.0)]
