"""Store contract: MemoryStore, SqliteStore and PostgresStore behave the same (ports.py)."""

from __future__ import annotations

from pathlib import Path

from fleetchat.backends.ports import Store
from fleetchat.backends.sqlite import SqliteDatabase
from fleetchat.backends.sqlite_store import SqliteStore
from fleetchat.models import AgentInfo, TokenRecord


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


def token(sha256: str, agent_id: str = "robot-1", **fields: object) -> TokenRecord:
    return TokenRecord(sha256=sha256, agent_id=agent_id, created_at=1_700_000_000.5, **fields)  # type: ignore[arg-type]


async def test_agent_with_nested_resources_round_trips(store: Store) -> None:
    saved = agent(resources={"arm": {"joints": [0.1, -2.5e-7, 3]}, "note": "naïve ✓"})

    await store.save_agent(saved)

    assert store.load_agents() == [saved]


async def test_load_tokens_of_an_empty_store_is_empty(store: Store) -> None:
    assert store.load_tokens() == []


async def test_saved_tokens_are_loaded_unchanged(store: Store) -> None:
    await store.save_token(token("aa", admin=True))
    await store.save_token(token("bb", "robot-2"))

    assert sorted(store.load_tokens(), key=lambda t: t.sha256) == [
        token("aa", admin=True),
        token("bb", "robot-2"),
    ]


async def test_saving_a_token_again_replaces_it(store: Store) -> None:
    await store.save_token(token("aa"))

    await store.save_token(token("aa", admin=True))

    assert store.load_tokens() == [token("aa", admin=True)]


async def test_delete_tokens_revokes_every_token_of_one_agent_and_counts_them(
    store: Store,
) -> None:
    await store.save_token(token("aa", "robot-1"))
    await store.save_token(token("bb", "robot-1"))
    await store.save_token(token("cc", "robot-2"))

    assert await store.delete_tokens("robot-1") == 2

    assert [t.sha256 for t in store.load_tokens()] == ["cc"]


async def test_delete_tokens_of_an_agent_without_tokens_is_zero(store: Store) -> None:
    await store.save_token(token("aa", "robot-1"))

    assert await store.delete_tokens("ghost") == 0
    assert [t.sha256 for t in store.load_tokens()] == ["aa"]


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
