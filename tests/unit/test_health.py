"""Health checks and failure detection on an embedded hub: the failing path of every check,
and what the detector does about it (faults injected through FaultyStore)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fleetchat import Hub
from fleetchat.config import HubSettings
from fleetchat.errors import DegradedError
from fleetchat.ops.journal import ALERTS_CHANNEL
from fleetchat.ops.settings import HealthSettings
from fleetchat.testing import FakeClock, assert_eventually
from fleetchat.testing.faults import FaultyStore


def _hub(url: str, clock: FakeClock, **health: object) -> Hub:
    """A hub whose detection rounds run only when the test calls ``detector.check()``."""
    health.setdefault("interval", 3600.0)
    settings = HubSettings(url=url, health=HealthSettings(**health))  # type: ignore[arg-type]
    return Hub(settings, clock=clock)


async def test_a_healthy_hub_passes_every_check(backend_url: str, clock: FakeClock) -> None:
    async with _hub(backend_url, clock) as hub:
        report = await hub.ops.health.report()

    assert report.status == "ok", report
    assert [c.name for c in report.checks] == [
        "agents.heartbeats",
        "agents.load",
        "agents.response_time",
        "channels.backlog",
        "channels.dead_letters",
        "channels.stalled",
        "queues.depth",
        "queues.oldest",
        "database.write",
        "database.disk",
    ]
    assert report.leader
    assert report.degraded is None


async def test_late_heartbeats_and_full_load_are_warned(backend_url: str, clock: FakeClock) -> None:
    async with _hub(backend_url, clock, load_warn=0.9) as hub:
        await hub.registry.register("arm-1", capabilities={"weld": 1.0}, capacity=1)
        await hub.registry.register("arm-2", capabilities={"weld": 1.0}, capacity=2)
        hub.registry.set_load("arm-2", 2)
        await clock.advance(2.5)  # heartbeats every 1 s: late, not yet offline (3 missed)
        hub.registry.heartbeat("arm-2")
        report = await hub.ops.health.report()

    beats, load = report.check("agents.heartbeats"), report.check("agents.load")
    assert (beats.status, beats.items) == ("warn", ["arm-1"])
    assert (load.status, load.items) == ("warn", ["arm-2"])
    assert report.status == "warn"


async def test_an_agent_slow_at_its_tasks_is_warned(backend_url: str, clock: FakeClock) -> None:
    async with _hub(backend_url, clock, response_time_warn=10.0) as hub:
        await hub.registry.register("slow", capabilities={"weld": 1.0})
        task = await hub.tasks.submit({"weld": 1.0}, agent_id="slow")

        async def offered() -> bool:
            return (await hub.tasks.get(task.id)).state == "offered"

        await assert_eventually(offered)
        await hub.tasks.start(task.id, "slow")
        for _ in range(12):  # 12 s of work, the agent alive all along
            await clock.advance(1.0)
            hub.registry.heartbeat("slow")
        await hub.tasks.complete(task.id, "slow", result="ok")
        report = await hub.ops.health.report()

    check = report.check("agents.response_time")
    assert (check.status, check.items) == ("warn", ["slow"])


async def test_backlog_stall_and_old_queue_are_warned_then_parked(
    backend_url: str, clock: FakeClock
) -> None:
    async with _hub(
        backend_url, clock, backlog_warn=5, stalled_after=30.0, queue_age_warn=20.0
    ) as hub:
        await hub.channels.create("orders", announce=False)
        await hub.subscribe("picker", "orders")  # joined, never fetches
        for i in range(8):
            await hub.publish("orders", i, sender="planner")
        first = await hub.ops.detector.check()
        assert first.check("channels.backlog").items == ["picker"]
        assert first.check("queues.depth").value == 8
        assert first.check("channels.stalled").status == "ok"

        await clock.advance(31.0)
        # Stalled, and no progress since the round before: its deliveries are parked.
        second = await hub.ops.detector.check()
        assert second.check("channels.stalled").items == ["picker"]
        assert second.check("queues.oldest").items == ["picker"]

        async def parked() -> bool:
            return len(await hub.dead_letters()) == 8

        await assert_eventually(parked)
        letters = await hub.dead_letters()
        assert {d.reason for d in letters} == {"stalled"}
        assert sorted(d.message.body for d in letters) == list(range(8))
        incidents = await hub.ops.journal.read(kind="incident")
        third = await hub.ops.detector.check()
        assert third.check("channels.stalled").status == "ok"

    failures = [i["failure"] for i in incidents]
    assert failures == ["backlog", "member_stalled"]
    assert incidents[1]["parked"] == 8
    assert incidents[1]["member"] == "picker"


async def test_a_member_that_makes_progress_is_not_parked(
    backend_url: str, clock: FakeClock
) -> None:
    async with _hub(backend_url, clock, stalled_after=30.0) as hub:
        await hub.channels.create("orders", announce=False)
        sub = await hub.subscribe("picker", "orders", batch_size=1)
        for i in range(4):
            await hub.publish("orders", i, sender="planner")
        await hub.ops.detector.check()
        await clock.advance(31.0)
        delivery = await sub.next(timeout=0)
        await delivery.ack()  # progress between the rounds
        report = await hub.ops.detector.check()
        assert report.check("channels.stalled").items == ["picker"]  # old, but moving
        (stats,) = [m for m in hub.bus.member_stats() if m.member == "picker"]
        assert (stats.queued, stats.inflight) == (3, 0)
        assert await hub.dead_letters() == []


async def test_dead_letter_growth_is_warned(backend_url: str, clock: FakeClock) -> None:
    async with _hub(backend_url, clock, dead_letter_growth=2) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        await hub.ops.detector.check()
        for i in range(3):
            await hub.publish("c", i, sender="boss")
            await (await sub.next(timeout=0)).nack(dead_letter=True)

        async def three() -> bool:
            return len(await hub.dead_letters()) == 3

        await assert_eventually(three)
        report = await hub.ops.detector.check()

    check = report.check("channels.dead_letters")
    assert (check.status, check.value) == ("warn", 3)


async def test_a_slow_database_degrades_the_hub_and_alerts_then_recovers(
    backend_url: str, clock: FakeClock
) -> None:
    async with _hub(backend_url, clock, db_write_warn=0.05, db_write_degrade=0.2) as hub:
        faults = FaultyStore.install(hub)
        await hub.channels.create("c", announce=False)
        faults.write_delay = 0.1
        warn = await hub.ops.detector.check()
        assert warn.check("database.write").status == "warn"
        assert not hub.gate.degraded

        faults.write_delay = 0.3
        failing = await hub.ops.detector.check()
        assert failing.check("database.write").status == "fail"
        assert hub.gate.degraded
        assert failing.status == "fail"
        with pytest.raises(DegradedError) as refused:
            await hub.publish("c", "telemetry", sender="arm", priority="low")
        assert refused.value.code == "degraded"
        assert refused.value.details["refuses"] == "low"
        with pytest.raises(DegradedError):
            await hub.tasks.submit({"weld": 1.0}, priority="low", must_be_satisfiable=False)
        faults.write_delay = 0.0
        kept = await hub.publish("c", "stop now", sender="arm", priority="high")
        assert kept.seq > 0

        healthy = await hub.ops.detector.check()
        assert healthy.status == "ok"
        assert not hub.gate.degraded
        await hub.publish("c", "telemetry", sender="arm", priority="low")
        alerts = await hub.ops.journal.read(ALERTS_CHANNEL)
        incidents = await hub.ops.journal.read(kind="incident")

    assert [a["type"] for a in alerts] == ["degraded"]
    assert "database.write" in alerts[0]["message"]
    assert [(i["failure"], i["ok"]) for i in incidents] == [("degraded", False), ("degraded", True)]
    assert incidents[1]["took"] >= 0


async def test_a_failing_database_fails_the_check_and_readiness(
    backend_url: str, clock: FakeClock
) -> None:
    async with _hub(backend_url, clock) as hub:
        faults = FaultyStore.install(hub)
        assert await hub.ops.health.ready() == (True, "ready")
        faults.fail_writes = True
        report = await hub.ops.health.report()
        ready, reason = await hub.ops.health.ready()

    check = report.check("database.write")
    assert check.status == "fail"
    assert "injected fault" in check.message
    assert not ready
    assert "injected fault" in reason


async def test_a_nearly_full_disk_warns_then_degrades(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    async with _hub(url, clock, disk_free_warn=1.0, disk_free_degrade=0.0) as hub:
        warn = (await hub.ops.health.report()).check("database.disk")
        hub.reconfigure(
            dataclasses.replace(
                hub.settings, health=HealthSettings(disk_free_warn=1.0, disk_free_degrade=1.0)
            )
        )
        await hub.ops.detector.check()
        degraded = hub.gate.reason

    assert warn.status == "warn"
    assert 0 < (warn.value or 0) < 1
    assert degraded is not None
    assert "database.disk" in degraded


async def test_a_memory_hub_does_not_measure_a_disk(clock: FakeClock) -> None:
    async with _hub("memory://", clock) as hub:
        check = (await hub.ops.health.report()).check("database.disk")
    assert check.status == "ok"
    assert "not a local file" in check.message


async def _run_while_advancing(clock: FakeClock, work: Any, step: float = 0.5) -> Any:
    task = asyncio.ensure_future(work)
    while not task.done():
        await clock.advance(step)
    return task.result()


async def test_a_recovery_that_overruns_is_redone_and_alerted(clock: FakeClock) -> None:
    async with _hub("memory://", clock, recovery_timeout=2.0) as hub:
        await hub.registry.register("ghost", capabilities={"weld": 1.0})
        await hub.leases.acquire("dock", "ghost", ttl=600)
        # Nothing else releases the dock: the agent never went offline for the lease service.
        record = await _run_while_advancing(
            clock, hub.ops.detector.agent_lost("ghost", clock.time())
        )
        alerts = await hub.ops.journal.read(ALERTS_CHANNEL)
        holder = (await hub.leases.get("dock")).holder

    assert record["ok"] is True
    assert record["escalated"] is True
    assert record["leases"] == ["dock"]
    assert holder is None
    assert [a["type"] for a in alerts] == ["recovery_slow"]


async def test_a_recovery_that_cannot_finish_escalates_to_failed(clock: FakeClock) -> None:
    async with _hub("memory://", clock, recovery_timeout=2.0) as hub:
        await hub.registry.register("ghost", capabilities={"weld": 1.0})
        await hub.leases.acquire("dock", "ghost", ttl=600)
        faults = FaultyStore.install(hub)
        faults.fail_writes = True  # the redo cannot release it either
        record = await _run_while_advancing(
            clock, hub.ops.detector.agent_lost("ghost", clock.time())
        )
        faults.fail_writes = False
        alerts = await hub.ops.journal.read(ALERTS_CHANNEL)

    assert record["ok"] is False
    assert record["unrecovered"] == {"tasks": [], "leases": ["dock"]}
    recovery = [a for a in alerts if a["type"].startswith("recovery")]  # (and degraded)
    assert [a["type"] for a in recovery] == ["recovery_slow", "recovery_failed"]
    assert recovery[1]["leases"] == ["dock"]
