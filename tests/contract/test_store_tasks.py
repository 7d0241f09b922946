"""Store contract, tasks: compare-and-set records on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import msgspec

from fleetchat.backends.ports import Store
from fleetchat.tasks.records import Attempt, TaskRecord, Timeouts


def task(task_id: str = "t-1", **fields: object) -> TaskRecord:
    base: dict[str, object] = {
        "id": task_id,
        "required": {"weld": 1.0},
        "payload": {"part": 7, "notes": ["a", "b"]},
        "timeouts": Timeouts(schedule_to_start=60.0, heartbeat=5.0),
        "created_at": 1_700_000_000.25,
    }
    base.update(fields)
    return TaskRecord(**base)  # type: ignore[arg-type]


async def test_a_new_task_is_saved_from_version_0_and_loads_as_version_1(store: Store) -> None:
    assert await store.load_task("t-1") is None
    saved = task(attempts=[Attempt(agent="arm-1", offered_at=1.5, outcome="rejected")])
    assert await store.save_task(saved, 0)
    assert await store.load_task("t-1") == msgspec.structs.replace(saved, version=1)


async def test_a_stale_version_is_refused_and_changes_nothing(store: Store) -> None:
    await store.save_task(task(), 0)
    assert await store.save_task(task(state="offered", holder="arm-1"), 1)
    assert not await store.save_task(task(state="cancelled"), 1)
    assert not await store.save_task(task(state="cancelled"), 0)  # the id is taken
    loaded = await store.load_task("t-1")
    assert loaded is not None
    assert (loaded.version, loaded.state, loaded.holder) == (2, "offered", "arm-1")


async def test_one_of_two_concurrent_results_wins(store: Store) -> None:
    await store.save_task(task(state="running", holder="arm-1"), 0)
    results = await asyncio.gather(
        store.save_task(task(state="succeeded", result="a"), 1),
        store.save_task(task(state="succeeded", result="b"), 1),
    )
    assert sorted(results) == [False, True]
    loaded = await store.load_task("t-1")
    assert loaded is not None
    assert loaded.result == ("a" if results[0] else "b")


async def test_an_idempotency_key_is_unique_and_found(store: Store) -> None:
    assert await store.save_task(task("t-1", idempotency_key="order-1"), 0)
    assert not await store.save_task(task("t-2", idempotency_key="order-1"), 0)
    found = await store.find_task("order-1")
    assert found is not None
    assert found.id == "t-1"
    assert await store.find_task("order-2") is None
    assert await store.load_task("t-2") is None


async def test_listing_by_state_and_active_oldest_first(store: Store) -> None:
    for i, state in enumerate(["queued", "running", "succeeded", "offered", "failed"]):
        await store.save_task(task(f"t-{i}", state=state, created_at=100.0 - i), 0)
    active = await store.load_tasks(active=True)
    assert [t.id for t in active] == ["t-3", "t-1", "t-0"]
    assert [t.id for t in await store.load_tasks(state="succeeded")] == ["t-2"]
    assert [t.id for t in await store.load_tasks(limit=2)] == ["t-4", "t-3"]
    assert len(await store.load_tasks()) == 5
