"""The autoscaler's loop on a fake clock: ticks every interval, a hint brings a round forward
(debounced), a failing round is survived, only the leader runs it, and closing the hub stops a
process pool's workers. The pools run real tiny commands."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import AsyncIterator

import psutil
import pytest

from fleetchat import Hub, HubSettings
from fleetchat.errors import ConflictError, InvalidInputError, NotFoundError
from fleetchat.ops.settings import PoolSettings, ScalingSettings
from fleetchat.testing import FakeClock, assert_eventually

SETTINGS = ScalingSettings(interval=30.0, signal_delay=1.0, cpu_high=1.0)
"""cpu_high 100 %: the machine's CPU (shared with other tests) never resizes anything here."""
NOOP = PoolSettings(actuator="command", command=["true"], min=1, max=3)


@pytest.fixture
async def hub(clock: FakeClock) -> AsyncIterator[Hub]:
    async with Hub(HubSettings(url="memory://"), clock=clock) as h:
        yield h


async def rounds_reach(hub: Hub, count: int) -> None:
    await assert_eventually(lambda: hub.ops.scaling.rounds >= count)


def configure(hub: Hub, **pools: PoolSettings) -> None:
    hub.ops.scaling.reconfigure(dataclasses.replace(SETTINGS, pools=pools))


async def test_without_pools_the_loop_does_not_run(hub: Hub, clock: FakeClock) -> None:
    await clock.advance(60)
    assert hub.ops.scaling.rounds == 0
    assert hub.ops.scaling.status() == []


async def test_a_round_runs_every_interval(hub: Hub, clock: FakeClock) -> None:
    configure(hub, p=NOOP)
    await rounds_reach(hub, 1)
    await clock.advance(29)
    assert hub.ops.scaling.rounds == 1
    await clock.advance(1)
    await rounds_reach(hub, 2)


async def test_a_hint_brings_the_next_round_forward_once(hub: Hub, clock: FakeClock) -> None:
    configure(hub, p=NOOP)
    await rounds_reach(hub, 1)
    hub.ops.scaling.signal("backlog", depth=5000)
    hub.ops.scaling.signal("backlog", depth=6000)  # debounced into the same round
    await clock.advance(1)
    await rounds_reach(hub, 2)
    await clock.advance(5)
    assert hub.ops.scaling.rounds == 2


async def test_a_failing_round_is_logged_and_the_loop_goes_on(
    hub: Hub, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scaling = hub.ops.scaling
    real = scaling._collector.snapshot
    calls = 0

    async def flaky(pools: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("psutil exploded")
        return await real(pools)  # type: ignore[arg-type]

    monkeypatch.setattr(scaling._collector, "snapshot", flaky)
    configure(hub, p=NOOP)
    await assert_eventually(lambda: calls == 1)
    assert scaling.rounds == 0
    assert "autoscaler round failed" in caplog.text
    await clock.advance(30)
    await rounds_reach(hub, 1)
    assert scaling.desired == {"p": 1}


async def test_only_the_leader_runs_the_loop(hub: Hub, clock: FakeClock) -> None:
    hub.ops.lead(False)
    configure(hub, p=NOOP)
    await clock.advance(60)
    assert hub.ops.scaling.rounds == 0
    assert not hub.ops.scaling.status()[0].active
    hub.ops.lead(True)
    await rounds_reach(hub, 1)
    assert hub.ops.scaling.status()[0].active


async def test_losing_the_lead_or_closing_stops_the_workers(clock: FakeClock) -> None:
    sleeper = PoolSettings(command=[sys.executable, "-c", "import time; time.sleep(60)"], min=2)
    async with Hub(HubSettings(url="memory://"), clock=clock) as hub:
        configure(hub, sleepers=sleeper)
        await assert_eventually(lambda: len(hub.ops.scaling.status()[0].pids) == 2)
        first = hub.ops.scaling.status()[0].pids
        assert all(psutil.pid_exists(pid) for pid in first)
        hub.ops.lead(False)
        await assert_eventually(lambda: not any(psutil.pid_exists(pid) for pid in first))
        hub.ops.lead(True)
        await assert_eventually(lambda: len(hub.ops.scaling.status()[0].pids) == 2)
        second = hub.ops.scaling.status()[0].pids
    assert not any(psutil.pid_exists(pid) for pid in second)
    assert os.getpid() not in first + second


async def test_removing_a_pool_from_the_settings_lets_it_go(hub: Hub, clock: FakeClock) -> None:
    configure(hub, p=NOOP, q=NOOP)
    await rounds_reach(hub, 1)
    assert hub.ops.scaling.desired == {"p": 1, "q": 1}
    configure(hub, p=NOOP)
    await rounds_reach(hub, 2)
    assert hub.ops.scaling.desired == {"p": 1}
    assert [s.name for s in hub.ops.scaling.status()] == ["p"]


async def test_a_manual_resize_is_checked_and_recorded(hub: Hub, clock: FakeClock) -> None:
    with pytest.raises(NotFoundError):
        await hub.ops.scaling.scale("p", 2)
    hub.ops.lead(False)
    configure(hub, p=NOOP)
    with pytest.raises(ConflictError):
        await hub.ops.scaling.scale("p", 2)
    hub.ops.lead(True)
    await rounds_reach(hub, 1)
    with pytest.raises(InvalidInputError):
        await hub.ops.scaling.scale("p", 4)
    event = await hub.ops.scaling.scale("p", 3)
    assert (event["kind"], event["from"], event["to"], event["ok"]) == ("manual", 1, 3, True)
    assert (await hub.ops.scaling.events())[-1]["kind"] == "manual"
    assert hub.ops.scaling.counts["out"] == 1


async def test_a_changed_pool_keeps_its_size_within_its_new_bounds(
    hub: Hub, clock: FakeClock
) -> None:
    configure(hub, p=NOOP)
    await rounds_reach(hub, 1)
    await hub.ops.scaling.scale("p", 3)
    configure(hub, p=dataclasses.replace(NOOP, max=2))
    await rounds_reach(hub, 2)
    assert hub.ops.scaling.desired == {"p": 2}
    last = (await hub.ops.scaling.events())[-1]
    assert (last["kind"], last["to"], last["ok"]) == ("restart", 2, True)
