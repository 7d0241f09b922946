"""Store contract, workflows: definitions once per (name, version); executions by
compare-and-set with their events, both or neither; on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from fleetchat.backends.ports import Store
from fleetchat.workflows.records import (
    DefinitionRecord,
    ExecutionEvent,
    ExecutionRecord,
    StepRun,
    Thread,
)


def definition(version: str = "1.0.0", **fields: object) -> DefinitionRecord:
    base: dict[str, object] = {
        "name": "order",
        "version": version,
        "content_hash": "abc",
        "document": {"name": "order", "steps": [{"id": "a", "type": "succeed"}]},
        "created_at": 1.5,
    }
    base.update(fields)
    return DefinitionRecord(**base)  # type: ignore[arg-type]


def execution(exec_id: str = "x-1", **fields: object) -> ExecutionRecord:
    base: dict[str, object] = {
        "id": exec_id,
        "workflow": "order",
        "workflow_version": "1.0.0",
        "content_hash": "abc",
        "input": {"order": 7},
        "threads": {"root": Thread(id="root", scope=[], step="a")},
        "runs": {"a": StepRun(key="a", step="a", thread="root", agent="arm-1")},
        "created_at": 10.0,
    }
    base.update(fields)
    return ExecutionRecord(**base)  # type: ignore[arg-type]


def event(seq: int, kind: str = "step.scheduled", exec_id: str = "x-1") -> ExecutionEvent:
    return ExecutionEvent(execution=exec_id, seq=seq, type=kind, at=float(seq), step="a")


async def test_a_definition_is_stored_once_per_name_and_version(store: Store) -> None:
    assert await store.save_definition(definition())
    assert not await store.save_definition(definition(content_hash="other"))
    assert await store.save_definition(definition("1.1.0"))
    await store.update_definition(definition(deprecated=True))
    loaded = {(d.version, d.content_hash, d.deprecated) for d in await store.load_definitions()}
    assert loaded == {("1.0.0", "abc", True), ("1.1.0", "abc", False)}


async def test_an_execution_and_its_events_are_saved_together(store: Store) -> None:
    assert await store.save_execution(execution(), 0, [event(1, "execution.started"), event(2)])
    loaded = await store.load_execution("x-1")
    assert loaded is not None
    assert (loaded.version, loaded.input, loaded.runs["a"].agent) == (1, {"order": 7}, "arm-1")
    assert loaded.threads["root"].step == "a"
    assert not await store.save_execution(execution(status="failed"), 0, [event(3)])
    assert not await store.save_execution(execution(status="failed"), 5, [event(3)])
    assert await store.save_execution(execution(status="completed"), 1, [event(3, "done")])
    assert [e.type for e in await store.load_execution_events("x-1")] == [
        "execution.started",
        "step.scheduled",
        "done",
    ]
    final = await store.load_execution("x-1")
    assert final is not None
    assert (final.status, final.version) == ("completed", 2)


async def test_one_of_two_concurrent_saves_wins_and_only_its_events_are_kept(
    store: Store,
) -> None:
    await store.save_execution(execution(), 0, [])
    results = await asyncio.gather(
        store.save_execution(execution(status="completed"), 1, [event(1, "a")]),
        store.save_execution(execution(status="cancelled"), 1, [event(1, "b")]),
    )
    assert sorted(results) == [False, True]
    events = await store.load_execution_events("x-1")
    assert [e.type for e in events] == (["a"] if results[0] else ["b"])


async def test_listing_filtering_and_deleting_executions(store: Store) -> None:
    await store.save_execution(execution("x-1", created_at=3.0), 0, [event(1, exec_id="x-1")])
    await store.save_execution(execution("x-2", created_at=1.0, status="completed"), 0, [])
    await store.save_execution(execution("x-3", created_at=2.0, workflow="other"), 0, [])
    assert [e.id for e in await store.load_executions()] == ["x-2", "x-3", "x-1"]
    assert [e.id for e in await store.load_executions(status="running")] == ["x-3", "x-1"]
    assert [e.id for e in await store.load_executions(name="order", limit=1)] == ["x-2"]
    await store.delete_execution("x-1")
    assert await store.load_execution("x-1") is None
    assert await store.load_execution_events("x-1") == []
