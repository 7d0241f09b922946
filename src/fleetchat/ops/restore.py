"""Restoring a snapshot into a fresh hub: what ``fleetchat restore`` runs (docs/backups.md).

The target is written through its backends only (no hub services run: no scheduler, sweeper
or engine can change what is being restored), and then checked table by table against the
snapshot's manifest.

- A SQLite target gets a copy of the snapshot file itself (written beside it under a
  temporary name, checked, then renamed into place): every row as it was, cursors included.
- A NATS + PostgreSQL target: the snapshot is checked first, then copied through the migration
  code (:func:`fleetchat.migration.copy_state`), then the target is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from fleetchat.errors import BackendError, ConfigError, ConflictError, InvalidInputError
from fleetchat.migration import TARGET_NOT_EMPTY, Progress, Side, copy_state, refresh_store
from fleetchat.ops.backup import remove_database
from fleetchat.ops.digest import TABLES, TableDigest, compare, state_digests
from fleetchat.ops.snapshot import MANIFEST_TABLE, Manifest, SnapshotFile, read_manifest

if TYPE_CHECKING:
    from fleetchat.config import HubSettings

__all__ = ["DIGEST_MISMATCH", "RestoreReport", "TableCheck", "restore", "verify"]

DIGEST_MISMATCH = "digest_mismatch"
"""``details["reason"]`` of the error for content that does not match the manifest."""


class TableCheck(msgspec.Struct, kw_only=True):
    """One table of a restore: rows and digest as restored, and whether they match."""

    table: str
    rows: int
    sha256: str
    ok: bool


class RestoreReport(msgspec.Struct, kw_only=True):
    """The outcome of :func:`restore`."""

    file: str
    target: str
    taken_at: float
    source_url: str
    tables: list[TableCheck]
    seconds: float


async def verify(side: Side, manifest: Manifest, what: str) -> list[TableCheck]:
    """Check ``side``'s digests against ``manifest``, table by table.

    Raises:
        InvalidInputError: a table differs (``details["reason"] == "digest_mismatch"``,
            ``details["tables"]`` names them).
    """
    actual = await state_digests(side)
    wrong = compare(manifest.digests, actual)
    if wrong:
        raise InvalidInputError(
            f"{what} does not match the backup's manifest: table(s) {', '.join(wrong)} differ",
            reason=DIGEST_MISMATCH,
            tables=",".join(wrong),
        )
    missing = TableDigest(rows=0, sha256="")
    return [
        TableCheck(table=name, rows=d.rows, sha256=d.sha256, ok=True)
        for name, d in ((n, actual.get(n, missing)) for n in TABLES)
    ]


async def restore(
    file: Path, settings: HubSettings, *, progress: Progress | None = None
) -> RestoreReport:
    """Restore the snapshot ``file`` into the empty, stopped hub of ``settings``.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: not a backup (``reason`` ``not_a_backup``), or its content does not
            match its manifest (``digest_mismatch``); nothing was written.
        ConfigError: a memory target, or a NATS target without a store.
        ConflictError: the target holds data (``reason`` ``target_not_empty``); nothing written.
        BackendError: a backend failed, or the restored NATS + PostgreSQL hub does not match
            the manifest (``reason`` ``digest_mismatch``).
    """
    from fleetchat.hub import parse_url

    started = time.monotonic()
    manifest = read_manifest(file)
    kind, path = parse_url(settings.url)
    if kind == "memory":
        raise ConfigError("restore into memory:// keeps nothing: give sqlite:///path.db")
    if kind == "sqlite":
        assert path is not None
        tables = await _restore_file(file, path, manifest)
    else:
        if not settings.store_url:
            raise ConfigError(
                "a nats:// target needs its store (--store postgresql://...): the agents, "
                "tasks and workflows would be lost otherwise"
            )
        tables = await _restore_distributed(file, settings, manifest, progress)
    return RestoreReport(
        file=str(file),
        target=settings.url,
        taken_at=manifest.taken_at,
        source_url=manifest.source_url,
        tables=tables,
        seconds=time.monotonic() - started,
    )


async def _check_empty(side: Side, target: str) -> None:
    channels = [c.name for c in side.bus.channels() if not c.name.startswith("$")]
    await refresh_store(side.store)
    held = {
        "channel(s)": len(channels),
        "agent(s)": len(side.store.load_agents()),
        "task(s)": len(await side.store.load_tasks(limit=1)),
        "workflow(s)": len(await side.store.load_definitions()),
    }
    if any(held.values()):
        what = ", ".join(f"{n} {k}" for k, n in held.items() if n)
        raise ConflictError(
            f"{target} is not empty ({what}); restore into a new, empty hub",
            reason=TARGET_NOT_EMPTY,
        )


async def _restore_file(file: Path, path: Path, manifest: Manifest) -> list[TableCheck]:
    target = f"sqlite:///{path}"
    if await asyncio.to_thread(path.exists):
        async with SnapshotFile(path) as existing:
            await _check_empty(existing.side(), target)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.restore")
    remove_database(temp)
    try:
        _copy_database(file, temp)
        async with SnapshotFile(temp) as snap:
            tables = await verify(snap.side(), manifest, str(file))
        remove_database(path)  # an empty hub's file (checked above)
        temp.replace(path)
    finally:
        remove_database(temp)
    return tables


def _copy_database(file: Path, temp: Path) -> None:
    """``file`` copied page by page into ``temp``, without its manifest."""
    source = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    copy = sqlite3.connect(temp)
    try:
        source.backup(copy)
        copy.execute(f"DROP TABLE IF EXISTS {MANIFEST_TABLE}")
        copy.commit()
    except sqlite3.Error as exc:
        raise BackendError(f"cannot copy {file}: {exc}") from exc
    finally:
        copy.close()
        source.close()


async def _restore_distributed(
    file: Path, settings: HubSettings, manifest: Manifest, progress: Progress | None
) -> list[TableCheck]:
    with tempfile.TemporaryDirectory(prefix="fleetchat-restore-") as scratch:
        # A copy to read from: opening a file as a hub's database writes to it.
        copy = Path(scratch) / "snapshot.db"
        shutil.copyfile(file, copy)
        async with SnapshotFile(copy) as snap:
            await verify(snap.side(), manifest, str(file))
            async with _distributed_side(settings) as target:
                await _check_empty(target, settings.url)
                await copy_state(snap.side(), target, progress=progress)
                try:
                    return await verify(target, manifest, f"the restored hub {settings.url}")
                except InvalidInputError as exc:
                    raise BackendError(exc.message, **exc.details) from None


@contextlib.asynccontextmanager
async def _distributed_side(settings: HubSettings) -> AsyncIterator[Side]:
    """The bus and store of a NATS + PostgreSQL hub, started without the hub's services."""
    from fleetchat.backends.nats_bus import NatsBus
    from fleetchat.backends.postgres import PostgresDatabase, PostgresStore
    from fleetchat.chat.metrics import DeliveryMetrics
    from fleetchat.types import SystemClock

    assert settings.store_url is not None
    clock = SystemClock()
    bus = NatsBus(
        settings.url, clock=clock, observer=DeliveryMetrics(clock), settings=settings.chat
    )
    db = PostgresDatabase(settings.store_url)
    store = PostgresStore(db)
    async with contextlib.AsyncExitStack() as stack:
        await db.start()
        stack.push_async_callback(db.close)
        await store.start()
        stack.push_async_callback(store.close)
        await bus.start()
        stack.push_async_callback(bus.close)
        yield Side(bus, store, settings.chat.publish_timeout)
