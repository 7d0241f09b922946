"""Backups and restores with real parts: SQLite files, snapshot processes, a nats-server and
PostgreSQL. Restored hubs are compared table by table with the hub they came from (raw SQLite
rows, not only the digests the restore checks itself), then opened and read."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fleetchat import (
    ConflictError,
    FleetchatError,
    Hub,
    HubSettings,
    InvalidInputError,
    NotFoundError,
)
from fleetchat.migration import Side
from fleetchat.ops.digest import HUB_CHANNELS, state_digests
from fleetchat.ops.restore import restore
from fleetchat.ops.settings import BackupSettings
from fleetchat.ops.snapshot import SnapshotFile, read_manifest
from fleetchat.testing import assert_eventually
from fleetchat.testing.clock import FakeClock
from fleetchat.testing.services import NatsServer
from tests.integration.test_migrate import fill, tables

WAITING = {
    "schema": "fleetchat.workflow/v1",
    "name": "night-shift",
    "version": "1.0.0",
    "steps": [
        {"id": "rest", "type": "wait", "duration": "1h"},
        {"id": "done", "type": "succeed", "output": {"slept": True}},
    ],
}
QUICK = {
    "schema": "fleetchat.workflow/v1",
    "name": "greet",
    "version": "2.1.0",
    "steps": [{"id": "done", "type": "succeed", "output": "${input}"}],
}


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


async def fill_all(hub: Hub) -> dict[str, str]:
    """Everything ``fill`` makes (channels, history, members, agents, tokens, tasks, a lease)
    plus workflow definitions (one deprecated) and executions, running and finished."""
    await fill(hub, bulk=30)
    await hub.workflows.register(WAITING)
    await hub.workflows.register(QUICK)
    waiting = await hub.workflows.start("night-shift", {"bay": 3})
    quick = await hub.workflows.start("greet", {"to": "cell-1"}, version="2.1.0")
    await hub.workflows.wait(quick.id, timeout=10.0)
    await hub.workflows.deprecate("greet", "2.1.0")
    return {"waiting": waiting.id, "quick": quick.id}


def workflow_tables(db: Path) -> dict[str, Any]:
    """The workflow tables, versions aside."""
    con = sqlite3.connect(db)
    try:
        return {
            "definitions": sorted(
                (n, v, msgspec.json.decode(d))
                for n, v, d in con.execute("SELECT name, version, data FROM workflow_definitions")
            ),
            "executions": {
                i: _versionless(d) for i, d in con.execute("SELECT id, data FROM executions")
            },
            "events": sorted(
                (e, s, msgspec.json.decode(d))
                for e, s, d in con.execute("SELECT * FROM execution_events")
            ),
        }
    finally:
        con.close()


def _versionless(data: bytes) -> Any:
    record = msgspec.json.decode(data)
    record.pop("version", None)
    return record


def comparable(db: Path) -> dict[str, Any]:
    """``tables(db)`` with the channels each hub makes for itself by name and type only (each
    backend makes them its own way: NATS's ``$dlq`` has no writers list)."""
    state = tables(db)
    for name in HUB_CHANNELS:
        if name in state["channels"]:
            state["channels"][name] = {"type": state["channels"][name]["type"]}
    return state


def state_before_record(db: Path) -> dict[str, Any]:
    """``comparable(db)`` without the ``backup`` records posted on ``$ops`` after a snapshot."""
    state = comparable(db)
    ops = state["messages"].get("$ops", [])
    state["messages"]["$ops"] = [m for m in ops if m["body"].get("type") != "backup"]
    if not state["messages"]["$ops"]:
        del state["messages"]["$ops"]
    return state


async def file_digests(path: Path) -> dict[str, Any]:
    async with SnapshotFile(path) as snap:
        return await state_digests(snap.side())


async def _filled(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    db = tmp_path / "source.db"
    async with Hub.open(_url(db)) as hub:
        ids = await fill_all(hub)
    return db, ids


async def test_a_sqlite_backup_restores_into_a_fresh_hub_with_the_same_state(
    tmp_path: Path,
) -> None:
    db, ids = await _filled(tmp_path)
    # A frozen clock: nothing timed (heartbeats, leases, timers) changes the state meanwhile.
    async with Hub.open(_url(db), clock=FakeClock()) as hub:
        live = await state_digests(Side.of(hub))
        info = await hub.ops.backups.backup()
    file = Path(info.file)
    assert file.parent == tmp_path / "source.db.backups"
    assert info.counts["messages"] == live["messages"].rows > 30
    assert read_manifest(file).digests == live
    target = tmp_path / "restored.db"
    report = await restore(file, HubSettings(url=_url(target)))
    assert [t.table for t in report.tables][:3] == ["channels", "members", "messages"]
    assert all(t.ok for t in report.tables)
    assert {t.table: t.rows for t in report.tables} == info.counts
    assert comparable(target) == state_before_record(db)
    assert workflow_tables(target) == workflow_tables(db)
    assert await file_digests(target) == live
    with sqlite3.connect(target) as con:  # the manifest stays with the backup
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    assert "backup_manifest" not in names
    async with Hub.open(_url(target), clock=FakeClock()) as restored:
        history = await restored.channels.history("cell-1", limit=1000)
        first = next(m for m in history if m.sender == "planner")
        assert first.body == {"pick": "bin-7", "at": [1.5, -2.25], "note": "größer ✓"}
        assert restored.channels.members("alerts") == ["arm-1", "cam-1"]
        assert (await restored.leases.get("dock-1")).holder == "arm-1"
        done = await restored.tasks.find_by_key("o-1")
        assert done is not None
        assert done.state == "succeeded"
        assert (await restored.workflows.get(ids["quick"])).output == {"to": "cell-1"}
        assert (await restored.workflows.get(ids["waiting"])).status == "running"
        assert (await restored.workflows.resolve("greet", "2.1.0")).deprecated


async def test_a_distributed_hub_is_restored_from_and_backed_up_to_sqlite(
    tmp_path: Path, nats_server: NatsServer, postgres_url: str
) -> None:
    db, ids = await _filled(tmp_path)
    async with Hub.open(_url(db), clock=FakeClock()) as hub:
        first = Path((await hub.ops.backups.backup(tmp_path / "first.db")).file)
    distributed = HubSettings(url=nats_server.url, store_url=postgres_url)
    there = await restore(first, distributed)
    assert all(t.ok for t in there.tables)
    async with Hub(distributed) as hub:
        assert hub.ops.backups.directory == Path("fleetchat-backups")
        second = await hub.ops.backups.backup(tmp_path / "second.db")
        assert (await hub.workflows.get(ids["waiting"])).status == "running"
    assert read_manifest(Path(second.file)).source_url.startswith(nats_server.url)
    assert read_manifest(Path(second.file)).digests == read_manifest(first).digests
    back = tmp_path / "back.db"
    await restore(Path(second.file), HubSettings(url=_url(back)))
    assert comparable(back) == state_before_record(db)  # every field but seqs, in channel order
    assert workflow_tables(back) == workflow_tables(db)


async def test_a_backup_taken_while_publishing_holds_a_consistent_prefix_and_loses_nothing(
    tmp_path: Path,
) -> None:
    import asyncio

    db = tmp_path / "busy.db"
    acked: list[str] = []
    async with Hub.open(_url(db)) as hub:
        await hub.channels.create("stream", announce=False)
        stop = asyncio.Event()

        going = asyncio.Event()

        async def publish() -> None:
            n = 0
            while not stop.is_set():
                acked.append((await hub.publish("stream", n, sender="p")).id)
                n += 1
                if n == 300:
                    going.set()

        publisher = asyncio.create_task(publish())
        await asyncio.wait_for(going.wait(), 10.0)
        before = list(acked)
        info = await hub.ops.backups.backup()
        stop.set()
        await publisher
        after = len(acked)
        assert after > len(before)  # publishing went on during the backup
        kept = await hub.channels.history("stream", limit=1000, tail=True)
        assert kept[-1].id == acked[-1]
    async with SnapshotFile(info.file) as snap:
        copied = []
        start = 1
        while page := await snap.history("stream", start_seq=start, limit=1000):
            copied.extend(page)
            start = page[-1].seq + 1
    assert [m.seq for m in copied] == list(range(1, len(copied) + 1))  # no gap
    assert [m.id for m in copied] == acked[: len(copied)]  # a prefix of what was acked
    assert len(copied) >= len(before)  # everything acked before the backup began
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM messages WHERE channel='stream'").fetchone() == (
            after,
        )


async def test_a_tampered_backup_is_refused_and_nothing_is_restored(tmp_path: Path) -> None:
    db, _ = await _filled(tmp_path)
    async with Hub.open(_url(db), clock=FakeClock()) as hub:
        info = await hub.ops.backups.backup()
    with sqlite3.connect(info.file) as con:
        con.execute("UPDATE agents SET data = replace(data, '0.9', '1.0')")
    target = tmp_path / "restored.db"
    with pytest.raises(InvalidInputError) as refused:
        await restore(Path(info.file), HubSettings(url=_url(target)))
    assert refused.value.details["reason"] == "digest_mismatch"
    assert refused.value.details["tables"] == "agents"
    assert sorted(os.listdir(tmp_path)) == ["source.db", "source.db.backups"]


async def test_what_is_not_a_backup_is_refused_with_a_typed_error(tmp_path: Path) -> None:
    db, _ = await _filled(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    target = HubSettings(url=_url(tmp_path / "t.db"))
    for path in (db, text):  # a hub's own file has no manifest
        with pytest.raises(InvalidInputError) as refused:
            await restore(path, target)
        assert refused.value.details["reason"] == "not_a_backup"
    with pytest.raises(NotFoundError):
        await restore(tmp_path / "missing.db", target)
    assert not (tmp_path / "t.db").exists()


async def test_a_target_with_data_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    db, _ = await _filled(tmp_path)
    async with Hub.open(_url(db), clock=FakeClock()) as hub:
        info = await hub.ops.backups.backup()
    busy = tmp_path / "busy.db"
    async with Hub.open(_url(busy)) as hub:
        await hub.channels.create("mine", announce=False)
    before = tables(busy)
    with pytest.raises(ConflictError, match="not empty") as refused:
        await restore(Path(info.file), HubSettings(url=_url(busy)))
    assert refused.value.details["reason"] == "target_not_empty"
    assert tables(busy) == before
    empty = tmp_path / "empty.db"
    async with Hub.open(_url(empty)):
        pass  # a hub that ran once, with nothing in it, is a fine target
    await restore(Path(info.file), HubSettings(url=_url(empty)))
    assert comparable(empty) == state_before_record(db)


async def test_retention_keeps_the_newest_snapshots(tmp_path: Path) -> None:
    base = HubSettings(url="memory://")
    config = replace(base, backup=BackupSettings(directory=str(tmp_path / "b"), keep=2))
    async with Hub(config, clock=FakeClock()) as hub:
        await hub.channels.create("c", announce=False)
        taken = []
        for i in range(4):
            await hub.publish("c", i, sender="x")
            taken.append((await hub.ops.backups.backup()).file)
        listed = await hub.ops.backups.list()
    assert [b.file for b in listed] == taken[2:]
    assert sorted(str(p) for p in (tmp_path / "b").iterdir()) == taken[2:]
    async with SnapshotFile(listed[-1].file) as newest:
        assert [m.body for m in await newest.history("c")] == [0, 1, 2, 3]


async def test_the_leader_takes_snapshots_every_interval_and_records_them_on_ops(
    tmp_path: Path,
) -> None:
    db = tmp_path / "hub.db"
    config = replace(HubSettings(url=_url(db)), backup=BackupSettings(interval=0.3, keep=2))
    async with Hub(config) as hub:
        assert not (tmp_path / "hub.db.backups").exists()  # the first after one interval
        await hub.channels.create("c", announce=False)
        await hub.publish("c", "x", sender="a")

        async def three() -> list[dict[str, Any]]:
            records = await hub.ops.journal.read(kind="backup")
            assert len(records) >= 3
            return records

        await assert_eventually(three, timeout=20.0)
        records = await three()
    assert all(r["counts"]["messages"] >= 1 for r in records)
    assert all(r["bytes"] > 0 and r["seconds"] > 0 for r in records)
    kept = sorted(os.listdir(tmp_path / "hub.db.backups"))
    assert len(kept) == 2  # keep=2; nothing half-written left behind
    assert [Path(r["file"]).name for r in records[-2:]] == kept


async def test_a_failing_snapshot_raises_an_alert_and_the_loop_goes_on(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    backup = BackupSettings(interval=0.2, directory=str(blocked / "sub"))
    async with Hub(replace(HubSettings(url="memory://"), backup=backup)) as hub:

        async def two() -> list[dict[str, Any]]:
            alerts = await hub.ops.journal.read("$alerts", kind="backup_failed")
            assert len(alerts) >= 2
            return alerts

        await assert_eventually(two, timeout=20.0)
        alerts = await two()
        assert "backup failed" in alerts[0]["message"]
        with pytest.raises(FleetchatError):
            await hub.ops.backups.backup()
        assert await hub.ops.journal.read(kind="backup") == []
