"""``GET /metrics`` and ``GET /v1/stats`` of a real server after real traffic: raw WebSocket
agents publishing, acking and rejecting; an SDK agent running tasks; a workflow; leases.

The exposition is parsed with prometheus_client's own parser, and every figure is compared
with what the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

import aiohttp
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from fleetchat import Hub, HubSettings
from fleetchat.chat.metrics import Histogram
from fleetchat.client.task_work import TaskWork
from fleetchat.config import ServerSettings
from fleetchat.errors import LeaseTimeoutError
from fleetchat.ops.metrics import HubMetrics
from fleetchat.ops.settings import TelemetrySettings
from fleetchat.server import HubServer
from fleetchat.testing import assert_eventually
from fleetchat.testing.services import NatsServer
from tests.e2e.conftest import MakeAgent, RunningServer, StartServer

Families = dict[str, Metric]


async def scrape(running: RunningServer, token: str | None = None) -> Families:
    status, text = await running.request("GET", "/metrics", token=token)
    assert status == 200, text
    return parse(text)


def parse(text: str) -> Families:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: Families, name: str, sample: str | None = None, **labels: str) -> float:
    """The value of the one sample ``sample`` (default: the family's own name, ``_total`` for
    a counter) of family ``name`` with exactly ``labels``."""
    family = families[name]
    wanted = sample or (name + "_total" if family.type == "counter" else name)
    found = [s.value for s in family.samples if s.name == wanted and s.labels == labels]
    assert len(found) == 1, (name, labels, family.samples)
    return found[0]


def buckets(families: Families, name: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of a histogram, in order."""
    family = families[name]
    assert family.type == "histogram"
    return [(float(s.labels["le"]), s.value) for s in family.samples if s.name == name + "_bucket"]


@pytest.fixture
async def running(start_server: StartServer) -> RunningServer:
    return await start_server(auth=False, url="memory://")


async def test_deliveries_acks_and_a_dead_letter_show_in_the_metrics(
    running: RunningServer,
) -> None:
    await running.hub.channels.create("cell", announce=False)
    reader = await running.connect("reader")
    await reader.subscribe("cell")
    writer = await running.connect("writer")
    for i in range(5):
        await writer.publish("cell", i, id=f"p{i}", priority="high")
    got = await reader.deliveries(5)
    await reader.send({"type": "nack", "tag": got[0].tag, "dead_letter": True})
    await reader.ack(got[-1].tag)
    hub = running.hub
    await assert_eventually(lambda: hub.metrics.delivered_by_priority["high"] == 4)
    await assert_eventually(lambda: hub.metrics.dead_lettered == 1)

    m = await scrape(running)
    assert m["fleetchat_messages_published"].type == "counter"
    # Five published, and the dead letter's record on $dlq (with the message's priority).
    assert value(m, "fleetchat_messages_published", priority="high") == 5 + 1
    assert value(m, "fleetchat_deliveries_acked", priority="high") == 4
    assert value(m, "fleetchat_deliveries_acked", priority="low") == 0
    assert value(m, "fleetchat_dead_letters") == 1
    assert value(m, "fleetchat_delivery_retries") == 0
    assert value(m, "fleetchat_dead_letter_backlog") == 1
    assert value(m, "fleetchat_connections") == 2
    assert value(m, "fleetchat_agents_connected") == 2
    # The latency histogram: cumulative, one count per acked delivery, +Inf last.
    acked = sum(hub.metrics.delivered_by_priority.values())
    latency = buckets(m, "fleetchat_delivery_latency_seconds")
    assert latency[-1] == (float("inf"), acked)
    counts = [c for _, c in latency]
    assert counts == sorted(counts)
    assert (
        value(m, "fleetchat_delivery_latency_seconds", "fleetchat_delivery_latency_seconds_count")
        == acked
    )
    assert (
        0
        < value(m, "fleetchat_delivery_latency_seconds", "fleetchat_delivery_latency_seconds_sum")
        < 5
    )


async def test_tasks_by_state_follow_an_sdk_agent_and_the_allocation_histogram_fills(
    running: RunningServer, agents: MakeAgent
) -> None:
    hub = running.hub
    release = asyncio.Event()
    arm = agents("arm-1", {"weld": 0.9}, hub=running.url, capacity=4)

    @arm.on_task
    async def weld(work: TaskWork) -> str:
        if work.payload == "hold":
            await release.wait()
        return "welded"

    async with arm:
        for i in range(2):
            done = await hub.tasks.submit({"weld": 1.0}, payload=i)
            await assert_eventually(lambda t=done: _state(hub, t.id, "succeeded"))
        held = await hub.tasks.submit({"weld": 1.0}, payload="hold")
        await assert_eventually(lambda: _state(hub, held.id, "running"))
        await hub.tasks.submit({"paint": 1.0}, must_be_satisfiable=False)
        dropped = await hub.tasks.submit({"paint": 1.0}, must_be_satisfiable=False)
        await hub.tasks.cancel(dropped.id, "not needed")

        m = await scrape(running)  # the first scrape reads the unfinished tasks once
        assert m["fleetchat_tasks"].type == "gauge"
        states = {s: value(m, "fleetchat_tasks", state=s) for s in ("queued", "running")}
        assert states == {"queued": 1, "running": 1}
        assert value(m, "fleetchat_tasks", state="offered") == 0
        assert value(m, "fleetchat_tasks_finished", state="succeeded") == 2
        assert value(m, "fleetchat_tasks_finished", state="cancelled") == 1
        assert value(m, "fleetchat_tasks_submitted") == 5
        assert value(m, "fleetchat_agents", status="available") == 1
        assert value(m, "fleetchat_agents", status="offline") == 0
        decisions = buckets(m, "fleetchat_task_allocation_seconds")
        assert decisions[-1][1] >= 3  # one decision per weld task at least
        assert decisions[-1][1] == hub.scheduler.decisions.count

        release.set()  # the held task ends: the live counts follow without a new read
        await assert_eventually(lambda: _state(hub, held.id, "succeeded"))
        m = await scrape(running)
        assert value(m, "fleetchat_tasks", state="running") == 0
        assert value(m, "fleetchat_tasks", state="queued") == 1
        assert value(m, "fleetchat_tasks_finished", state="succeeded") == 3


async def _state(hub: Hub, task_id: str, state: str) -> bool:
    return (await hub.tasks.get(task_id)).state == state


async def test_workflow_steps_are_counted_by_type_and_outcome(running: RunningServer) -> None:
    hub = running.hub
    await hub.workflows.register(
        {
            "schema": "fleetchat.workflow/v1",
            "name": "stamp",
            "version": "1.0.0",
            "steps": [
                {"id": "note", "type": "set", "values": {"stamped": True}},
                {"id": "done", "type": "succeed", "output": "ok"},
            ],
        }
    )
    for _ in range(2):
        execution = await hub.workflows.start("stamp")
        await assert_eventually(
            lambda e=execution: _status(hub, e.id, "completed"), message="workflow never ended"
        )

    m = await scrape(running)
    assert m["fleetchat_workflow_steps"].type == "counter"
    assert value(m, "fleetchat_workflow_steps", type="set", outcome="completed") == 2
    assert value(m, "fleetchat_workflow_executions", outcome="started") == 2
    assert value(m, "fleetchat_workflow_executions", outcome="completed") == 2
    assert value(m, "fleetchat_workflow_executions_running") == 0


async def _status(hub: Hub, execution_id: str, status: str) -> bool:
    return (await hub.workflows.get(execution_id)).status == status


async def test_leases_held_and_waiting_are_gauges(running: RunningServer) -> None:
    leases = running.hub.leases
    await leases.acquire("dock-1", "amr-1", ttl=60)
    await leases.acquire("door-2", "amr-1", ttl=60)
    waiter = asyncio.ensure_future(leases.acquire("dock-1", "amr-2", ttl=60, timeout=30))
    await assert_eventually(lambda: _waiting(running, "dock-1"))
    try:
        m = await scrape(running)
        assert value(m, "fleetchat_leases_held") == 2
        assert value(m, "fleetchat_lease_waiters") == 1
        assert value(m, "fleetchat_lease_resources") == 2
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeaseTimeoutError):
            await waiter


async def _waiting(running: RunningServer, resource: str) -> bool:
    return bool((await running.hub.leases.get(resource)).waiting)


async def test_the_node_and_process_metrics_are_there(running: RunningServer) -> None:
    m = await scrape(running)
    assert value(m, "fleetchat_leader") == 1
    assert value(m, "fleetchat_degraded") == 0
    assert value(m, "fleetchat_scaling_events", direction="out") == 0
    assert value(m, "fleetchat_channels") == len(running.hub.bus.channels())
    node = m["fleetchat_node"].samples[0].labels
    assert node["node"] == running.hub.coordinator.node_id
    assert value(m, "process_resident_memory_bytes") > 0
    for family in m.values():
        assert family.name.startswith(("fleetchat_", "process_")), family.name


async def test_metrics_need_a_token_when_auth_is_on(server: RunningServer) -> None:
    status, body = await server.request("GET", "/metrics")
    assert status == 401
    assert body["error"]["code"] == "unauthenticated"
    m = await scrape(server, token=await server.token("prometheus"))
    assert "fleetchat_messages_published" in m


async def test_metrics_switched_off_are_not_served() -> None:
    settings = HubSettings(
        url="memory://",
        server=ServerSettings(auth=False),
        telemetry=TelemetrySettings(metrics=False),
    )
    async with (
        Hub(settings) as hub,
        HubServer(hub, port=0) as srv,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(srv.url + "/metrics") as r:
            assert r.status == 404
        async with http.get(srv.url + "/v1/stats") as r:  # the summary stays
            assert r.status == 200


async def test_stats_summarise_the_same_traffic(running: RunningServer) -> None:
    await running.hub.channels.create("cell", announce=False)
    reader = await running.connect("reader")
    await reader.subscribe("cell")
    writer = await running.connect("writer")
    for i in range(3):
        await writer.publish("cell", i, id=f"p{i}")
    got = await reader.deliveries(3)
    await reader.ack(got[-1].tag)
    await running.hub.leases.acquire("dock-1", "reader", ttl=60)
    await assert_eventually(lambda: running.hub.metrics.delivered >= 3)

    status, stats = await running.request("GET", "/v1/stats")
    assert status == 200
    assert stats["deliveries"]["delivered"] == running.hub.metrics.delivered
    assert stats["deliveries"]["success_rate"] == 1.0
    assert stats["deliveries"]["latency_p99_ms"] > 0
    assert stats["leases"] == {"resources": 1, "held": 1, "waiters": 0}
    assert (stats["connections"], stats["agents_connected"]) == (2, 2)
    assert stats["node"]["leader"] is True
    assert stats["tasks"]["active"] == {"accepted": 0, "offered": 0, "queued": 0, "running": 0}
    assert set(stats["agents"]) == {"available", "busy", "draining", "offline"}


async def test_a_node_counts_the_tasks_another_node_changes(
    nats_server: NatsServer, postgres_url: str
) -> None:
    settings = HubSettings(
        url=nats_server.url, store_url=postgres_url, server=ServerSettings(auth=False)
    )
    async with (
        Hub(settings) as a,
        HubServer(a, port=0) as srv,
        Hub(settings) as b,
        aiohttp.ClientSession() as http,
    ):

        async def tasks_on_a() -> tuple[float, float]:
            async with http.get(srv.url + "/metrics") as r:
                m = parse(await r.text())
            queued = value(m, "fleetchat_tasks", state="queued")
            return queued, value(m, "fleetchat_tasks_finished", state="cancelled")

        assert a.coordinator.is_leader
        assert not b.coordinator.is_leader
        assert await tasks_on_a() == (0, 0)  # seeded from the (empty) store
        made = [await b.tasks.submit({"paint": 1.0}, must_be_satisfiable=False) for _ in range(3)]
        await b.tasks.cancel(made[0].id)
        # The leader reads what b changed; the finished counter is b's (counted where saved).
        await assert_eventually(lambda: _equal(tasks_on_a(), (2, 0)), timeout=10)
        follower = HubMetrics(b, {})
        try:
            await follower.refresh()  # a follower reads the unfinished tasks
            assert follower.tasks.active["queued"] == 2
            assert follower.tasks.finished["cancelled"] == 0  # b's cancel came before it watched
        finally:
            follower.close()


async def _equal(got: Awaitable[Any], expected: Any) -> bool:
    return await got == expected


def test_histogram_buckets_are_cumulative_and_end_with_every_value() -> None:
    hist = Histogram()
    for seconds in (0.0002, 0.003, 0.003, 0.04, 7.0, 5000.0):
        hist.record(seconds)
    counts = hist.cumulative((0.001, 0.01, 0.1, 10.0))
    assert counts == [1, 3, 4, 5, 6]
    assert Histogram().cumulative((0.001,)) == [0, 0]
