"""A snapshot file: a fleetchat SQLite database plus a ``backup_manifest`` table
(docs/backups.md#the-file).

:class:`SnapshotFile` opens such a file (or any fleetchat SQLite database) through the SQLite
backend's log and store alone, without a hub's services: it is one end of a copy
(:class:`fleetchat.migration.Side`) and what digests are computed from. :func:`seal` writes the
manifest. Run as ``python -m fleetchat.ops.snapshot`` it copies a live SQLite hub's file
(``VACUUM INTO`` on a connection of its own: one consistent read, writers go on) and seals the
copy, in a process of its own so that none of the work holds the hub's event loop or its GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from fleetchat.backends.ports import CursorRecord
from fleetchat.backends.sqlite import SqliteDatabase, SqliteLog
from fleetchat.backends.sqlite_store import SqliteStore
from fleetchat.errors import BackendError, ChannelExistsError, InvalidInputError
from fleetchat.migration import Side
from fleetchat.models import Channel, Message
from fleetchat.ops.digest import TableDigest, state_digests

__all__ = [
    "FORMAT",
    "MANIFEST_TABLE",
    "Manifest",
    "SnapshotFile",
    "read_manifest",
    "redact_url",
    "seal",
    "vacuum_into",
]

FORMAT = 1
"""The version of the snapshot format this fleetchat writes and reads."""
MANIFEST_TABLE = "backup_manifest"
NOT_A_BACKUP = "not_a_backup"
"""``details["reason"]`` of the InvalidInputError for a file that is not a snapshot."""

_decode_digests = msgspec.json.Decoder(dict[str, TableDigest]).decode


class Manifest(msgspec.Struct, kw_only=True):
    """What a snapshot says about itself."""

    format: int
    fleetchat_version: str
    source_url: str
    """The hub it was taken from (a store URL's password is never written)."""
    taken_at: float
    digests: dict[str, TableDigest]

    @property
    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {name: d.rows for name, d in self.digests.items()}


class SnapshotFile:
    """A fleetchat SQLite file opened through the backend's log and store only.

    Reads go straight to the file; writes (a copy into a new snapshot) commit through the
    backend's writer, a page per transaction. Memberships made here start after the channel's
    newest message, as on a bus.
    """

    def __init__(self, path: str | Path) -> None:
        self.db = SqliteDatabase(path)
        self.log = SqliteLog(self.db)
        self.store = SqliteStore(self.db)
        self._channels: dict[str, Channel] = {}
        self._members: dict[str, list[str]] = {}

    async def start(self) -> None:
        await self.db.start()
        await self.store.start()
        self._channels = {c.name: c for c in self.log.load_channels()}
        for channel, member in self.log.load_members():
            self._members.setdefault(channel, []).append(member)

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> SnapshotFile:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def side(self) -> Side:
        """This file as one end of a copy or a digest."""
        return Side(self, self.store)

    # -- ChannelSide --------------------------------------------------------------------------

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def channel(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def members(self, channel: str) -> list[str]:
        return list(self._members.get(channel, ()))

    async def history(
        self, channel: str, *, start_seq: int | None = None, limit: int = 1000
    ) -> list[Message]:
        return self.log.history(
            channel, start_seq=start_seq, end_seq=None, since=None, until=None, limit=limit
        )

    async def create_channel(self, channel: Channel) -> Channel:
        if channel.name in self._channels:
            raise ChannelExistsError(f"channel {channel.name!r} exists", channel=channel.name)
        await self.log.save_channel(channel)
        self._channels[channel.name] = channel
        return channel

    async def publish(self, messages: list[Message], timeout: float) -> list[Message]:
        for m in messages:
            spec = self._channels[m.channel]
            spec.last_seq += 1
            m.seq = spec.last_seq
        await self.log.append(messages, timeout)
        return messages

    async def add_member(self, channel: str, member: str) -> bool:
        members = self._members.setdefault(channel, [])
        if member in members:
            return False
        floor = self._channels[channel].last_seq
        await self.log.add_member(channel, member, CursorRecord(member, channel, floor))
        members.append(member)
        return True


def vacuum_into(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database ``source`` in the new file ``target``.

    One read transaction on a connection of its own: in WAL mode the hub's writer goes on
    meanwhile. Blocking: run it in a thread or another process.
    """
    con = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        con.execute("PRAGMA busy_timeout=5000")
        con.execute("VACUUM INTO ?", (str(target),))
    except sqlite3.Error as exc:
        raise BackendError(f"cannot copy {source}: {exc}") from exc
    finally:
        con.close()


async def seal(path: Path, source_url: str, taken_at: float) -> Manifest:
    """Compute the digests of the snapshot file ``path``, write its manifest, sync it."""
    from fleetchat import __version__

    async with SnapshotFile(path) as snap:
        digests = await state_digests(snap.side())
    manifest = Manifest(
        format=FORMAT,
        fleetchat_version=__version__,
        source_url=" ".join(map(redact_url, source_url.split())),
        taken_at=taken_at,
        digests=digests,
    )
    row = msgspec.to_builtins(manifest)
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(f"CREATE TABLE {MANIFEST_TABLE} (key TEXT PRIMARY KEY, value TEXT)")
            con.executemany(
                f"INSERT INTO {MANIFEST_TABLE} VALUES (?, ?)",
                [(k, msgspec.json.encode(v).decode()) for k, v in row.items()],
            )
        con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        con.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return manifest


def read_manifest(path: Path) -> Manifest:
    """The manifest of the snapshot ``path``.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: not a snapshot (``details["reason"] == "not_a_backup"``), or one of
            a newer format.
    """
    from fleetchat.errors import NotFoundError

    if not path.is_file():
        raise NotFoundError(f"no such backup file {str(path)!r}", path=str(path))
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = dict(con.execute(f"SELECT key, value FROM {MANIFEST_TABLE}").fetchall())
        finally:
            con.close()
        raw = {k: msgspec.json.decode(v) for k, v in rows.items()}
        manifest = msgspec.convert(raw, Manifest)
    except (sqlite3.Error, msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInputError(
            f"{path} is not a fleetchat backup ({exc})", reason=NOT_A_BACKUP, path=str(path)
        ) from None
    if manifest.format > FORMAT:
        raise InvalidInputError(
            f"{path} is a backup of format {manifest.format}; this fleetchat reads {FORMAT}: "
            "upgrade fleetchat",
            reason="unsupported_format",
            path=str(path),
        )
    return manifest


def redact_url(url: str) -> str:
    """``url`` with its password, if any, as ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleetchat.ops.snapshot")
    parser.add_argument("target", type=Path, help="the snapshot file to write and seal")
    parser.add_argument("--copy-of", type=Path, help="a SQLite hub's file to copy first")
    parser.add_argument("--source-url", required=True)
    parser.add_argument("--taken-at", type=float, help="epoch seconds (default: now)")
    args = parser.parse_args(argv)
    taken_at = time.time() if args.taken_at is None else args.taken_at
    if args.copy_of is not None:
        vacuum_into(args.copy_of, args.target)
    manifest = asyncio.run(seal(args.target, args.source_url, taken_at))
    sys.stdout.write(msgspec.json.encode(manifest).decode() + "\n")


def _entry() -> Any:  # pragma: no cover - run in the snapshot's own process
    try:
        _main(sys.argv[1:])
    except Exception as exc:
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    _entry()
