"""NatsCoordinator on a real nats-server (one per test): election, fencing, locks, presence.

Short leases (1 s, renewals every 0.2 s) keep these fast; the fencing test with real processes
and the default settings is in test_nats_coord_fencing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from fleetchat.backends.nats_coord import NatsCoordinator
from fleetchat.errors import (
    BackendError,
    BackendUnavailableError,
    ClosedError,
    ConfigError,
    FencedError,
    InvalidInputError,
)
from fleetchat.testing import assert_eventually
from fleetchat.testing.services import NatsServer, free_port

FAST: dict[str, Any] = {"lease": 1.0, "renew_every": 0.2, "presence_ttl": 1.0, "timeout": 1.0}


@contextlib.asynccontextmanager
async def coordinators(url: str, n: int, **settings: Any) -> AsyncIterator[list[NatsCoordinator]]:
    """``n`` started coordinators (node-0 ...) on ``url``, each with its own connection."""
    coords = [NatsCoordinator(url, f"node-{i}", **{**FAST, **settings}) for i in range(n)]
    try:
        for c in coords:
            await c.start()
        yield coords
    finally:
        for c in coords:
            await c.close()


def leaders(coords: list[NatsCoordinator]) -> list[NatsCoordinator]:
    return [c for c in coords if c.is_leader]


async def test_one_leader_among_three(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 3) as coords:
        # The first to start wins at once; the others see it and stay followers.
        assert leaders(coords) == [coords[0]]
        await asyncio.sleep(0.5)  # a few renewal rounds change nothing
        assert leaders(coords) == [coords[0]]
        epoch = coords[0].epoch
        assert epoch > 0
        assert [c.epoch for c in coords[1:]] == [0, 0]
        for c in coords:
            assert await c.leader() == ("node-0", epoch)
            await c.check_epoch(epoch)


async def test_epoch_stays_while_leader_renews(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        epoch = coord.epoch
        first = coord.lease_deadline
        await assert_eventually(lambda: coord.lease_deadline > first, timeout=2.0)
        assert coord.epoch == epoch
        assert await coord.leader() == ("node-0", epoch)


async def test_close_of_the_leader_elects_another_quickly(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 3) as coords:
        events: list[tuple[str, bool, int]] = []
        for c in coords:
            c.on_leadership(lambda leading, epoch, c=c: events.append((c.node_id, leading, epoch)))
        old = coords[0].epoch
        t0 = time.monotonic()
        await coords[0].close()
        assert not coords[0].is_leader
        assert events[0] == ("node-0", False, old)
        # The key was deleted, so the next campaign (within 0.2 s) wins, not the lease (1 s).
        await assert_eventually(lambda: len(leaders(coords)) == 1, timeout=2.0)
        took = time.monotonic() - t0
        assert took < 0.6, f"failover after a clean close took {took:.2f} s"
        (new,) = leaders(coords)
        assert new.epoch > old
        assert events[-1] == (new.node_id, True, new.epoch)
        with pytest.raises(FencedError):
            await new.check_epoch(old)
        await new.check_epoch(new.epoch)


async def test_epochs_increase_with_each_leader(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 3) as coords:
        epochs = [coords[0].epoch]
        for _ in range(2):
            (leader,) = leaders(coords)
            await leader.close()
            await assert_eventually(lambda: len(leaders(coords)) == 1, timeout=2.0)
            epochs.append(leaders(coords)[0].epoch)
        assert epochs == sorted(set(epochs))


async def test_a_restarted_node_takes_its_own_lease_back_with_a_new_epoch(
    nats_server: NatsServer,
) -> None:
    async with coordinators(nats_server.url, 1) as (first,):
        old = first.epoch
        # A crash: the loop stops, the key stays until its lease runs out.
        assert first._task is not None
        first._task.cancel()
        async with coordinators(nats_server.url, 1) as (again,):
            assert again.is_leader  # at once: the key is its own (same node id)
            assert again.epoch > old
            with pytest.raises(FencedError):
                await again.check_epoch(old)


async def test_leader_steps_down_when_nats_stops_answering(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fleetchat.backends.nats_coord")
    async with coordinators(nats_server.url, 2) as coords:
        leader = coords[0]
        old = leader.epoch
        lost = asyncio.Event()
        leader.on_leadership(lambda leading, epoch: None if leading else lost.set())
        t0 = time.monotonic()
        nats_server.pause()
        try:
            async with asyncio.timeout(2.0):
                await lost.wait()
            # lease - margin after the last renewal: never later than the lease itself
            assert time.monotonic() - t0 < leader.lease
            assert not leader.is_leader
            assert leader.epoch == 0
            with pytest.raises(BackendUnavailableError) as info:
                await leader.check_epoch(old)
            assert info.value.code == "backend_unavailable"
            assert info.value.details["where"] == f"127.0.0.1:{nats_server.port}"
            await asyncio.sleep(1.0)  # several failed rounds: still one warning each
        finally:
            nats_server.resume()
        await assert_eventually(lambda: len(leaders(coords)) == 1, timeout=5.0)
        assert leaders(coords)[0].epoch > old
        failures = [r for r in caplog.records if "election step failed" in r.getMessage()]
        assert len(failures) <= len(coords)  # once per node, not once per round


async def test_check_epoch_is_fenced_when_no_one_leads(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        epoch = coord.epoch
        await coord.close()
        async with coordinators(nats_server.url, 1, prefix="other") as (observer,):
            # another prefix: a hub of its own, with its own leader
            assert observer.is_leader
        async with coordinators(nats_server.url, 1) as (follower,):
            assert follower.epoch > epoch
            with pytest.raises(FencedError):
                await follower.check_epoch(epoch)
            with pytest.raises(FencedError):
                await follower.check_epoch(0)


# -- locks ---------------------------------------------------------------------------------


async def test_lock_is_exclusive_and_tokens_increase(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 2) as (a, b):
        t1 = await a.acquire("dock-1", "robot-a", 5.0)
        assert t1 is not None
        assert await b.acquire("dock-1", "robot-b", 5.0) is None
        t2 = await a.renew("dock-1", t1, 5.0)
        assert t2 > t1
        await a.release("dock-1", t2)
        t3 = await b.acquire("dock-1", "robot-b", 5.0)
        assert t3 is not None
        assert t3 > t2


async def test_renew_with_a_stale_token_is_fenced(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        t1 = await coord.acquire("door", "a", 5.0)
        assert t1 is not None
        t2 = await coord.renew("door", t1, 5.0)
        with pytest.raises(FencedError) as info:
            await coord.renew("door", t1, 5.0)
        assert info.value.code == "fenced"
        await coord.release("door", t1)  # stale: nothing happens
        await coord.release("door", 0)  # never a token
        assert await coord.acquire("door", "b", 5.0) is None
        await coord.release("door", t2)
        with pytest.raises(FencedError):
            await coord.renew("door", t2, 5.0)  # released


async def test_expired_lock_goes_to_another_owner(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 2) as (a, b):
        t1 = await a.acquire("lift", "robot-a", 0.3)
        assert t1 is not None
        assert await b.acquire("lift", "robot-b", 0.3) is None
        await asyncio.sleep(0.35)
        t2 = await b.acquire("lift", "robot-b", 5.0)
        assert t2 is not None
        assert t2 > t1
        with pytest.raises(FencedError):
            await a.renew("lift", t1, 5.0)


async def test_lock_renewed_late_is_kept_while_no_one_took_it(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        t1 = await coord.acquire("lift", "robot-a", 0.1)
        assert t1 is not None
        await asyncio.sleep(0.15)
        t2 = await coord.renew("lift", t1, 5.0)
        assert await coord.acquire("lift", "robot-b", 5.0) is None
        assert t2 > t1


async def test_same_owner_acquires_again_with_a_new_token(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        t1 = await coord.acquire("lift", "robot-a", 5.0)
        t2 = await coord.acquire("lift", "robot-a", 5.0)
        assert t1 is not None
        assert t2 is not None
        assert t2 > t1
        with pytest.raises(FencedError):
            await coord.renew("lift", t1, 5.0)


async def test_lock_names_with_any_characters_are_distinct(nats_server: NatsServer) -> None:
    names = ["dock:1", "dock@1", "dock.1", "dock 1", "dock/1", "dock=1", "dock-1", "döck-1", ".x."]
    async with coordinators(nats_server.url, 2) as (a, b):
        for name in names:
            assert await a.acquire(name, "a", 5.0) is not None, name
        for name in names:
            assert await b.acquire(name, "b", 5.0) is None, name
        assert await b.acquire("dock_1", "b", 5.0) is not None


async def test_lock_ttl_is_bounded_by_the_bucket(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1, lock_max_ttl=10.0) as (coord,):
        for ttl in (0.0, -1.0, 10.5):
            with pytest.raises(InvalidInputError, match="lock_max_ttl"):
                await coord.acquire("dock", "a", ttl)
        token = await coord.acquire("dock", "a", 10.0)
        assert token is not None
        with pytest.raises(InvalidInputError):
            await coord.renew("dock", token, 11.0)


# -- presence -----------------------------------------------------------------------------


async def test_presence_lists_keys_with_values(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 2) as (a, b):
        assert await a.presence() == {}
        await a.put_presence("arm:1", b"busy")
        await b.put_presence("cam@2", b"")
        await b.put_presence("arm:1", b"idle")
        assert await a.presence() == {"arm:1": b"idle", "cam@2": b""}


async def test_presence_lapses_after_ttl(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1, presence_ttl=0.5) as (coord,):
        await coord.put_presence("arm-1", b"x")
        await coord.put_presence("arm-2", b"y")
        await asyncio.sleep(0.3)
        await coord.put_presence("arm-2", b"y")
        await assert_eventually(
            lambda: _equals(coord.presence(), {"arm-2": b"y"}), timeout=1.0, interval=0.02
        )
        # JetStream drops expired keys on its own schedule: allow for a busy machine.
        await assert_eventually(lambda: _equals(coord.presence(), {}), timeout=5.0, interval=0.05)


async def _equals(got: Any, want: dict[str, bytes]) -> bool:
    return bool(await got == want)


# -- configuration and lifecycle ----------------------------------------------------------


async def test_nodes_that_disagree_on_the_lease_are_refused(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1):
        other = NatsCoordinator(nats_server.url, "node-x", **{**FAST, "lease": 2.0})
        with pytest.raises(ConfigError, match=r"TTL of 1 s .* same lease"):
            await other.start()
        await other.close()


async def test_a_shared_connection_stays_open(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        async with NatsCoordinator(nc, "node-a", **FAST) as coord:
            assert coord.is_leader
            async with NatsCoordinator(nc, "node-b", **FAST) as other:
                assert not other.is_leader
        assert nc.is_connected
    finally:
        await nc.close()


async def test_lifecycle_errors(nats_server: NatsServer) -> None:
    coord = NatsCoordinator(nats_server.url, "node-a", **FAST)
    with pytest.raises(ClosedError, match="not started"):
        await coord.presence()
    await coord.start()
    await coord.start()
    await coord.close()
    await coord.close()
    with pytest.raises(ClosedError, match="closed"):
        await coord.acquire("x", "a", 1.0)
    with pytest.raises(ClosedError):
        await coord.start()


async def test_unreachable_nats_is_backend_unavailable() -> None:
    settings = {**FAST, "timeout": 0.4}  # the connect waits 2.5 x timeout
    coord = NatsCoordinator(f"nats://127.0.0.1:{free_port()}", "node-a", **settings)
    with pytest.raises(BackendUnavailableError):
        await coord.start()


@pytest.mark.parametrize(
    "settings",
    [
        {"node_id": ""},
        {"prefix": "a.b"},
        {"lease": 0},
        {"margin": -1.0},
        {"renew_every": 0.9},  # + margin reaches the lease
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, Any]) -> None:
    args = {"node_id": "node-a", **FAST, **settings}
    with pytest.raises(ConfigError):
        NatsCoordinator("nats://127.0.0.1:4222", **args)


# -- odd states ---------------------------------------------------------------------------


async def test_concurrent_acquirers_of_a_lock_get_one_token(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 2) as (a, b):
        for round_ in range(3):
            name = f"dock-{round_}"
            if round_:  # an expired holder first: the acquirers race to take it over
                assert await a.acquire(name, "old", 0.05) is not None
                await asyncio.sleep(0.1)
            got = await asyncio.gather(
                *(c.acquire(name, f"owner-{i}-{c.node_id}", 5.0) for i in range(8) for c in (a, b))
            )
            assert len([t for t in got if t is not None]) == 1, got


async def test_a_leader_whose_key_was_taken_steps_down(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        lost = asyncio.Event()
        coord.on_leadership(lambda leading, epoch: None if leading else lost.set())
        nc = await nats.connect(nats_server.url)
        try:
            kv = await nc.jetstream().key_value("fc_elect")
            await kv.put("leader", b'{"node":"intruder"}')
            async with asyncio.timeout(1.0):
                await lost.wait()
            assert not coord.is_leader
            assert (await coord.leader() or ("", 0))[0] == "intruder"
        finally:
            await nc.close()


async def test_an_unreadable_leader_entry_is_respected_until_it_lapses(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket="fc_elect", ttl=1.0, history=1)
        rev = await kv.put("leader", b"not json")
        async with coordinators(nats_server.url, 1) as (coord,):
            assert not coord.is_leader
            assert await coord.leader() == ("?", rev)
            await assert_eventually(lambda: coord.is_leader, timeout=2.0)
    finally:
        await nc.close()


async def test_an_unreadable_lock_entry_is_taken_over(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        nc = await nats.connect(nats_server.url)
        try:
            kv = await nc.jetstream().key_value("fc_locks")
            rev = await kv.put("dock", b"not json")
        finally:
            await nc.close()
        token = await coord.acquire("dock", "a", 5.0)
        assert token is not None
        assert token > rev


async def test_a_failing_callback_does_not_stop_the_others(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[bool] = []

    def broken(leading: bool, epoch: int) -> None:
        raise RuntimeError("boom")

    coord = NatsCoordinator(nats_server.url, "node-a", **FAST)
    coord.on_leadership(broken)
    coord.on_leadership(lambda leading, epoch: seen.append(leading))
    async with coord:
        assert seen == [True]
    assert seen == [True, False]
    assert "leadership callback failed" in caplog.text


async def test_close_with_nats_away_does_not_hang(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1) as (coord,):
        nats_server.pause()
        try:
            async with asyncio.timeout(coord.timeout * 2 + coord.renew_every + 1.0):
                await coord.close()
        finally:
            nats_server.resume()
        assert not coord.is_leader


async def test_a_bucket_made_elsewhere_with_the_same_ttl_is_used(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().create_key_value(bucket="fc_presence", ttl=1.0, history=5)
        async with coordinators(nats_server.url, 1) as (coord,):
            await coord.put_presence("arm-1", b"x")
            assert await coord.presence() == {"arm-1": b"x"}
    finally:
        await nc.close()


async def test_a_stream_in_the_way_of_a_bucket_is_a_backend_error(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name="KV_fc_elect", subjects=["elsewhere.>"])
        coord = NatsCoordinator(nats_server.url, "node-a", **FAST)
        with pytest.raises(BackendError, match="open buckets"):
            await coord.start()
    finally:
        await nc.close()


async def test_work_while_nats_is_away_is_backend_unavailable(nats_server: NatsServer) -> None:
    async with coordinators(nats_server.url, 1, timeout=0.3) as (coord,):
        token = await coord.acquire("dock", "a", 5.0)
        assert token is not None
        nats_server.pause()
        try:
            calls = [
                coord.acquire("door", "a", 5.0),
                coord.renew("dock", token, 5.0),
                coord.release("dock", token),
                coord.put_presence("arm-1", b"x"),
                coord.presence(),
                coord.leader(),
            ]
            for call in calls:
                with pytest.raises(BackendUnavailableError):
                    await call
        finally:
            nats_server.resume()


async def test_per_key_ttl_where_the_server_has_it_and_a_clear_error_where_not(
    nats_server: NatsServer,
) -> None:
    """On 2.11+ a lock entry goes at its own TTL; on older servers (Debian's 2.9.10, what CI
    runs) asking for per-key TTL is a ConfigError naming the version needed. No skip."""
    nc = await nats.connect(nats_server.url)
    try:
        version = nc.connected_server_version
        if (version.major, version.minor) < (2, 11):
            coord = NatsCoordinator(nc, "node-a", per_key_ttl=True, **FAST)
            with pytest.raises(ConfigError, match=r"per_key_ttl needs nats-server 2\.11\.0"):
                await coord.start()
            return
        async with NatsCoordinator(
            nc, "node-a", per_key_ttl=True, **FAST
        ) as coord:  # pragma: no cover - 2.11+
            token = await coord.acquire("dock", "a", 1.0)
            assert token is not None
            token = await coord.renew("dock", token, 1.0)
            kv = await nc.jetstream().key_value("fc_locks")
            await assert_eventually(lambda: _gone(kv, "dock"), timeout=3.0, interval=0.05)
    finally:
        await nc.close()


async def _gone(kv: Any, key: str) -> bool:
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return True
    return entry.value is None
