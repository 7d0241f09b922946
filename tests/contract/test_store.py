"""Store contract: MemoryStore and SqliteStore behave the same (see backends/ports.py)."""

from __future__ import annotations

from pathlib import Path

from fleetchat.backends.ports import Store
from fleetchat.backends.sqlite import SqliteDatabase
from fleetchat.backends.sqlite_store import SqliteStore
from fleetchat.models import AgentInfo


def agent(agent_id: str = "robot-1", **fields: object) -> AgentInfo:
    base: dict[str, object] = {
        "capabilities": {"nav": 0.9, "lift": 0.5},
        "capacity": 2,
        "performance": 0.7,
        "labels": {"site": "north"},
        "resources": {"battery": 0.8, "pos": [1.5, 2.0]},
        "registered_at": 1_700_000_000.0,
        "last_heartbeat": 1_700_000_001.0,
    }
    base.update(fields)
    return AgentInfo(id=agent_id, **base)  # type: ignore[arg-type]


async def test_load_agents_of_an_empty_store_is_empty(store: Store) -> None:
    assert store.load_agents() == []


async def test_saved_agent_is_loaded_unchanged(store: Store) -> None:
    await store.save_agent(agent())

    assert store.load_agents() == [agent()]


async def test_saving_an_agent_again_replaces_it(store: Store) -> None:
    await store.save_agent(agent(capacity=2))

    await store.save_agent(agent(capacity=7, draining=True))

    assert store.load_agents() == [agent(capacity=7, draining=True)]


async def test_store_holds_many_agents(store: Store) -> None:
    await store.save_agent(agent("robot-1"))
    await store.save_agent(agent("robot-2"))

    assert sorted(a.id for a in store.load_agents()) == ["robot-1", "robot-2"]


async def test_deleted_agent_is_gone(store: Store) -> None:
    await store.save_agent(agent("robot-1"))
    await store.save_agent(agent("robot-2"))

    await store.delete_agent("robot-1")

    assert [a.id for a in store.load_agents()] == ["robot-2"]


async def test_deleting_an_unknown_agent_is_a_no_op(store: Store) -> None:
    await store.save_agent(agent("robot-1"))

    await store.delete_agent("ghost")

    assert [a.id for a in store.load_agents()] == ["robot-1"]


async def test_sqlite_store_keeps_agents_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    db = SqliteDatabase(path)
    await db.start()
    store = SqliteStore(db)
    await store.save_agent(agent("robot-1"))
    await store.save_agent(agent("robot-2"))
    await store.delete_agent("robot-2")
    await db.close()

    db = SqliteDatabase(path)
    await db.start()
    try:
        assert SqliteStore(db).load_agents() == [agent("robot-1")]
    finally:
        await db.close()
