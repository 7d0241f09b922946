"""Distributed mode under failures, with real processes: three ``fleetchat serve`` nodes on one
nats-server (JetStream, file storage) and one PostgreSQL, all started here on free ports.

- kill -9 of a node under load: its agent reconnects to another node; nothing acked is lost,
  what was unacked comes back;
- kill -9 of the leader: another node leads within a few seconds, never two at once;
- kill -9 and restart of nats-server: nothing acknowledged is lost;
- PostgreSQL stopped and started: clear errors while it is away, then recovery by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetchat.testing.services import NatsServer, PostgresServer
from tests.e2e.conftest import RawAgent
from tests.integration.test_server_restart import ServeProcess

pytestmark = pytest.mark.slow

Start = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Start]:
    nodes: list[ServeProcess] = []

    async def start(bus: str, store: str) -> ServeProcess:
        node = await ServeProcess.start(
            bus, tmp_path / f"node{len(nodes)}.log", "--store", store, "--no-auth"
        )
        nodes.append(node)
        return node

    yield start
    for node in nodes:  # a clean stop (SIGTERM), so their coverage data is written
        if node.proc.returncode is None:
            node.proc.terminate()
    for node in nodes:
        try:
            async with asyncio.timeout(15):
                await node.proc.wait()
        except TimeoutError:
            node.proc.kill()
            await node.proc.wait()


async def health(http: aiohttp.ClientSession, node: ServeProcess) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(1.0), http.get(node.url + "/healthz") as r:
            result: dict[str, Any] = await r.json()
            return result
    except (aiohttp.ClientError, TimeoutError):
        return None


async def leaders(http: aiohttp.ClientSession, nodes: list[ServeProcess]) -> list[int]:
    states = await asyncio.gather(*(health(http, n) for n in nodes))
    return [i for i, s in enumerate(states) if s and s["leader"]]


async def connect(
    http: aiohttp.ClientSession, node: ServeProcess, agent_id: str, **hello: Any
) -> RawAgent:
    agent = RawAgent(await http.ws_connect(node.ws_url))
    await agent.send({"type": "hello", "agent_id": agent_id, **hello})
    welcome = await agent.recv()
    assert welcome["type"] == "welcome", welcome
    return agent


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Seconds until ``check()`` holds (fails after ``timeout``)."""
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def three_nodes(start_node: Start, bus: str, store: str) -> list[ServeProcess]:
    return list(await asyncio.gather(*(start_node(bus, store) for _ in range(3))))


async def test_kill_a_node_under_load(
    nats_server: NatsServer, postgres_url: str, start_node: Start, http: aiohttp.ClientSession
) -> None:
    nodes = await three_nodes(start_node, nats_server.url, postgres_url)
    robot = await connect(http, nodes[0], "robot")
    await robot.subscribe("cell")
    sender = await connect(http, nodes[1], "ctl")
    ids = []
    for i in range(60):
        published = await sender.publish("cell", {"i": i}, id=f"p{i}")
        assert published["type"] == "published", published
        ids.append(published["message_id"])
    first = await robot.deliveries(30, timeout=20)
    await robot.ack(first[-1].tag)  # the first 30 are done
    await asyncio.sleep(0.3)  # the acks reach JetStream
    await nodes[0].kill()  # with the other 30 delivered or queued there, unacked
    robot = await connect(http, nodes[2], "robot")
    rest = await robot.deliveries(30, timeout=30)  # back after the ack timeout (5 s)
    await robot.ack(rest[-1].tag)
    acked = [d.id for d in first]
    assert sorted(acked + [d.id for d in rest]) == sorted(ids)  # nothing lost, none twice
    assert [d.body["i"] for d in rest] == list(range(30, 60))  # in order


async def test_kill_the_leader(
    nats_server: NatsServer, postgres_url: str, start_node: Start, http: aiohttp.ClientSession
) -> None:
    nodes = await three_nodes(start_node, nats_server.url, postgres_url)

    async def one_leader() -> bool:
        return len(await leaders(http, nodes)) == 1

    await wait_for(one_leader, 10)
    (old,) = await leaders(http, nodes)
    before = await health(http, nodes[old])
    assert before is not None
    alive = [n for i, n in enumerate(nodes) if i != old]
    robot = await connect(http, alive[0], "robot")
    await robot.subscribe("cell")
    sender = await connect(http, alive[1], "ctl")
    await nodes[old].kill()
    # Published while nobody leads: stored, and fanned out once a new leader is up.
    during = [(await sender.publish("cell", f"m{i}", id=f"d{i}"))["message_id"] for i in range(10)]
    seen: list[list[int]] = []

    async def new_leader() -> bool:
        now = await leaders(http, alive)
        seen.append(now)
        return len(now) == 1

    took = await wait_for(new_leader, 10)
    assert took < 5.0, f"failover took {took:.1f} s"
    assert all(len(s) <= 1 for s in seen)  # never two leaders acting at once
    (new,) = await leaders(http, alive)
    after = await health(http, alive[new])
    assert after is not None
    assert after["epoch"] > before["epoch"]
    # The new leader fans out: what came in during the election, then what comes after.
    await sender.publish("cell", "after failover", id="p1")
    got = await robot.deliveries(11, timeout=20)
    assert {d.id for d in got} == {*during, got[-1].id}  # every one, none twice
    assert "after failover" in [d.body for d in got]


async def test_nats_server_restart_loses_nothing_acknowledged(
    tmp_path: Path, postgres_url: str, start_node: Start, http: aiohttp.ClientSession
) -> None:
    nats = NatsServer(tmp_path / "nats").start()
    try:
        nodes = await three_nodes(start_node, nats.url, postgres_url)
        robot = await connect(http, nodes[0], "robot")
        await robot.subscribe("cell")
        await robot.close()  # offline: everything waits in JetStream
        sender = await connect(http, nodes[1], "ctl")
        ids = []
        for i in range(40):
            published = await sender.publish("cell", i, id=f"p{i}")
            assert published["type"] == "published", published
            ids.append(published["message_id"])
        await asyncio.sleep(1.0)  # fan-out into the inbox
        nats.kill()
        nats.start()  # same port, same store directory
        await asyncio.sleep(2.0)  # the nodes reconnect by themselves
        robot = await connect(http, nodes[2], "robot")
        got = await robot.deliveries(40, timeout=30)
        assert sorted(d.id for d in got) == sorted(ids)
    finally:
        nats.kill()


async def test_postgres_restart_degrades_then_recovers(
    postgres_server: PostgresServer,
    nats_server: NatsServer,
    start_node: Start,
    http: aiohttp.ClientSession,
) -> None:
    pg = postgres_server
    node = await start_node(nats_server.url, pg.url)
    first = await connect(http, node, "r1", capabilities={"weld": 1.0})
    await first.close()
    pg.stop("immediate")
    # Registering needs the store: a clear error, and the node stays up.
    agent = RawAgent(await http.ws_connect(node.ws_url))
    await agent.send({"type": "hello", "agent_id": "r2", "capabilities": {"weld": 1.0}})
    frame = await agent.recv(timeout=30)
    assert frame["type"] == "error", frame
    assert frame["code"] == "backend_unavailable", frame
    assert "PostgreSQL" in frame["message"]
    with contextlib.suppress(Exception):
        await agent.close()
    assert (await health(http, node)) is not None
    pg.start()

    async def registers() -> bool:
        try:
            a = await connect(http, node, "r3", capabilities={"weld": 1.0})
        except (AssertionError, aiohttp.ClientError, TimeoutError):
            return False
        await a.close()
        return True

    await wait_for(registers, 30)
