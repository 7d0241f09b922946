"""Live configuration: a change to the retry budget takes effect on the next delivery; a bad
change or file is refused whole and the running settings stay as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetchat import Hub
from fleetchat.config import HubSettings
from fleetchat.errors import ConfigError
from fleetchat.testing import FakeClock, assert_eventually


async def test_a_live_change_of_the_retry_budget_applies_to_the_next_delivery(
    backend_url: str, clock: FakeClock
) -> None:
    async with Hub(HubSettings(url=backend_url), clock=clock) as hub:
        await hub.channels.create("c", announce=False)
        sub = await hub.subscribe("arm", "c")
        await hub.publish("c", "first", sender="boss")
        await (await sub.next(timeout=0)).nack()  # 3 attempts: retried
        await clock.advance(0.2)
        again = await sub.next(timeout=0)
        assert again.attempt == 2
        await again.ack()

        result = await hub.ops.config.change({"chat": {"qos": {"normal": {"max_attempts": 1}}}})
        assert [(c.path, c.old, c.new) for c in result.applied] == [
            ("chat.qos.normal.max_attempts", 3, 1)
        ]
        assert hub.bus.settings.qos_for("normal").max_attempts == 1
        await hub.publish("c", "second", sender="boss")
        await (await sub.next(timeout=0)).nack()  # 1 attempt: dead-lettered at once

        async def parked() -> bool:
            return [d.message.body for d in await hub.dead_letters()] == ["second"]

        await assert_eventually(parked)
        (record,) = await hub.ops.journal.read(kind="config")
    assert record["source"] == "api"
    assert record["applied"] == [{"path": "chat.qos.normal.max_attempts", "old": 3, "new": 1}]


async def test_a_bad_live_change_is_refused_whole(clock: FakeClock) -> None:
    async with Hub(HubSettings(url="memory://"), clock=clock) as hub:
        before = hub.settings
        with pytest.raises(ConfigError) as refused:
            await hub.ops.config.change(
                {
                    "chat": {"qos": {"normal": {"max_attempts": 5}}, "fetch_batch": "lots"},
                    "tasks": {"max_retries": 2},
                    "health": {"no_such": 1},
                }
            )
        paths = [p["path"] for p in refused.value.details["problems"]]
        assert paths == ["chat.fetch_batch", "health.no_such"]
        assert hub.settings is before
        assert hub.bus.settings.qos_for("normal").max_attempts == 3
        assert await hub.ops.journal.read(kind="config") == []


async def test_settings_bound_at_start_wait_for_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    async with Hub(HubSettings(url="memory://"), clock=clock) as hub:
        result = await hub.ops.config.change(
            {"storage": {"sync": "full"}, "tasks": {"max_retries": 7}}
        )
        assert [c.path for c in result.restart_required] == ["storage.sync"]
        assert [c.path for c in result.applied] == ["tasks.max_retries"]
        assert hub.settings.storage.sync == "normal"
        assert hub.scheduler.settings.max_retries == 7  # the scheduler reads the new ones
        assert (await hub.tasks.submit({"x": 1.0}, must_be_satisfiable=False)).max_retries == 7


async def test_the_settings_file_is_reloaded_or_refused(tmp_path: Path, clock: FakeClock) -> None:
    config = tmp_path / "fleetchat.toml"
    config.write_text("[health]\nstalled_after = 45\n")
    async with Hub(HubSettings(url="memory://"), clock=clock) as hub:
        hub.ops.config.file = config
        result = await hub.ops.config.reload()
        assert [(c.path, c.new) for c in result.applied] == [("health.stalled_after", 45.0)]
        assert hub.ops.health.settings.stalled_after == 45.0

        config.write_text("[health]\nstalled_after = -1\n[scaling.pools.w]\nactuator = 'ssh'\n")
        with pytest.raises(ConfigError) as refused:
            await hub.ops.config.reload()
        assert [p["path"] for p in refused.value.details["problems"]] == [
            "health.stalled_after",
            "scaling.pools.w.actuator",
        ]
        assert hub.ops.health.settings.stalled_after == 45.0
        assert "***" not in str(hub.ops.config.current()["chat"])
