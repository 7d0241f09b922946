"""The task scheduler with a fake clock, on memory and SQLite: offers, every timeout, retries,
agent loss, duplicate results, pre-emption, auctions, batches, cancel, bad input."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.chat.subscription import Subscription
from fleetchat.config import TaskSettings
from fleetchat.errors import (
    ConflictError,
    InvalidInputError,
    TaskNotFoundError,
    TaskNotHeldError,
    UnsatisfiableError,
)
from fleetchat.testing import FakeClock

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


async def settle(clock: FakeClock) -> None:
    for _ in range(4):
        await asyncio.sleep(0.002)  # SQLite commits on the real loop
        await clock.advance(0)


async def notices(sub: Subscription, clock: FakeClock) -> list[dict[str, Any]]:
    """The task notices waiting for this agent (acked)."""
    await settle(clock)
    out: list[dict[str, Any]] = []
    while (batch := await sub.fetch(timeout=0)) is not None:
        out.extend(m.body for m in batch.messages if m.kind == "task")
        await batch.ack()
    return out


async def advance(hub: Hub, clock: FakeClock, seconds: float, alive: Iterable[str] = ()) -> None:
    """Let ``seconds`` pass in steps, the ``alive`` agents heartbeating all along."""
    alive = list(alive)
    steps = max(int(seconds / 0.5), 1)
    for _ in range(steps):
        for agent in alive:
            hub.registry.heartbeat(agent)
        await clock.advance(seconds / steps)
        await settle(clock)


@pytest.fixture
async def agents(hub: Hub) -> dict[str, Subscription]:
    """arm-1 (weld 0.95), arm-2 (weld 0.85), cam-1 (inspect 0.9); capacity 1 each."""
    subs = {}
    for agent, caps in (
        ("arm-1", {"weld": 0.95}),
        ("arm-2", {"weld": 0.85}),
        ("cam-1", {"inspect": 0.9}),
    ):
        await hub.registry.register(agent, capabilities=caps, capacity=1)
        subs[agent] = await hub.subscribe(agent)
    return subs


async def test_a_task_goes_to_the_best_agent_and_succeeds(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    watcher = await hub.subscribe("watcher", "$tasks")
    task = await hub.tasks.submit({"weld": 1.0}, payload={"part": 7})
    (offer,) = await notices(agents["arm-1"], clock)
    assert offer["action"] == "offer"
    assert (offer["task"], offer["attempt"], offer["payload"]) == (task.id, 1, {"part": 7})
    assert await notices(agents["arm-2"], clock) == []
    assert hub.scheduler.load("arm-1") == 1
    await hub.tasks.accept(task.id, "arm-1", 1)
    await hub.tasks.start(task.id, "arm-1", 1)
    done = await hub.tasks.complete(task.id, "arm-1", 1, {"ok": True})
    assert (done.state, done.result, done.holder) == ("succeeded", {"ok": True}, None)
    await settle(clock)
    assert hub.scheduler.load("arm-1") == 0
    events = [m.body for b in [await watcher.fetch(timeout=0)] if b for m in b.messages]
    assert [(e["state"], e.get("previous")) for e in events] == [
        ("queued", None),
        ("offered", "queued"),
        ("accepted", "offered"),
        ("running", "accepted"),
        ("succeeded", "running"),
    ]


async def test_a_task_waits_while_every_candidate_is_at_its_load_threshold(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    first = await hub.tasks.submit({"inspect": 1.0})
    second = await hub.tasks.submit({"inspect": 1.0})
    assert [n["task"] for n in await notices(agents["cam-1"], clock)] == [first.id]
    assert (await hub.tasks.get(second.id)).state == "queued"  # load 1/1 >= 0.8
    await hub.tasks.start(first.id, "cam-1")
    await hub.tasks.complete(first.id, "cam-1")
    assert [n["task"] for n in await notices(agents["cam-1"], clock)] == [second.id]


async def test_an_offer_not_accepted_in_time_goes_to_the_next_candidate(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0}, offer_timeout=2.0)
    assert len(await notices(agents["arm-1"], clock)) == 1
    await advance(hub, clock, 2.5, alive=agents)
    (offer,) = await notices(agents["arm-2"], clock)
    assert offer["attempt"] == 2
    now = await hub.tasks.get(task.id)
    assert (now.state, now.holder, now.retries_used) == ("offered", "arm-2", 0)
    assert now.attempts[0].outcome == "offer_timeout"


async def test_a_rejected_offer_goes_to_the_next_candidate_at_once(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0})
    await notices(agents["arm-1"], clock)
    await hub.tasks.reject(task.id, "arm-1", 1, "battery low")
    (offer,) = await notices(agents["arm-2"], clock)
    assert offer["task"] == task.id
    assert (await hub.tasks.get(task.id)).attempts[0].reason == "battery low"


async def test_start_to_close_fails_the_attempt_and_retries_elsewhere_after_backoff(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0}, start_to_close=10.0)
    await notices(agents["arm-1"], clock)
    await hub.tasks.start(task.id, "arm-1", 1)
    await advance(hub, clock, 10.5, alive=agents)
    cancel = await notices(agents["arm-1"], clock)
    assert [(n["action"], n["reason"]) for n in cancel] == [("cancel", "start_to_close")]
    await advance(hub, clock, hub.settings.tasks.backoff(1), alive=agents)
    assert [n["attempt"] for n in await notices(agents["arm-2"], clock)] == [2]
    retried = await hub.tasks.get(task.id)
    assert (retried.retries_used, retried.attempts[0].outcome) == (1, "start_to_close")
    assert retried.attempts[1].offered_at - retried.attempts[0].ended_at >= 0.5  # the backoff


async def test_a_silent_agent_misses_its_heartbeat_and_a_progressing_one_does_not(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0}, heartbeat=3.0)
    await notices(agents["arm-1"], clock)
    await hub.tasks.start(task.id, "arm-1", 1)
    for _ in range(4):  # 8 s with progress every 2 s: alive
        await advance(hub, clock, 2.0, alive=agents)
        await hub.tasks.progress(task.id, "arm-1", 1, 0.25)
    assert (await hub.tasks.get(task.id)).state == "running"
    await advance(hub, clock, 3.5, alive=agents)
    failed = await hub.tasks.get(task.id)
    assert failed.attempts[0].outcome == "heartbeat"
    assert failed.state in ("queued", "offered")


async def test_the_retry_budget_runs_out_and_every_attempt_is_reported(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0}, max_retries=1)
    await notices(agents["arm-1"], clock)
    await hub.tasks.start(task.id, "arm-1", 1)
    await hub.tasks.fail(task.id, "arm-1", 1, "gripper jammed")
    await advance(hub, clock, hub.settings.tasks.backoff(1) + 0.1, alive=agents)
    (offer,) = await notices(agents["arm-2"], clock)
    await hub.tasks.start(task.id, "arm-2", offer["attempt"])
    end = await hub.tasks.fail(task.id, "arm-2", offer["attempt"], "torch out")
    assert end.state == "failed"
    assert end.error == "1. arm-1: failed (gripper jammed); 2. arm-2: failed (torch out)"


async def test_exactly_one_result_is_accepted_and_the_others_are_counted(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0})
    await notices(agents["arm-1"], clock)
    await hub.tasks.start(task.id, "arm-1", 1)
    with pytest.raises(TaskNotHeldError):  # not the holder: refused, nothing changes
        await hub.tasks.complete(task.id, "arm-2", 1, "mine")
    done = await hub.tasks.complete(task.id, "arm-1", 1, "first")
    again = await hub.tasks.complete(task.id, "arm-1", 1, "second")  # a repeat: dropped
    assert (again.state, again.result, again.dropped_results) == ("succeeded", "first", 2)
    assert done.result == "first"
    with pytest.raises(TaskNotHeldError):
        await hub.tasks.fail(task.id, "arm-1", 1, "late")
    assert (await hub.tasks.get(task.id)).result == "first"


async def test_a_lost_agent_s_task_is_offered_elsewhere_at_once(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0})
    await notices(agents["arm-1"], clock)
    await hub.tasks.start(task.id, "arm-1", 1)
    hub.registry.mark_offline("arm-1")  # its connection dropped
    (offer,) = await notices(agents["arm-2"], clock)  # no time passed
    assert offer["task"] == task.id
    now = await hub.tasks.get(task.id)
    assert now.attempts[0].outcome == "agent_lost"
    assert now.retries_used == 1


async def test_schedule_to_start_times_the_task_out(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    busy = await hub.tasks.submit({"inspect": 1.0})
    await settle(clock)
    await hub.tasks.start(busy.id, "cam-1")
    waiting = await hub.tasks.submit({"inspect": 1.0}, schedule_to_start=5.0)
    await advance(hub, clock, 5.5, alive=agents)
    out = await hub.tasks.get(waiting.id)
    assert (out.state, out.reason) == ("timed_out", "schedule_to_start")


async def test_cancel_stops_the_holder_and_is_final(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit({"weld": 1.0})
    await notices(agents["arm-1"], clock)
    await hub.tasks.start(task.id, "arm-1", 1)
    cancelled = await hub.tasks.cancel(task.id, "order withdrawn")
    assert cancelled.state == "cancelled"
    (notice,) = await notices(agents["arm-1"], clock)
    assert (notice["action"], notice["reason"]) == ("cancel", "order withdrawn")
    with pytest.raises(ConflictError):
        await hub.tasks.cancel(task.id)
    with pytest.raises(TaskNotHeldError):
        await hub.tasks.complete(task.id, "arm-1", 1, "too late")


async def test_an_idempotency_key_gives_back_the_first_task(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    first = await hub.tasks.submit({"weld": 1.0}, idempotency_key="order-17")
    again = await hub.tasks.submit({"inspect": 1.0}, idempotency_key="order-17")
    assert again.id == first.id
    assert len(await hub.tasks.list()) == 1


async def test_bad_input_is_refused_and_nothing_is_stored(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    with pytest.raises(UnsatisfiableError, match="fly") as info:
        await hub.tasks.submit({"fly": 1.0})
    assert info.value.code == "unsatisfiable"
    with pytest.raises(UnsatisfiableError):  # known, but nobody is good enough
        await hub.tasks.submit({"weld": 1.0, "inspect": 1.0})
    for kwargs in (
        {"start_to_close": -1},
        {"heartbeat": 0},
        {"max_retries": -1},
        {"priority": "urgent"},
        {"mode": "lottery"},
        {"idempotency_key": ""},
    ):
        with pytest.raises(InvalidInputError):
            await hub.tasks.submit({"weld": 1.0}, **kwargs)
    with pytest.raises(InvalidInputError):
        await hub.tasks.submit({"weld": -1.0})
    assert await hub.tasks.list() == []
    with pytest.raises(TaskNotFoundError):
        await hub.tasks.get("no-such-task")


async def test_an_auction_offers_to_the_best_bid_then_the_next() -> None:
    clock = FakeClock()
    settings = HubSettings(url="memory://")
    async with Hub(settings, clock=clock) as hub:
        subs = {}
        for agent in ("amr-1", "amr-2", "amr-3"):
            await hub.registry.register(agent, capabilities={"carry": 0.9}, capacity=1)
            subs[agent] = await hub.subscribe(agent)
        task = await hub.tasks.submit({"carry": 1.0}, mode="auction")
        calls = {a: await notices(s, clock) for a, s in subs.items()}
        assert all([n["action"] for n in c] == ["cfp"] for c in calls.values())
        await hub.tasks.bid(task.id, "amr-1", cost=9.0, eta=30.0)
        await hub.tasks.bid(task.id, "amr-2", cost=4.0, eta=60.0)
        await hub.tasks.bid(task.id, "amr-3", cost=6.0, eta=10.0)
        await advance(hub, clock, settings.tasks.auction_window + 0.1, alive=subs)
        assert [n["action"] for n in await notices(subs["amr-2"], clock)] == ["offer"]
        await hub.tasks.reject(task.id, "amr-2", 1, "changed my mind")
        assert [n["action"] for n in await notices(subs["amr-3"], clock)] == ["offer"]
        with pytest.raises(ConflictError):  # bidding is over
            await hub.tasks.bid(task.id, "amr-1", cost=1.0, eta=1.0)


async def test_batch_mode_finds_the_assignment_greedy_would_miss() -> None:
    clock = FakeClock()
    settings = HubSettings(url="memory://", tasks=TaskSettings(mode="batch"))
    async with Hub(settings, clock=clock) as hub:
        # Greedy gives "both" (submitted first) to a-1, its best, and "weld" then waits.
        await hub.registry.register("a-1", capabilities={"weld": 1.0, "paint": 1.0})
        await hub.registry.register("a-2", capabilities={"paint": 0.9})
        subs = {a: await hub.subscribe(a) for a in ("a-1", "a-2")}
        hub.scheduler.running and await hub.scheduler.stop()  # queue both before a pass
        paint = await hub.tasks.submit({"paint": 1.0})
        weld = await hub.tasks.submit({"weld": 1.0})
        await hub.scheduler.start()
        got = {a: [n["task"] for n in await notices(s, clock)] for a, s in subs.items()}
        assert got == {"a-1": [weld.id], "a-2": [paint.id]}


async def test_a_critical_task_preempts_a_lower_priority_one_when_allowed() -> None:
    clock = FakeClock()
    settings = HubSettings(url="memory://", tasks=TaskSettings(preemption=True))
    async with Hub(settings, clock=clock) as hub:
        await hub.registry.register("arm-1", capabilities={"weld": 0.9}, capacity=1)
        sub = await hub.subscribe("arm-1")
        low = await hub.tasks.submit({"weld": 1.0}, priority="low")
        await notices(sub, clock)
        await hub.tasks.start(low.id, "arm-1", 1)
        urgent = await hub.tasks.submit({"weld": 1.0}, priority="critical")
        got = await notices(sub, clock)
        assert [(n["action"], n["task"]) for n in got] == [
            ("cancel", low.id),
            ("offer", urgent.id),
        ]
        back = await hub.tasks.get(low.id)
        assert (back.state, back.retries_used, back.attempts[0].outcome) == (
            "queued",
            0,
            "preempted",
        )


async def test_no_preemption_by_default(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    low = await hub.tasks.submit({"inspect": 1.0}, priority="low")
    await settle(clock)
    await hub.tasks.start(low.id, "cam-1")
    urgent = await hub.tasks.submit({"inspect": 1.0}, priority="critical")
    await settle(clock)
    assert (await hub.tasks.get(urgent.id)).state == "queued"
    assert (await hub.tasks.get(low.id)).state == "running"


async def test_unfinished_tasks_are_picked_up_by_a_restarted_hub(tmp_path: Any) -> None:
    clock = FakeClock()
    settings = HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}")
    async with Hub(settings, clock=clock) as hub:
        await hub.registry.register("arm-1", capabilities={"weld": 0.9})
        await hub.registry.register("arm-2", capabilities={"weld": 0.8})
        task = await hub.tasks.submit({"weld": 1.0}, offer_timeout=5.0)
        await settle(clock)
        assert (await hub.tasks.get(task.id)).holder == "arm-1"
    async with Hub(dataclasses.replace(settings), clock=clock) as hub:
        for agent in ("arm-1", "arm-2"):
            hub.registry.heartbeat(agent)
        await advance(hub, clock, 5.5, alive=["arm-1", "arm-2"])  # the offer ran out meanwhile
        now = await hub.tasks.get(task.id)
        assert (now.state, now.holder) == ("offered", "arm-2")


async def test_a_task_for_a_named_agent_goes_to_it_only(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    task = await hub.tasks.submit(agent_id="arm-2", payload="calibrate")
    assert [n["task"] for n in await notices(agents["arm-2"], clock)] == [task.id]
    assert await notices(agents["arm-1"], clock) == []
    with pytest.raises(UnsatisfiableError):
        await hub.tasks.submit(agent_id="arm-9")


async def test_a_draining_agent_gets_nothing_new(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    await hub.registry.set_draining("arm-1")
    task = await hub.tasks.submit({"weld": 1.0})
    assert [n["task"] for n in await notices(agents["arm-2"], clock)] == [task.id]
    assert await notices(agents["arm-1"], clock) == []


async def test_an_auction_on_a_channel_without_bids_falls_back_to_the_best_agent(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    await hub.channels.create("bids", announce=False)
    listener = await hub.subscribe("listener", "bids")
    task = await hub.tasks.submit({"weld": 1.0}, mode="auction", channel="bids")
    (call,) = await notices(listener, clock)
    assert (call["action"], call["task"]) == ("cfp", task.id)
    assert await notices(agents["arm-1"], clock) == []  # the call went to the channel only
    await advance(hub, clock, hub.settings.tasks.auction_window + 0.1, alive=agents)
    assert [n["action"] for n in await notices(agents["arm-1"], clock)] == ["offer"]


async def test_the_scheduler_catches_up_with_a_change_it_was_not_told_of(
    hub: Hub, clock: FakeClock, agents: dict[str, Subscription]
) -> None:
    import msgspec

    task = await hub.tasks.submit({"inspect": 1.0})
    await settle(clock)
    assert hub.scheduler.load("cam-1") == 1
    held = await hub.store.load_task(task.id)
    assert held is not None
    finished = msgspec.structs.replace(held, state="succeeded", holder=None, deadline=None)
    assert await hub.store.save_task(finished, held.version)  # as another node would, unheard
    await advance(hub, clock, 5.5, alive=agents)
    assert hub.scheduler.load("cam-1") == 0
    assert task.id not in {t.id for t in hub.scheduler.view()}


async def test_transitions_from_the_wrong_state_are_refused() -> None:
    from fleetchat.tasks import lifecycle
    from fleetchat.tasks.records import TaskRecord

    queued = TaskRecord(id="t", required={"weld": 1.0})
    offered, _ = lifecycle.offer(queued, "arm-1", 1.0)
    with pytest.raises(ConflictError):
        lifecycle.offer(offered, "arm-2", 2.0)
    with pytest.raises(ConflictError):
        lifecycle.reject(queued, None, "offer_timeout", None, 2.0)
    with pytest.raises(ConflictError):
        lifecycle.fail_attempt(queued, "failed", None, 2.0, 0.0)
    with pytest.raises(TaskNotHeldError, match="attempt 2"):
        lifecycle.accept(offered, "arm-1", 2, 2.0)
    cancelled, event = lifecycle.cancel(offered, None, 3.0)
    assert (event.state, event.previous, cancelled.reason) == ("cancelled", "offered", "cancelled")
    with pytest.raises(ConflictError):
        lifecycle.time_out(cancelled, "schedule_to_start", 4.0)
