"""Store contract, lease resources: compare-and-set records on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from fleetchat.backends.ports import Store
from fleetchat.backends.sqlite import SqliteDatabase
from fleetchat.backends.sqlite_store import SqliteStore
from fleetchat.leases.state import Resource, Waiter


def dock(**fields: object) -> Resource:
    base: dict[str, object] = {"name": "dock-1", "token": 3, "holder": "amr-1", "ticket": "t1"}
    base.update(fields)
    return Resource(**base)  # type: ignore[arg-type]


def waiter(holder: str) -> Waiter:
    return Waiter(
        ticket=f"w-{holder}",
        holder=holder,
        priority="high",
        requested_at=1.5,
        deadline=9.25,
        ttl=30,
    )


async def test_an_unknown_resource_loads_as_none(store: Store) -> None:
    assert await store.load_resource("dock-1") is None
    assert await store.load_resources() == []


async def test_a_new_resource_is_saved_from_version_0_and_loads_as_version_1(
    store: Store,
) -> None:
    saved = dock(waiters=(waiter("amr-2"), waiter("amr-3")), expires_at=1_700_000_030.5)

    assert await store.save_resource(saved, 0)

    assert await store.load_resource("dock-1") == msgspec.structs.replace(saved, version=1)


async def test_saving_from_the_current_version_bumps_it(store: Store) -> None:
    await store.save_resource(dock(), 0)

    assert await store.save_resource(dock(token=4, holder="amr-2"), 1)

    loaded = await store.load_resource("dock-1")
    assert loaded is not None
    assert (loaded.version, loaded.token, loaded.holder) == (2, 4, "amr-2")


async def test_saving_from_a_stale_version_is_refused_and_changes_nothing(store: Store) -> None:
    await store.save_resource(dock(), 0)
    await store.save_resource(dock(token=4), 1)

    assert not await store.save_resource(dock(token=99), 1)
    assert not await store.save_resource(dock(token=99), 0)

    loaded = await store.load_resource("dock-1")
    assert loaded is not None
    assert (loaded.version, loaded.token) == (2, 4)


async def test_saving_a_missing_resource_from_a_later_version_is_refused(store: Store) -> None:
    assert not await store.save_resource(dock(), 5)

    assert await store.load_resource("dock-1") is None


async def test_of_two_saves_from_one_version_exactly_one_wins(store: Store) -> None:
    await store.save_resource(dock(), 0)

    results = await asyncio.gather(
        store.save_resource(dock(holder="amr-2"), 1), store.save_resource(dock(holder="amr-3"), 1)
    )

    assert sorted(results) == [False, True]
    loaded = await store.load_resource("dock-1")
    assert loaded is not None
    assert loaded.holder == ("amr-2" if results[0] else "amr-3")


async def test_load_resources_returns_every_record(store: Store) -> None:
    await store.save_resource(dock(name="door"), 0)
    await store.save_resource(dock(name="dock-1"), 0)
    await store.save_resource(dock(name="door", token=9), 1)

    found = await store.load_resources()

    assert sorted((r.name, r.version, r.token) for r in found) == [
        ("dock-1", 1, 3),
        ("door", 2, 9),
    ]


async def test_sqlite_store_keeps_resources_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    db = SqliteDatabase(path)
    await db.start()
    store = SqliteStore(db)
    await store.start()
    await store.save_resource(dock(), 0)
    await db.close()

    db = SqliteDatabase(path)
    await db.start()
    try:
        reopened = SqliteStore(db)
        await reopened.start()
        assert await reopened.load_resource("dock-1") == msgspec.structs.replace(dock(), version=1)
    finally:
        await db.close()
