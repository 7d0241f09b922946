"""``fleetchat backup`` (take a snapshot, ``list`` them) and ``fleetchat restore FILE``.

``fleetchat backup`` asks a running hub (``--hub``, ``--token``: an admin token) to take a
snapshot now; with ``--db URL --out FILE`` it opens a stopped hub itself. ``fleetchat restore``
writes a snapshot into a new, empty hub (``--db``, and ``--store`` for a NATS hub) and checks
it table by table. Errors print as ``error [code] message`` with exit status 1.
See docs/backups.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from fleetchat.cli.remote import DEFAULT_HUB, HubOpt, JsonOpt, TokenOpt, _dump, _run, out
from fleetchat.errors import InvalidInputError

if TYPE_CHECKING:
    from fleetchat.ops.backup import BackupInfo
    from fleetchat.ops.restore import RestoreReport

__all__ = ["register"]

backup_app = typer.Typer(
    help="Take a snapshot of a hub's state now, or list the snapshots (docs/backups.md).",
    no_args_is_help=False,
)


def _size(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_backup(info: BackupInfo) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in info.counts.items())
    took = f" in {info.seconds:.2f} s" if info.seconds is not None else ""
    out.print(f"backup {info.file} ({_size(info.bytes)}){took}")
    out.print(f"  {counts}")


@backup_app.callback(invoke_without_command=True)
def backup(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(help="Back up this stopped hub instead (sqlite:///hub.db, nats://...)."),
    ] = None,
    store: Annotated[str | None, typer.Option(help="With a nats:// --db: its store.")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="With --db: the snapshot file to write.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="With --db: the hub's TOML settings.")] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Take a snapshot of a running hub's state now (POST /v1/backups, admin)."""
    if ctx.invoked_subcommand is not None:
        return

    async def main() -> BackupInfo:
        if db is not None:
            return await _offline(db, store, out_file, config)
        if out_file is not None:
            raise InvalidInputError(
                "--out goes with --db: a running hub writes to its backup directory", field="out"
            )
        from fleetchat.client import HubClient
        from fleetchat.ops.backup import BackupInfo

        async with HubClient(hub, token, timeout=3600.0) as rest:
            return await rest._call("POST", "/v1/backups", BackupInfo)

    info = _run(main)
    if json_:
        _dump(info)
    else:
        _print_backup(info)


async def _offline(
    url: str, store: str | None, target: Path | None, config: Path | None
) -> BackupInfo:
    from fleetchat.config import load_settings
    from fleetchat.hub import Hub

    if target is None:
        raise InvalidInputError("--db needs --out FILE: where to write the snapshot", field="out")
    logging.basicConfig(level=logging.ERROR)
    settings = replace(load_settings(config), url=url, store_url=store)
    async with Hub(settings) as hub:
        return await hub.ops.backups.backup(target)


@backup_app.command("list")
def list_backups(json_: JsonOpt = False, hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None) -> None:
    """List the snapshots in a running hub's backup directory (GET /v1/backups, admin)."""
    from fleetchat.server.schemas_backup import BackupList

    async def main() -> BackupList:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest._call("GET", "/v1/backups", BackupList)

    listing = _run(main)
    if json_:
        _dump(listing)
        return
    # The file's name is its UTC time: no column of its own.
    table = Table(Column("FILE", no_wrap=True), "SIZE", "MESSAGES", "TASKS", "EXECUTIONS", box=None)
    for b in listing.backups:
        counts = b.counts
        table.add_row(
            Path(b.file).name,
            _size(b.bytes),
            *(str(counts.get(k, 0)) for k in ("messages", "tasks", "executions")),
        )
    out.print(table)
    out.print(f"{len(listing.backups)} backup(s) in {listing.directory}")


def restore_command(
    file: Annotated[Path, typer.Argument(help="The snapshot file.", show_default=False)],
    db: Annotated[
        str,
        typer.Option(
            help="The new hub: sqlite:///new.db or nats://host:4222 (with --store).",
            show_default=False,
        ),
    ],
    store: Annotated[
        str | None, typer.Option(help="With a nats:// --db: its store, postgresql://...")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="The new hub's TOML settings.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Restore a snapshot into a new, empty, stopped hub, checked table by table."""

    async def main() -> RestoreReport:
        from fleetchat.config import load_settings
        from fleetchat.ops.restore import restore

        logging.basicConfig(level=logging.ERROR)
        settings = replace(load_settings(config), url=db, store_url=store)
        return await restore(file, settings)

    report = _run(main)
    if json_:
        _dump(report)
        return
    table = Table("TABLE", "ROWS", "SHA-256", "CHECK", box=None)
    for t in report.tables:
        table.add_row(t.table, str(t.rows), t.sha256[:16], "ok" if t.ok else "MISMATCH")
    out.print(table)
    out.print(
        f"restored {report.file} (taken {_when(report.taken_at)} from {report.source_url}) "
        f"into {report.target} in {report.seconds:.1f} s; every table matches"
    )


def register(app: typer.Typer) -> None:
    """Add ``fleetchat backup`` (and ``backup list``) and ``fleetchat restore`` to ``app``."""
    app.add_typer(backup_app, name="backup")
    app.command("restore")(restore_command)
