"""What a node takes from the others: registry changes and heartbeats (AgentRegistry side of
RegistrySync), and the per-server caches a retry across nodes relies on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fleetchat.config import RegistrySettings
from fleetchat.models import AgentInfo, Message
from fleetchat.protocol import Published
from fleetchat.registry.agents import AgentRegistry
from fleetchat.server.caches import MessageCache, PublishLedger
from fleetchat.testing import FakeClock


@pytest.fixture
async def registry(clock: FakeClock) -> AsyncIterator[AgentRegistry]:
    from fleetchat.backends.memory import MemoryStore

    reg = AgentRegistry(MemoryStore(), clock, RegistrySettings())
    await reg.start()
    yield reg
    await reg.close()


async def test_remote_changes_are_applied_and_told_to_local_streams(
    registry: AgentRegistry,
) -> None:
    told: list[str] = []
    registry.on_change = lambda kind, agent: told.append(kind)
    events = registry.events()
    agent = AgentInfo(id="arm-1", capabilities={"pick": 0.9})
    registry.apply_remote("registered", agent)
    assert registry.get("arm-1").capabilities == {"pick": 0.9}
    assert (await events.next(1.0)).kind == "registered"
    registry.apply_remote("deregistered", agent)
    assert "arm-1" not in registry
    assert (await events.next(1.0)).kind == "deregistered"
    registry.apply_remote("deregistered", agent)  # unknown here: nothing to tell
    assert told == []  # remote changes are not sent back out
    await registry.register("arm-2")
    assert told == ["registered"]  # local ones are


async def test_heartbeats_from_other_nodes_keep_agents_alive(
    registry: AgentRegistry, clock: FakeClock
) -> None:
    registry.beats = {}
    await registry.register("arm-1")
    registry.heartbeat("arm-1")
    assert registry.beats == {"arm-1": clock.time()}
    registry.mark_offline("arm-1")
    events = registry.events()
    registry.apply_beats({"ghost": clock.time() + 1, "arm-1": clock.time() - 10})  # unknown, old
    assert registry.status("arm-1") == "offline"
    registry.apply_beats({"arm-1": clock.time() + 1})
    assert registry.status("arm-1") == "available"
    assert (await events.next(1.0)).kind == "online"


def test_the_message_cache_starts_over_when_full() -> None:
    cache = MessageCache(size=2)
    msgs = [Message(id=f"m{i}", channel="c", sender="s", body=i) for i in range(3)]
    first = [cache.get(m) for m in msgs]
    assert [cache.get(m) for m in msgs] == first  # same bytes, whatever was dropped
    assert b'"m2"' in first[2]


async def test_the_publish_ledger_lets_a_retry_wait_for_the_first_try() -> None:
    ledger = PublishLedger(size=1)
    key = ("a", "c", "p1")
    assert ledger.running(key) is None
    ledger.begin(key)
    waiting = ledger.running(key)
    assert waiting is not None
    assert ledger.running(key) is waiting  # one future, however many retries wait
    done = Published(id="p1", channel="c", seq=1, message_id="m1")
    ledger.finish(key, done)
    assert await asyncio.wait_for(waiting, 1) == done
    assert ledger.done(key) == done
    ledger.finish(("a", "c", "p2"), Published(id="p2", channel="c", seq=2, message_id="m2"))
    assert ledger.done(key) is None  # the oldest is forgotten past the size
    failed = ("a", "c", "p3")
    ledger.begin(failed)
    gave_up = ledger.running(failed)
    assert gave_up is not None
    ledger.finish(failed, None)  # the first try failed: waiters try themselves
    assert gave_up.cancelled()
