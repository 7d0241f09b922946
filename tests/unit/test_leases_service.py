"""LeaseService on a hub (memory and SQLite) with the fake clock: waiting, expiry, holder
loss, deadlocks, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fleetchat import Hub
from fleetchat.errors import (
    ClosedError,
    ConflictError,
    DeadlockError,
    FencedError,
    InvalidIdError,
    InvalidInputError,
    LeaseTimeoutError,
)
from fleetchat.leases import Lease
from fleetchat.testing import FakeClock

_background: list[asyncio.Task[Lease]] = []


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def started(hub: Hub, coro: object) -> asyncio.Task[Lease]:
    """Run an acquire in the background and let it queue (cancelled at the test's end)."""
    task: asyncio.Task[Lease] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    _background.append(task)
    await settle()
    return task


@pytest.fixture(autouse=True)
async def _cancel_background(hub: Hub) -> AsyncIterator[None]:
    yield
    for task in _background:
        task.cancel()
    await asyncio.gather(*_background, return_exceptions=True)
    _background.clear()


async def test_acquire_of_a_free_resource_returns_token_1(hub: Hub, clock: FakeClock) -> None:
    lease = await hub.leases.acquire("dock-1", "amr-1", ttl=30)

    assert (lease.resource, lease.holder, lease.token) == ("dock-1", "amr-1", 1)
    assert lease.expires_at == clock.time() + 30


async def test_a_waiter_gets_the_lease_when_the_holder_releases(hub: Hub) -> None:
    first = await hub.leases.acquire("dock-1", "amr-1")
    waiting = await started(hub, hub.leases.acquire("dock-1", "amr-2", timeout=10))
    assert not waiting.done()

    await hub.leases.release("dock-1", "amr-1", first.token)

    second = await asyncio.wait_for(waiting, 1)
    assert (second.holder, second.token) == ("amr-2", 2)


async def test_waiters_are_served_by_priority_then_in_request_order(
    hub: Hub, clock: FakeClock
) -> None:
    lease = await hub.leases.acquire("dock-1", "amr-0")
    tasks = {}
    for who, prio in [("a", "normal"), ("b", "low"), ("c", "normal"), ("d", "high")]:
        tasks[who] = await started(hub, hub.leases.acquire("dock-1", who, priority=prio))
        await clock.advance(0.01)
    order = []
    holder, token = "amr-0", lease.token
    for _ in tasks:
        await hub.leases.release("dock-1", holder, token)
        await settle()
        got = next(t for t in tasks.values() if t.done() and t.result().token == token + 1)
        holder, token = got.result().holder, got.result().token
        order.append(holder)

    assert order == ["d", "a", "c", "b"]


async def test_acquire_times_out_with_a_typed_error_and_withdraws(
    hub: Hub, clock: FakeClock
) -> None:
    await hub.leases.acquire("dock-1", "amr-1", ttl=60)
    waiting = await started(hub, hub.leases.acquire("dock-1", "amr-2", timeout=2))

    await clock.advance(2.5)

    with pytest.raises(LeaseTimeoutError) as caught:
        await asyncio.wait_for(waiting, 1)
    assert caught.value.details["held_by"] == "amr-1"
    assert isinstance(caught.value, TimeoutError)
    assert (await hub.leases.get("dock-1")).waiting == []


async def test_timeout_0_tries_once(hub: Hub) -> None:
    await hub.leases.acquire("dock-1", "amr-1")

    with pytest.raises(LeaseTimeoutError):
        await hub.leases.acquire("dock-1", "amr-2", timeout=0)


async def test_an_expired_lease_passes_to_the_waiter_and_its_token_is_fenced(
    hub: Hub, clock: FakeClock
) -> None:
    old = await hub.leases.acquire("dock-1", "amr-1", ttl=5)
    waiting = await started(hub, hub.leases.acquire("dock-1", "amr-2", timeout=30))

    await clock.advance(5.0)

    new = await asyncio.wait_for(waiting, 1)
    assert (new.holder, new.token) == ("amr-2", old.token + 1)
    with pytest.raises(FencedError):
        await hub.leases.renew("dock-1", "amr-1", old.token)


async def test_the_sweeper_expires_a_lease_nobody_waits_for(hub: Hub, clock: FakeClock) -> None:
    await hub.leases.acquire("dock-1", "amr-1", ttl=2)

    await clock.advance(3.5)

    stored = await hub.store.load_resource("dock-1")
    assert stored is not None
    assert stored.holder is None
    assert stored.token == 1


async def test_renew_keeps_the_token_and_moves_the_expiry(hub: Hub, clock: FakeClock) -> None:
    lease = await hub.leases.acquire("dock-1", "amr-1", ttl=5)
    await clock.advance(4)

    renewed = await hub.leases.renew("dock-1", "amr-1", lease.token, ttl=10)

    assert (renewed.token, renewed.expires_at) == (lease.token, clock.time() + 10)


async def test_tokens_keep_growing_across_release_and_acquire(hub: Hub) -> None:
    tokens = []
    for who in ["a", "b", "a"]:
        lease = await hub.leases.acquire("door", who)
        tokens.append(lease.token)
        await hub.leases.release("door", who, lease.token)

    assert tokens == [1, 2, 3]
    assert (await hub.leases.get("door")).token == 3


async def test_release_with_a_wrong_token_or_holder_is_fenced_and_changes_nothing(
    hub: Hub,
) -> None:
    lease = await hub.leases.acquire("dock-1", "amr-1")

    with pytest.raises(FencedError):
        await hub.leases.release("dock-1", "amr-1", lease.token + 1)
    with pytest.raises(FencedError):
        await hub.leases.release("dock-1", "amr-2", lease.token)

    assert (await hub.leases.get("dock-1")).holder == "amr-1"


@pytest.mark.parametrize(
    ("resource", "kwargs", "error"),
    [
        ("", {}, InvalidIdError),
        ("dock 1", {}, InvalidIdError),
        ("dock-1", {"ttl": 0}, InvalidInputError),
        ("dock-1", {"ttl": -1}, InvalidInputError),
        ("dock-1", {"ttl": True}, InvalidInputError),
        ("dock-1", {"ttl": 1e9}, InvalidInputError),
        ("dock-1", {"timeout": -0.5}, InvalidInputError),
        ("dock-1", {"priority": "urgent"}, InvalidInputError),
    ],
)
async def test_bad_input_is_a_typed_error_and_changes_nothing(
    hub: Hub, resource: str, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await hub.leases.acquire(resource, "amr-1", **kwargs)  # type: ignore[arg-type]

    assert await hub.leases.list() == []


async def test_a_deadlock_fails_the_lowest_priority_waiter(hub: Hub, clock: FakeClock) -> None:
    await hub.leases.acquire("dock", "a")
    door = await hub.leases.acquire("door", "b")
    a_waits = await started(hub, hub.leases.acquire("door", "a", priority="high", timeout=30))

    with pytest.raises(DeadlockError) as caught:
        await hub.leases.acquire("dock", "b", priority="low", timeout=30)

    assert "b waits for a (dock)" in caught.value.message
    assert caught.value.details == {"resource": "dock", "holder": "b"}
    assert not a_waits.done()
    await hub.leases.release("door", "b", door.token)  # b gives up what it holds
    assert (await asyncio.wait_for(a_waits, 1)).holder == "a"


async def test_an_agent_going_offline_loses_its_leases_and_waits(
    hub: Hub, clock: FakeClock
) -> None:
    await hub.registry.register("amr-1")
    await hub.leases.acquire("dock", "amr-1", ttl=300)
    await hub.leases.acquire("door", "amr-3", ttl=300)
    waits = await started(hub, hub.leases.acquire("door", "amr-1", timeout=60))
    other = await started(hub, hub.leases.acquire("dock", "amr-2", timeout=60))

    hub.registry.mark_offline("amr-1")

    assert (await asyncio.wait_for(other, 1)).holder == "amr-2"
    with pytest.raises(ConflictError, match="went offline"):
        await asyncio.wait_for(waits, 1)


async def test_a_cancelled_acquire_leaves_no_waiter(hub: Hub) -> None:
    await hub.leases.acquire("dock", "amr-1")
    waiting = await started(hub, hub.leases.acquire("dock", "amr-2", timeout=30))

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert (await hub.leases.get("dock")).waiting == []


async def test_hold_releases_at_the_end_of_the_block(hub: Hub) -> None:
    async with hub.leases.hold("dock", "amr-1") as lease:
        assert (await hub.leases.get("dock")).holder == "amr-1"

    state = await hub.leases.get("dock")
    assert (state.holder, state.token) == (None, lease.token)


async def test_the_holder_acquiring_again_gets_a_new_token(hub: Hub) -> None:
    first = await hub.leases.acquire("dock", "amr-1")

    again = await hub.leases.acquire("dock", "amr-1")

    assert again.token == first.token + 1


async def test_list_shows_every_resource_with_holder_and_queue(hub: Hub) -> None:
    await hub.leases.acquire("dock", "amr-1")
    await hub.leases.acquire("door", "amr-1")
    await started(hub, hub.leases.acquire("dock", "amr-2", timeout=30))

    found = {s.resource: s for s in await hub.leases.list()}

    assert [w.holder for w in found["dock"].waiting] == ["amr-2"]
    assert found["door"].holder == "amr-1"


async def test_a_closed_service_refuses_calls(hub: Hub) -> None:
    await hub.leases.close()

    with pytest.raises(ClosedError):
        await hub.leases.acquire("dock", "amr-1")
