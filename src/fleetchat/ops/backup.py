"""Online snapshots of a hub's state (docs/backups.md); their restore is
:mod:`fleetchat.ops.restore`.

A snapshot is a fleetchat SQLite file with a manifest (:mod:`fleetchat.ops.snapshot`). Of a
SQLite hub it is a ``VACUUM INTO`` copy of the hub's file, made and sealed in a process of its
own: one consistent read while the hub's writer goes on. Of any other hub (NATS + PostgreSQL,
memory) the state is copied into a new file through the migration code, a page at a time with
the event loop free between pages, and sealed in that other process too. Either way the file
is written under a temporary name and renamed when complete: a snapshot is whole or absent.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import logging
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.background import Background
from fleetchat.errors import BackendError, FleetchatError
from fleetchat.migration import Side, copy_state
from fleetchat.ops.settings import BackupSettings
from fleetchat.ops.snapshot import Manifest, SnapshotFile, read_manifest

if TYPE_CHECKING:
    from fleetchat.hub import Hub

__all__ = ["PREFIX", "BackupInfo", "BackupService", "remove_database"]

log = logging.getLogger(__name__)

PREFIX = "fleetchat-"
"""Snapshot files are named ``fleetchat-<UTC time>.db``; retention counts only those."""
_DEFAULT_DIRECTORY = "fleetchat-backups"


class BackupInfo(msgspec.Struct, kw_only=True):
    """One snapshot file."""

    file: str
    bytes: int
    taken_at: float
    """Epoch seconds when the copy began."""
    source_url: str = ""
    counts: dict[str, int] = {}
    """Rows per table (channels, members, messages, agents, tokens, tasks, leases, definitions,
    executions, events)."""
    seconds: float | None = None
    """How long it took (a snapshot just taken)."""

    @classmethod
    def of(cls, path: Path, manifest: Manifest, seconds: float | None = None) -> BackupInfo:
        return cls(
            file=str(path),
            bytes=path.stat().st_size,
            taken_at=manifest.taken_at,
            source_url=manifest.source_url,
            counts=manifest.counts,
            seconds=seconds,
        )


def remove_database(path: Path) -> None:
    """Delete a SQLite file and its ``-wal`` / ``-shm`` companions, if there."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class BackupService:
    """Takes a snapshot every ``interval`` on the leader; :meth:`backup` takes one now.

    Periodic snapshots go to ``settings.directory`` (default: ``<database>.backups`` beside a
    SQLite hub's file, ``fleetchat-backups`` for a distributed hub; a memory hub takes none
    unless a directory is set); the ``keep`` newest are kept. Every snapshot is recorded on
    ``$ops`` (type ``backup``) and every failure raises an alert on ``$alerts``
    (``backup_failed``).
    """

    def __init__(self, hub: Hub, settings: BackupSettings) -> None:
        self._hub = hub
        self.settings = settings
        self._loop_task: asyncio.Task[None] | None = None
        # Every task of this service (the loop, snapshots), until done: close() awaits them.
        self._tasks = Background()
        self._lock = asyncio.Lock()
        self._open = False

    @property
    def directory(self) -> Path | None:
        """Where periodic snapshots go; None: a memory hub without a directory set."""
        from fleetchat.hub import parse_url

        if self.settings.directory:
            return Path(self.settings.directory)
        kind, path = parse_url(self._hub.settings.url)
        if kind == "sqlite":
            assert path is not None
            return path.with_name(path.name + ".backups")
        return Path(_DEFAULT_DIRECTORY) if kind == "nats" else None

    @property
    def location(self) -> Path:
        """Where a snapshot taken now goes: :attr:`directory`, else ``fleetchat-backups``."""
        return self.directory or Path(_DEFAULT_DIRECTORY)

    async def start(self) -> None:
        """Called once the hub's services are open (every node)."""
        self._open = True

    def lead(self, leading: bool) -> None:
        """Start (or stop) the periodic snapshots."""
        if leading and self._open and self._loop_task is None:
            self._loop_task = self._spawn(self._loop(), "backup-loop")
        elif not leading and self._loop_task is not None:
            self._loop_task.cancel()
            self._loop_task = None

    async def close(self) -> None:
        """Stop the loop; a snapshot being written is abandoned and its file removed."""
        self._open = False
        self._loop_task = None
        await self._tasks.cancel()

    def reconfigure(self, settings: BackupSettings) -> None:
        """New settings; a new interval counts from the end of the current wait."""
        self.settings = settings

    async def backup(self, target: Path | None = None) -> BackupInfo:
        """Take a snapshot now (one at a time) and return what it wrote.

        Args:
            target: the file to write; default a new ``fleetchat-<time>.db`` in
                :attr:`directory` (then the oldest beyond ``keep`` are deleted).

        Raises:
            BackendError: the copy failed (nothing is left of it); an alert was raised.
        """
        job = self._spawn(self._take(target), "backup")
        try:
            result: BackupInfo = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.cancel()  # the caller gave up: abandon the snapshot
            raise
        return result

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    async def list(self) -> builtins.list[BackupInfo]:
        """The snapshots in :attr:`directory`, oldest first (unreadable files left out)."""
        return await asyncio.to_thread(self._list)

    def _list(self) -> builtins.list[BackupInfo]:
        out = []
        for path in self._files():
            try:
                out.append(BackupInfo.of(path, read_manifest(path)))
            except (FleetchatError, OSError) as exc:
                log.warning("unreadable backup file", extra={"path": str(path), "error": exc})
        return out

    def _files(self) -> builtins.list[Path]:
        directory = self.location
        if not directory.is_dir():
            return []
        return sorted(directory.glob(f"{PREFIX}*.db"))

    # -- the work -------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._hub.clock.sleep(self.settings.interval)
            if not self.settings.enabled or self.directory is None:
                continue
            try:
                await self.backup()
            except Exception:  # alerted by backup(); try again next time
                log.debug("periodic backup failed", exc_info=True)

    async def _take(self, target: Path | None) -> BackupInfo:
        async with self._lock:
            started = time.monotonic()
            where = str(target or self.location)
            try:
                path = await asyncio.to_thread(self._new_name) if target is None else target
                where = str(path)
                async with asyncio.timeout(self.settings.timeout):
                    manifest = await self._write(path)
                info = BackupInfo.of(path, manifest, time.monotonic() - started)
            except Exception as exc:
                error = exc if isinstance(exc, FleetchatError) else None
                message = error.message if error else f"{type(exc).__name__}: {exc}"
                await self._hub.ops.journal.alert(
                    "backup_failed", f"backup failed: {message}", file=where
                )
                if isinstance(exc, TimeoutError):
                    raise BackendError(
                        f"the backup took more than {self.settings.timeout:g} s; abandoned"
                    ) from None
                if error is not None:
                    raise
                raise BackendError(f"backup failed: {message}") from exc
            if target is None:
                await asyncio.to_thread(self._prune)
            record = msgspec.to_builtins(info)
            await self._hub.ops.journal.record("backup", record)
            log.info("backup taken", extra={"file": info.file, "bytes": info.bytes})
            return info

    def _new_name(self) -> Path:
        directory = self.location
        directory.mkdir(parents=True, exist_ok=True)
        # Named by the wall clock (an injected test clock may stand still): names sort by time.
        at = dt.datetime.fromtimestamp(time.time(), dt.UTC)
        stem = f"{PREFIX}{at:%Y%m%dT%H%M%S.%fZ}"
        path, n = directory / f"{stem}.db", 0
        while path.exists():
            n += 1
            path = directory / f"{stem}-{n}.db"
        return path

    async def _write(self, path: Path) -> Manifest:
        """Write the snapshot under a temporary name, then rename it to ``path``."""
        from fleetchat.hub import parse_url

        hub = self._hub
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        remove_database(temp)
        kind, db = parse_url(hub.settings.url)
        try:
            if kind == "sqlite":
                assert db is not None
                source = await asyncio.to_thread(db.resolve)
                manifest = await _seal(temp, hub.settings.url, hub.clock.time(), copy_of=source)
            else:
                taken_at = hub.clock.time()
                async with SnapshotFile(temp) as snap:
                    await copy_state(Side.of(hub), snap.side())
                manifest = await _seal(temp, _source_url(hub), taken_at)
            temp.replace(path)
        finally:
            remove_database(temp)
        return manifest

    def _prune(self) -> None:
        files = self._files()
        for old in files[: max(0, len(files) - self.settings.keep)]:
            remove_database(old)
            log.info("old backup deleted", extra={"file": str(old)})


def _source_url(hub: Hub) -> str:
    store = hub.settings.store_url
    return f"{hub.settings.url} {store}" if store else hub.settings.url


async def _seal(
    temp: Path, source_url: str, taken_at: float, *, copy_of: Path | None = None
) -> Manifest:
    """Run ``python -m fleetchat.ops.snapshot``: copy ``copy_of`` (if given) into ``temp`` and
    seal it, in a process of its own; killed if the caller is cancelled."""
    args = [str(temp), "--source-url", source_url, "--taken-at", repr(taken_at)]
    if copy_of is not None:
        args += ["--copy-of", str(copy_of)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetchat.ops.snapshot",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise BackendError(f"the snapshot failed: {detail[-1] if detail else proc.returncode}")
    return msgspec.json.decode(out, type=Manifest)
