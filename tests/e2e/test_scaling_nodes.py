"""The autoscaler on the distributed hub (two nodes on one real nats-server): only the leader
runs it, and a new leader carries on from the size the old one recorded on ``$ops``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.ops.settings import PoolSettings, ScalingSettings
from fleetchat.testing import assert_eventually
from fleetchat.testing.services import NatsServer


@pytest.fixture
async def nodes(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[list[Hub]]:
    pool = PoolSettings(
        actuator="command",
        command=["sh", "-c", f'echo "$1" >> {tmp_path / "sizes"}', "resize", "{count}"],
        min=2,
        max=5,
    )
    scaling = ScalingSettings(interval=600.0, cpu_high=1.0, pools={"render": pool})
    settings = HubSettings(url=nats_server.url, scaling=scaling)
    hubs: list[Hub] = []
    try:
        for _ in range(2):
            hub = Hub(settings)
            await hub.start()
            hubs.append(hub)
            await assert_eventually(lambda: hubs[0].coordinator.is_leader, timeout=10)
        yield hubs
    finally:
        for hub in hubs:
            with contextlib.suppress(Exception):
                await hub.close()


async def test_only_the_leader_scales_and_a_new_leader_carries_on(
    nodes: list[Hub], tmp_path: Path
) -> None:
    leader, follower = nodes
    await assert_eventually(lambda: leader.ops.scaling.rounds > 0, timeout=10)
    event = await leader.ops.scaling.scale("render", 4)
    assert event["ok"]
    assert follower.ops.scaling.rounds == 0
    assert not follower.ops.scaling.status()[0].active

    await leader.close()
    await assert_eventually(lambda: follower.ops.scaling.rounds > 0, timeout=20)
    assert follower.ops.scaling.desired == {"render": 4}
    assert (tmp_path / "sizes").read_text().split() == ["2", "4", "4"]
    last = (await follower.ops.scaling.events())[-1]
    assert (last["kind"], last["to"], last["reason"]) == (
        "restart",
        4,
        "start: the pool is told its size 4",
    )
