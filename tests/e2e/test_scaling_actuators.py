"""The ``command`` and ``webhook`` actuators against a real local command and a local HTTP
receiver, driven by the autoscaler of a real hub (SQLite file): resizes by the queue policy,
failures recorded, alerted once and retried."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fleetchat import Hub, HubSettings
from fleetchat.ops.journal import ALERTS_CHANNEL
from fleetchat.ops.settings import PoolSettings, ScalingSettings
from fleetchat.testing import assert_eventually

SLOW = ScalingSettings(interval=600.0, cooldown_out=0.0, cooldown_in=0.0, cpu_high=1.0)
"""The loop's first round runs at once; the tests run the later ones with evaluate(). The
machine's CPU (shared with other tests) never triggers a resize here: cpu_high 100 %."""

RESIZE = """
if [ -e "$FAIL_FLAG" ]; then echo "replicas: quota exceeded" >&2; exit 3; fi
echo "$FLEETCHAT_POOL $1 $FLEETCHAT_DESIRED $FLEETCHAT_PREVIOUS" >> "$OUT"
"""


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with Hub(HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}")) as h:
        yield h


async def configure(hub: Hub, **pools: PoolSettings) -> None:
    """Set the pools and wait for the loop's first round."""
    rounds = hub.ops.scaling.rounds
    hub.ops.scaling.reconfigure(dataclasses.replace(SLOW, pools=pools))
    await assert_eventually(lambda: hub.ops.scaling.rounds > rounds)


async def backlog(hub: Hub, count: int) -> None:
    for _ in range(count):
        await hub.tasks.submit({"render": 1.0}, must_be_satisfiable=False)


def command_pool(tmp_path: Path, **fields: Any) -> PoolSettings:
    script = tmp_path / "resize.sh"
    script.write_text(RESIZE)
    env = {"OUT": str(tmp_path / "sizes"), "FAIL_FLAG": str(tmp_path / "fail")}
    return PoolSettings(
        actuator="command",
        command=["sh", str(script), "{count}"],
        capability="render",
        min=1,
        max=5,
        env=env,
        **fields,
    )


async def test_the_command_actuator_runs_the_command_with_the_desired_count(
    hub: Hub, tmp_path: Path
) -> None:
    await configure(hub, render=command_pool(tmp_path))
    await backlog(hub, 120)
    [event] = await hub.ops.scaling.evaluate()

    assert (event["kind"], event["from"], event["to"], event["ok"]) == ("out", 1, 4, True)
    assert event["actuator"] == "command"
    assert event["metrics"]["queued"] == 120
    # Told its size (min) when the pool appeared, then resized by the queue policy.
    assert (tmp_path / "sizes").read_text().splitlines() == ["render 1 1 1", "render 4 4 1"]
    assert hub.ops.scaling.desired == {"render": 4}
    assert hub.ops.scaling.counts["out"] == 1


async def test_a_failing_command_is_recorded_alerted_once_and_retried(
    hub: Hub, tmp_path: Path
) -> None:
    await configure(hub, render=command_pool(tmp_path))
    (tmp_path / "fail").touch()
    await backlog(hub, 120)
    [failed] = await hub.ops.scaling.evaluate()
    [again] = await hub.ops.scaling.evaluate()
    (tmp_path / "fail").unlink()
    [retried, grown] = await hub.ops.scaling.evaluate()

    assert (failed["ok"], failed["to"]) == (False, 4)
    assert failed["error"] == "pool render: the command exited 3: replicas: quota exceeded"
    assert (again["ok"], again["kind"], again["to"]) == (False, "restart", 4)
    assert again["reason"].startswith("retry: 1 instance(s), 4 wanted")
    assert (retried["ok"], retried["from"], retried["to"]) == (True, 1, 4)
    assert (grown["kind"], grown["from"], grown["to"]) == ("out", 4, 5)  # still 120 queued
    sizes = (tmp_path / "sizes").read_text().splitlines()
    assert sizes == ["render 1 1 1", "render 4 4 1", "render 5 5 4"]
    alerts = await hub.ops.journal.read(ALERTS_CHANNEL, kind="scaling_failed")
    assert len(alerts) == 1
    assert alerts[0]["pool"] == "render"
    assert hub.ops.scaling.counts["failed"] == 2
    assert hub.ops.scaling.status()[0].error is None


async def test_a_command_that_overruns_its_timeout_fails(hub: Hub, tmp_path: Path) -> None:
    pool = PoolSettings(actuator="command", command=["sleep", "30"], timeout=0.2, min=1)
    await configure(hub, slow=pool)
    [event] = await hub.ops.scaling.events()
    assert event["ok"] is False
    assert event["error"] == "pool slow: the command took more than 0.2s"


async def test_a_missing_command_fails_with_its_reason(hub: Hub, tmp_path: Path) -> None:
    pool = PoolSettings(actuator="command", command=[str(tmp_path / "nope")], min=1)
    await configure(hub, gone=pool)
    [event] = await hub.ops.scaling.events()
    assert event["ok"] is False
    assert event["error"].startswith(f"pool gone: cannot run {str(tmp_path / 'nope')!r}")


@dataclasses.dataclass
class Receiver:
    url: str
    bodies: list[dict[str, Any]]
    answer: list[int]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A local HTTP server taking the webhook's POSTs; answers ``answer[0]``."""
    got = Receiver("", [], [200])

    async def take(request: web.Request) -> web.Response:
        got.bodies.append(await request.json())
        return web.Response(status=got.answer[0], text="no capacity left")

    app = web.Application()
    app.router.add_post("/scale", take)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    got.url = f"http://127.0.0.1:{port}/scale"
    yield got
    await runner.cleanup()


async def test_the_webhook_actuator_posts_the_desired_count(hub: Hub, receiver: Receiver) -> None:
    pool = PoolSettings(actuator="webhook", url=receiver.url, capability="render", min=2, max=8)
    await configure(hub, render=pool)
    await backlog(hub, 160)
    [event] = await hub.ops.scaling.evaluate()

    assert (event["kind"], event["from"], event["to"], event["ok"]) == ("out", 2, 6, True)
    told = [(b["pool"], b["desired"], b["previous"]) for b in receiver.bodies]
    assert told == [("render", 2, 2), ("render", 6, 2)]
    assert receiver.bodies[1]["reason"] == "queue 160 > 100 queued"
    assert event["at"] - 60 < receiver.bodies[1]["at"] <= event["at"]


async def test_a_webhook_answering_an_error_is_a_failed_resize(
    hub: Hub, receiver: Receiver
) -> None:
    receiver.answer[0] = 500
    await configure(hub, render=PoolSettings(actuator="webhook", url=receiver.url, min=1))
    [event] = await hub.ops.scaling.events()
    assert event["ok"] is False
    assert event["error"] == f"pool render: {receiver.url} answered 500: no capacity left"


async def test_an_unreachable_webhook_is_a_failed_resize(hub: Hub, receiver: Receiver) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/scale"
    await configure(hub, render=PoolSettings(actuator="webhook", url=url, min=1, timeout=2))
    [event] = await hub.ops.scaling.events()
    assert event["ok"] is False
    assert event["error"].startswith(f"pool render: cannot reach {url}")
