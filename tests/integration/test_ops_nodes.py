"""Operations on the distributed hub: two nodes on one nats-server and one PostgreSQL. Each node
answers health for itself; the leader detects and recovers; its decision to degrade reaches the
other node; a live change is made on the node that receives it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.errors import DegradedError
from fleetchat.ops.settings import HealthSettings
from fleetchat.testing.faults import FaultyStore
from fleetchat.testing.services import NatsServer


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polling state other tasks change
            await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(nats_server: NatsServer, postgres_url: str) -> AsyncIterator[list[Hub]]:
    settings = HubSettings(
        url=nats_server.url,
        store_url=postgres_url,
        health=HealthSettings(interval=3600.0, db_write_warn=0.05, db_write_degrade=0.2),
    )
    first = Hub(settings)
    await first.start()
    await until(lambda: first.coordinator.is_leader)
    second = Hub(settings)
    await second.start()
    try:
        yield [first, second]
    finally:
        for hub in (second, first):
            with contextlib.suppress(Exception):
                await hub.close()


async def test_each_node_reports_its_health_and_writes_its_probe(nodes: list[Hub]) -> None:
    leader, follower = nodes
    mine, theirs = await leader.ops.health.report(), await follower.ops.health.report()
    assert (mine.leader, theirs.leader) == (True, False)
    assert mine.node != theirs.node
    assert mine.check("database.write").status == "ok"
    assert "not a local file" in mine.check("database.disk").message
    assert await follower.ops.health.ready() == (True, "ready")


async def test_the_leaders_decision_to_degrade_reaches_the_other_node(nodes: list[Hub]) -> None:
    leader, follower = nodes
    await leader.channels.create("c", announce=False)
    await until(lambda: follower.bus.channel("c") is not None)
    faults = FaultyStore.install(leader)
    faults.write_delay = 0.3
    report = await leader.ops.detector.check()
    assert report.check("database.write").status == "fail"
    await until(lambda: follower.gate.degraded)
    with pytest.raises(DegradedError):
        await follower.publish("c", "telemetry", sender="arm-1", priority="low")
    await follower.publish("c", "stop", sender="arm-1", priority="critical")

    faults.write_delay = 0.0
    await leader.ops.detector.check()
    await until(lambda: not follower.gate.degraded)
    await follower.publish("c", "telemetry", sender="arm-1", priority="low")
    alerts = await follower.ops.journal.read("$alerts")
    assert [a["type"] for a in alerts] == ["degraded"]


async def test_an_agent_lost_on_the_other_node_is_recovered_by_the_leader(
    nodes: list[Hub],
) -> None:
    leader, follower = nodes
    await follower.registry.register("arm-1", capabilities={"weld": 1.0})
    await until(lambda: "arm-1" in leader.registry)
    await leader.leases.acquire("dock", "arm-1", ttl=60)
    await follower.registry.deregister("arm-1")

    async def incident() -> dict[str, Any] | None:
        found = await leader.ops.journal.read(kind="incident")
        return next((i for i in found if i["failure"] == "agent_lost"), None)

    async with asyncio.timeout(10):
        while (record := await incident()) is None:  # noqa: ASYNC110 - a channel's history
            await asyncio.sleep(0.05)
    assert record["agent"] == "arm-1"
    assert record["ok"] is True
    assert record["leases"] == ["dock"]
    assert (await follower.leases.get("dock")).holder is None


async def test_a_live_change_applies_to_the_node_that_receives_it(nodes: list[Hub]) -> None:
    leader, follower = nodes
    await follower.ops.config.change({"chat": {"qos": {"high": {"max_attempts": 6}}}})
    assert follower.bus.settings.qos_for("high").max_attempts == 6
    assert leader.bus.settings.qos_for("high").max_attempts == 3
    (record,) = await leader.ops.journal.read(kind="config")
    assert record["applied"][0]["path"] == "chat.qos.high.max_attempts"
