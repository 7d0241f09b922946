"""LocalCoordinator: always the leader (epoch 1), presence and locks on the fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetchat.backends.local_coord import LocalCoordinator
from fleetchat.errors import ClosedError, FencedError, InvalidInputError
from fleetchat.testing import FakeClock


@pytest.fixture
async def coord(clock: FakeClock) -> AsyncIterator[LocalCoordinator]:
    async with LocalCoordinator("node-a", presence_ttl=3.0, clock=clock) as c:
        yield c


async def test_leader_with_epoch_one_after_start(clock: FakeClock) -> None:
    coord = LocalCoordinator("node-a", clock=clock)
    assert not coord.is_leader
    assert coord.epoch == 0
    assert await coord.leader() is None
    await coord.start()
    await coord.start()  # a second start changes nothing
    assert coord.is_leader
    assert coord.epoch == 1
    assert await coord.leader() == ("node-a", 1)
    await coord.close()


async def test_leadership_callbacks_on_start_and_close(clock: FakeClock) -> None:
    coord = LocalCoordinator(clock=clock)
    seen: list[tuple[bool, int]] = []
    coord.on_leadership(lambda leading, epoch: seen.append((leading, epoch)))
    await coord.start()
    await coord.close()
    await coord.close()
    assert seen == [(True, 1), (False, 1)]
    assert not coord.is_leader
    assert coord.epoch == 0


async def test_close_without_start_calls_no_callback(clock: FakeClock) -> None:
    coord = LocalCoordinator(clock=clock)
    seen: list[bool] = []
    coord.on_leadership(lambda leading, epoch: seen.append(leading))
    await coord.close()
    assert seen == []


async def test_a_failing_callback_does_not_stop_the_others(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    coord = LocalCoordinator(clock=clock)
    seen: list[bool] = []

    def broken(leading: bool, epoch: int) -> None:
        raise RuntimeError("boom")

    coord.on_leadership(broken)
    coord.on_leadership(lambda leading, epoch: seen.append(leading))
    await coord.start()
    assert seen == [True]
    assert "leadership callback failed" in caplog.text
    await coord.close()


async def test_check_epoch_accepts_only_the_current_epoch(coord: LocalCoordinator) -> None:
    await coord.check_epoch(1)
    for stale in (0, 2, -1):
        with pytest.raises(FencedError) as info:
            await coord.check_epoch(stale)
        assert info.value.code == "fenced"
    await coord.close()
    with pytest.raises(FencedError):
        await coord.check_epoch(1)


async def test_closed_coordinator_refuses_work(clock: FakeClock) -> None:
    coord = LocalCoordinator(clock=clock)
    with pytest.raises(ClosedError, match="not started"):
        await coord.presence()
    await coord.start()
    await coord.close()
    with pytest.raises(ClosedError, match="closed"):
        await coord.acquire("dock", "a", 1.0)
    with pytest.raises(ClosedError):
        await coord.start()


async def test_presence_lapses_after_ttl(coord: LocalCoordinator, clock: FakeClock) -> None:
    await coord.put_presence("arm:1", b"busy")
    await coord.put_presence("cam@2", b"")
    await clock.advance(2.0)
    await coord.put_presence("arm:1", b"idle")  # a new put restarts its TTL
    assert await coord.presence() == {"arm:1": b"idle", "cam@2": b""}
    await clock.advance(1.5)
    assert await coord.presence() == {"arm:1": b"idle"}
    await clock.advance(1.5)
    assert await coord.presence() == {}


async def test_presence_key_must_be_a_non_empty_string(coord: LocalCoordinator) -> None:
    with pytest.raises(InvalidInputError):
        await coord.put_presence("", b"x")


async def test_lock_is_exclusive_until_released(coord: LocalCoordinator) -> None:
    token = await coord.acquire("dock-1", "robot-a", 10.0)
    assert token is not None
    assert await coord.acquire("dock-1", "robot-b", 10.0) is None
    await coord.release("dock-1", token)
    again = await coord.acquire("dock-1", "robot-b", 10.0)
    assert again is not None
    assert again > token


async def test_lock_tokens_increase_across_renewals(coord: LocalCoordinator) -> None:
    t1 = await coord.acquire("door", "a", 5.0)
    assert t1 is not None
    t2 = await coord.renew("door", t1, 5.0)
    t3 = await coord.renew("door", t2, 5.0)
    assert t1 < t2 < t3


async def test_renew_with_a_stale_token_is_fenced(coord: LocalCoordinator) -> None:
    t1 = await coord.acquire("door", "a", 5.0)
    assert t1 is not None
    await coord.renew("door", t1, 5.0)
    with pytest.raises(FencedError):
        await coord.renew("door", t1, 5.0)
    with pytest.raises(FencedError):
        await coord.renew("no-such-lock", 1, 5.0)


async def test_expired_lock_goes_to_another_owner(
    coord: LocalCoordinator, clock: FakeClock
) -> None:
    t1 = await coord.acquire("lift", "a", 2.0)
    assert t1 is not None
    await clock.advance(1.9)
    assert await coord.acquire("lift", "b", 2.0) is None
    await clock.advance(0.2)
    t2 = await coord.acquire("lift", "b", 2.0)
    assert t2 is not None
    assert t2 > t1
    with pytest.raises(FencedError):
        await coord.renew("lift", t1, 2.0)
    await coord.release("lift", t1)  # stale: nothing happens
    assert await coord.acquire("lift", "a", 2.0) is None


async def test_same_owner_takes_its_lock_again_with_a_new_token(coord: LocalCoordinator) -> None:
    t1 = await coord.acquire("lift", "a", 2.0)
    t2 = await coord.acquire("lift", "a", 2.0)
    assert t1 is not None
    assert t2 is not None
    assert t2 > t1
    with pytest.raises(FencedError):
        await coord.renew("lift", t1, 2.0)


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_lock_ttl_must_be_positive(coord: LocalCoordinator, ttl: float) -> None:
    with pytest.raises(InvalidInputError):
        await coord.acquire("lift", "a", ttl)
    token = await coord.acquire("lift", "a", 1.0)
    assert token is not None
    with pytest.raises(InvalidInputError):
        await coord.renew("lift", token, ttl)
