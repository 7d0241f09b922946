"""Channels: creation, membership, announcements, history, inboxes, access control."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetchat import (
    ChannelExistsError,
    ChannelNotFoundError,
    ChatSettings,
    ForbiddenError,
    Hub,
    HubSettings,
    InvalidIdError,
    InvalidInputError,
    Message,
    MessageTooLargeError,
)
from fleetchat.testing import FakeClock


async def test_create_sets_type_retention_and_times(hub: Hub, clock: FakeClock) -> None:
    ch = await hub.channels.create("cell-1", type="task", retention_count=10, retention_age=60)
    assert (ch.type, ch.retention_count, ch.retention_age) == ("task", 10, 60)
    assert ch.created_at == ch.last_activity_at == clock.time()


async def test_creating_an_existing_channel_is_channel_exists_error(hub: Hub) -> None:
    await hub.channels.create("cell-1")
    with pytest.raises(ChannelExistsError) as err:
        await hub.channels.create("cell-1")
    assert err.value.code == "channel_exists"


async def test_subscribing_to_a_missing_channel_creates_it(hub: Hub) -> None:
    await hub.subscribe("r1", "new-channel")
    assert hub.channels.members("new-channel") == ["r1"]


async def test_joining_announces_agent_x_joined(hub: Hub) -> None:
    await hub.channels.create("cell")
    await hub.subscribe("r1", "cell")
    (msg,) = await hub.channels.history("cell")
    assert (msg.kind, msg.sender, msg.body["text"]) == ("system", "$hub", "agent r1 joined")


async def test_leaving_announces_agent_x_left(hub: Hub) -> None:
    await hub.subscribe("r1", "cell")
    assert await hub.unsubscribe("r1", "cell")
    assert (await hub.channels.history("cell"))[-1].body["text"] == "agent r1 left"
    assert hub.channels.members("cell") == []
    assert not await hub.unsubscribe("r1", "cell")


async def test_a_broadcast_channel_can_switch_announcements_off(hub: Hub) -> None:
    await hub.channels.create("all-hands", type="broadcast", announce=False)
    await hub.subscribe("r1", "all-hands")
    assert await hub.channels.history("all-hands") == []


async def test_joining_twice_is_a_no_op(hub: Hub) -> None:
    assert await hub.channels.join("cell", "r1")
    assert not await hub.channels.join("cell", "r1")
    assert len(await hub.channels.history("cell")) == 1


async def test_list_hides_system_channels_unless_asked(hub: Hub) -> None:
    await hub.channels.create("b")
    await hub.channels.create("a")
    assert [c.name for c in hub.channels.list()] == ["a", "b"]
    assert "$dlq" in [c.name for c in hub.channels.list(include_system=True)]


async def test_history_by_sequence_range(hub: Hub) -> None:
    await hub.channels.create("log", announce=False)
    for i in range(10):
        await hub.publish("log", i, sender="r1")
    assert [m.body for m in await hub.channels.history("log", start_seq=3, end_seq=5)] == [2, 3, 4]
    assert [m.body for m in await hub.channels.history("log", start_seq=8, limit=1)] == [7]


async def test_history_by_time_range(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("log", announce=False)
    start = clock.time()
    for i in range(5):
        await hub.publish("log", i, sender="r1")
        await clock.advance(10)
    got = await hub.channels.history("log", since=start + 10, until=start + 30)
    assert [m.body for m in got] == [1, 2, 3]


async def test_history_rejects_a_bad_limit(hub: Hub) -> None:
    await hub.channels.create("log")
    with pytest.raises(InvalidInputError):
        await hub.channels.history("log", limit=0)
    with pytest.raises(InvalidInputError):
        await hub.channels.history("log", start_seq=-1)


async def test_history_tail_gives_the_newest_messages_oldest_first(hub: Hub) -> None:
    await hub.channels.create("log", announce=False)
    for i in range(10):
        await hub.publish("log", i, sender="r1")

    async def tail(**query: int) -> list[object]:
        return [m.body for m in await hub.channels.history("log", tail=True, **query)]

    assert await tail(limit=3) == [7, 8, 9]
    assert await tail(limit=3, end_seq=5) == [2, 3, 4]
    assert await tail(limit=3, start_seq=9) == [8, 9]
    assert await tail(limit=3, start_seq=4, end_seq=5) == [3, 4]
    assert await tail(limit=50) == list(range(10))
    assert await tail(start_seq=11) == []
    assert await tail(end_seq=0) == []
    assert [m.body for m in await hub.channels.history("log", limit=3)] == [0, 1, 2]


async def test_history_tail_with_a_time_range(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("log", announce=False)
    start = clock.time()
    for i in range(40):
        await hub.publish("log", i, sender="r1")
        await clock.advance(10)

    async def tail(limit: int, **times: float) -> list[object]:
        got = await hub.channels.history("log", limit=limit, tail=True, **times)
        return [m.body for m in got]

    # The matches are far from the newest seq: the walk back takes several windows.
    assert await tail(2, until=start + 30) == [2, 3]
    assert await tail(2, since=start + 300) == [38, 39]
    assert await tail(3, since=start + 10, until=start + 50) == [3, 4, 5]
    assert await tail(10, since=start + 10, until=start + 30) == [1, 2, 3]
    assert await tail(5, since=start + 1000) == []
    assert await tail(5, until=start - 1) == []


async def test_history_tail_starts_at_the_oldest_message_kept(hub: Hub) -> None:
    await hub.channels.create("c", retention_count=3, announce=False)
    for i in range(10):
        await hub.publish("c", i, sender="r1")
    await hub.bus.sweep()
    assert [m.body for m in await hub.channels.history("c", limit=5, tail=True)] == [7, 8, 9]
    await hub.channels.create("empty", announce=False)
    assert await hub.channels.history("empty", tail=True) == []


async def test_history_tail_of_an_ephemeral_channel(hub: Hub) -> None:
    await hub.channels.create("t", ephemeral=True, retention_count=5, announce=False)
    for i in range(10):
        await hub.publish("t", i, sender="r1")
    assert [m.body for m in await hub.channels.history("t", limit=2, tail=True)] == [8, 9]


async def test_history_tail_reads_about_limit_messages_of_a_long_channel(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hub.channels.create("long", announce=False)
    for i in range(2000):
        await hub.publish("long", i, sender="r1")
    log = hub.bus._log
    read: list[int] = []
    real = log.history

    def counting(*args: Any, **kwargs: Any) -> list[Message]:
        got = real(*args, **kwargs)
        read.append(len(got))
        return got

    monkeypatch.setattr(log, "history", counting)
    got = await hub.channels.history("long", limit=100, tail=True)
    assert [m.seq for m in got] == list(range(1901, 2001))
    assert read == [100]


async def test_history_rejects_a_tail_that_is_not_a_bool(hub: Hub) -> None:
    await hub.channels.create("log")
    with pytest.raises(InvalidInputError) as err:
        await hub.channels.history("log", tail="yes")  # type: ignore[arg-type]
    assert err.value.details["field"] == "tail"


async def test_last_activity_and_seq_follow_publishes(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("c", announce=False)
    await clock.advance(5)
    msg = await hub.publish("c", "x", sender="r1")
    ch = hub.channels.get("c")
    assert (ch.last_seq, ch.last_activity_at) == (msg.seq, msg.created_at)


async def test_direct_inbox_reaches_only_its_agent(hub: Hub) -> None:
    r1 = await hub.subscribe("r1")
    r2 = await hub.subscribe("r2")
    await hub.publish("@r1", "for you", sender="planner")
    assert (await r1.next(timeout=0)).body == "for you"
    assert await r2.fetch(timeout=0) is None


async def test_publishing_to_a_registered_agents_inbox_creates_it(hub: Hub) -> None:
    await hub.registry.register("r9", capabilities={"nav": 1.0})
    await hub.publish("@r9", "hello", sender="planner")
    sub = await hub.subscribe("r9")
    assert (await sub.next(timeout=0)).body == "hello"


async def test_only_its_owner_joins_an_inbox(hub: Hub) -> None:
    await hub.subscribe("r1")
    with pytest.raises(ForbiddenError):
        await hub.channels.join("@r1", "r2")


async def test_ephemeral_channel_keeps_history_in_memory_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    async with Hub.open(url) as hub:
        await hub.channels.create("telemetry", ephemeral=True, announce=False)
        sub = await hub.subscribe("r1", "telemetry")
        await hub.publish("telemetry", {"x": 1}, sender="r2")
        assert (await sub.next(timeout=0)).body == {"x": 1}
        assert len(await hub.channels.history("telemetry")) == 1
    async with Hub.open(url) as hub:
        assert hub.channels.get("telemetry").ephemeral
        assert await hub.channels.history("telemetry") == []
        assert hub.channels.members("telemetry") == ["r1"]


async def test_ephemeral_channel_keeps_at_most_its_retention_count(hub: Hub) -> None:
    await hub.channels.create("t", ephemeral=True, retention_count=3, announce=False)
    for i in range(10):
        await hub.publish("t", i, sender="r1")
    assert [m.body for m in await hub.channels.history("t")] == [7, 8, 9]


async def test_retention_sweep_trims_durable_history_by_count(hub: Hub) -> None:
    await hub.channels.create("c", retention_count=3, announce=False)
    for i in range(10):
        await hub.publish("c", i, sender="r1")
    await hub.bus.sweep()
    assert [m.body for m in await hub.channels.history("c")] == [7, 8, 9]


async def test_retention_sweep_trims_by_age(hub: Hub, clock: FakeClock) -> None:
    await hub.channels.create("c", retention_age=60, announce=False)
    await hub.publish("c", "old", sender="r1")
    await clock.advance(120)
    await hub.publish("c", "new", sender="r1")
    await hub.bus.sweep()
    assert [m.body for m in await hub.channels.history("c")] == ["new"]


async def test_delete_removes_channel_history_and_memberships(hub: Hub) -> None:
    sub = await hub.subscribe("r1", "c")
    await hub.publish("c", "x", sender="r2")
    await hub.channels.delete("c")
    with pytest.raises(ChannelNotFoundError):
        hub.channels.get("c")
    assert hub.channels.memberships("r1") == ["@r1"]
    assert await sub.fetch(timeout=0) is None


async def test_system_channels_cannot_be_deleted_or_created(hub: Hub) -> None:
    with pytest.raises(ForbiddenError):
        await hub.channels.delete("$dlq")
    with pytest.raises(ForbiddenError):
        await hub.channels.create("$mine")
    with pytest.raises(ForbiddenError):
        await hub.channels.create("@someone")


async def test_publishing_to_an_unknown_channel_is_channel_not_found(hub: Hub) -> None:
    with pytest.raises(ChannelNotFoundError) as err:
        await hub.publish("nowhere", "x", sender="r1")
    assert err.value.code == "channel_not_found"


@pytest.mark.parametrize("bad", ["", "has space", "-leading", "a" * 129, "star*", 42])
async def test_invalid_channel_names_are_invalid_id_errors(hub: Hub, bad: object) -> None:
    with pytest.raises(InvalidIdError):
        await hub.channels.create(bad)  # type: ignore[arg-type]


async def test_invalid_sender_is_rejected_and_nothing_written(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    with pytest.raises(InvalidIdError):
        await hub.publish("c", "x", sender="$hub")
    assert await hub.channels.history("c") == []


async def test_only_listed_writers_may_post(hub: Hub) -> None:
    await hub.channels.create("orders", writers=["planner"], announce=False)
    await hub.publish("orders", "go", sender="planner")
    with pytest.raises(ForbiddenError) as err:
        await hub.publish("orders", "sneaky", sender="r1")
    assert err.value.code == "forbidden"
    assert [m.body for m in await hub.channels.history("orders")] == ["go"]


async def test_nobody_posts_in_the_dead_letter_channel(hub: Hub) -> None:
    with pytest.raises(ForbiddenError):
        await hub.publish("$dlq", "fake", sender="r1")


async def test_oversized_body_is_message_too_large_and_nothing_written(
    backend_url: str, clock: FakeClock
) -> None:
    settings = HubSettings(url=backend_url, chat=ChatSettings(max_body_bytes=100))
    async with Hub(settings, clock=clock) as hub:
        await hub.channels.create("c", announce=False)
        with pytest.raises(MessageTooLargeError) as err:
            await hub.publish("c", "x" * 200, sender="r1")
        assert err.value.code == "message_too_large"
        assert err.value.details["limit"] == 100
        assert await hub.channels.history("c") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"kind": "system"}, "kind"),
        ({"kind": "gossip"}, "kind"),
        ({"expires_in": -1}, "expires_in"),
        ({"expires_in": "soon"}, "expires_in"),
        ({"headers": {"a": 1}}, "headers"),
    ],
)
async def test_wrong_field_values_are_invalid_input(
    hub: Hub, kwargs: dict[str, object], field: str
) -> None:
    await hub.channels.create("c", announce=False)
    with pytest.raises(InvalidInputError) as err:
        await hub.publish("c", "x", sender="r1", **kwargs)  # type: ignore[arg-type]
    assert err.value.details["field"] == field
    assert await hub.channels.history("c") == []


async def test_a_body_that_is_not_json_is_invalid_input(hub: Hub) -> None:
    await hub.channels.create("c", announce=False)
    with pytest.raises(InvalidInputError):
        await hub.publish("c", {"when": object()}, sender="r1")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "party"},
        {"retention_count": 0},
        {"retention_age": -5},
        {"overflow": "drop"},
        {"writers": ["ok", "not ok"]},
    ],
)
async def test_bad_channel_options_are_invalid_input(hub: Hub, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        await hub.channels.create("c", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ChannelNotFoundError):
        hub.channels.get("c")
