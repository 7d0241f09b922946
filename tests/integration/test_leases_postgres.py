"""Leases on two hub nodes sharing one PostgreSQL: two LeaseServices, each on its own pool.

The nodes share no bus here (each has a one-node LocalBus, whose broadcast goes nowhere), so
a waiter on one node learns of a release on the other only from its periodic re-read: the
worst case for the wake-up, and the compare-and-set in the store still decides every grant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from fleetchat.backends.local_bus import LocalBus
from fleetchat.backends.memory import MemoryLog
from fleetchat.backends.postgres import PostgresDatabase, PostgresStore
from fleetchat.chat.metrics import DeliveryMetrics
from fleetchat.chat.receipts import Receipts
from fleetchat.errors import DeadlockError
from fleetchat.leases import LeaseService, LeaseSettings
from fleetchat.types import SystemClock

SETTINGS = LeaseSettings(check_interval=0.05)


@pytest.fixture
async def nodes(postgres_url: str) -> AsyncIterator[list[LeaseService]]:
    clock = SystemClock()
    made: list[tuple[PostgresDatabase, LocalBus, LeaseService]] = []
    for _ in range(2):
        db = PostgresDatabase(postgres_url, max_size=8)
        await db.start()
        store = PostgresStore(db)
        await store.start()
        bus = LocalBus(MemoryLog(), clock=clock, observer=DeliveryMetrics(clock, Receipts()))
        service = LeaseService(store, bus, clock, SETTINGS)
        await service.start()
        made.append((db, bus, service))
    yield [m[2] for m in made]
    for db, _, service in made:
        await service.close()
        await db.close()


async def test_two_nodes_hammering_one_resource_never_grant_it_twice(
    nodes: list[LeaseService],
) -> None:
    holding: set[str] = set()
    overlaps: list[tuple[str, str]] = []
    tokens: list[int] = []

    async def worker(node: LeaseService, me: str) -> None:
        for _ in range(6):
            lease = await node.acquire("dock", me, ttl=10, timeout=10)
            if holding:
                overlaps.append((me, next(iter(holding))))
            holding.add(me)
            tokens.append(lease.token)
            await asyncio.sleep(0.002)
            holding.discard(me)
            await node.release("dock", me, lease.token)

    async with asyncio.timeout(20):
        await asyncio.gather(*(worker(nodes[i % 2], f"amr-{i}") for i in range(6)))

    assert overlaps == []
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens) == 36
    assert tokens == list(range(1, 37))


async def test_waiters_on_both_nodes_are_served_in_request_order(
    nodes: list[LeaseService],
) -> None:
    a, b = nodes
    first = await a.acquire("door", "amr-0", ttl=30)
    order: list[str] = []

    async def wait(node: LeaseService, me: str) -> None:
        lease = await node.acquire("door", me, ttl=30, timeout=10)
        order.append(me)
        await node.release("door", me, lease.token)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.ensure_future(wait(nodes[i % 2], f"amr-{i + 1}")))
        async with asyncio.timeout(5):
            while len((await a.get("door")).waiting) < i + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    await b.release("door", "amr-0", first.token)  # released on the other node
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)

    assert order == ["amr-1", "amr-2", "amr-3", "amr-4"]


async def test_a_deadlock_across_nodes_fails_the_lowest_priority_waiter(
    nodes: list[LeaseService],
) -> None:
    a, b = nodes
    await a.acquire("dock", "amr-1", ttl=30)
    door = await b.acquire("door", "amr-2", ttl=30)
    high = asyncio.ensure_future(a.acquire("door", "amr-1", priority="high", timeout=10))
    async with asyncio.timeout(5):
        while not (await a.get("door")).waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    started = time.monotonic()

    with pytest.raises(DeadlockError):
        await b.acquire("dock", "amr-2", priority="low", timeout=10)

    assert time.monotonic() - started < 2
    assert not high.done()
    await b.release("door", "amr-2", door.token)
    async with asyncio.timeout(5):
        assert (await high).holder == "amr-1"
