"""``fleetchat migrate``: the command that copies a hub's data from one backend to another.

It opens the two hubs from URLs (``--from``, ``--to`` and their stores), runs
:func:`fleetchat.migration.migrate` with a progress bar and prints a summary (a table, or
``--json``). What is copied and what is not: see :mod:`fleetchat.migration` and docs/migrate.md.
:func:`migrate`, :class:`MigrationReport` and :class:`ChannelCopy` stay importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.progress import Progress as ProgressBar
from rich.progress import SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from fleetchat.errors import (
    ConfigError,
    ConflictError,
    FleetchatError,
    InvalidInputError,
    NotFoundError,
)
from fleetchat.migration import (
    PAGE_SIZE,
    TARGET_NOT_EMPTY,
    ChannelCopy,
    MigrationReport,
    Progress,
    migrate,
)

if TYPE_CHECKING:
    from fleetchat.config import HubSettings
    from fleetchat.hub import Hub

__all__ = ["ChannelCopy", "MigrationReport", "migrate", "register"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _hub_settings(config: Path | None, url: str, store: str | None, side: str) -> HubSettings:
    """Settings for one side: the config file and FLEETCHAT_* env, with this URL and store."""
    from fleetchat.config import load_settings
    from fleetchat.hub import parse_url

    kind, path = parse_url(url)
    if kind == "memory":
        raise ConfigError(
            f"--{side} memory:// holds nothing outside one process: give sqlite:///path.db or "
            "nats://host:4222"
        )
    if kind == "nats" and store is None and side == "to":
        raise ConfigError(
            "--to nats://... needs --to-store postgresql://...: without a store the agents "
            "and tokens would be lost"
        )
    if kind == "sqlite" and side == "from":
        assert path is not None
        if not path.is_file():
            raise NotFoundError(f"--from {url}: no such file {str(path)!r}", path=str(path))
    return replace(load_settings(config), url=url, store_url=store)


def _same(a: HubSettings, b: HubSettings) -> bool:
    from fleetchat.hub import parse_url

    (kind_a, path_a), (kind_b, path_b) = parse_url(a.url), parse_url(b.url)
    if kind_a == kind_b == "sqlite":
        assert path_a is not None
        assert path_b is not None
        return path_a.resolve() == path_b.resolve()
    return a.url == b.url


async def _run_migration(
    source: HubSettings,
    target: HubSettings,
    merge: bool,
    page_size: int,
    progress: Progress | None,
) -> MigrationReport:
    from fleetchat.hub import Hub

    async with contextlib.AsyncExitStack() as stack:
        hubs = []
        for settings in (source, target):
            hub = Hub(settings)
            stack.push_async_callback(_close, hub)
            await hub.start()
            hubs.append(hub)
        return await migrate(hubs[0], hubs[1], merge=merge, page_size=page_size, progress=progress)
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises


async def _close(hub: Hub) -> None:
    """Close a hub, started or not; a failure here must not hide the error that ended the run."""
    with contextlib.suppress(Exception):
        await hub.close()


def _fail(code: str, message: str, status: int) -> typer.Exit:
    err.print(Text.assemble(("error", "red"), f" [{code}] {message}"))
    return typer.Exit(status)


def _print_report(report: MigrationReport) -> None:
    table = Table("CHANNEL", "TYPE", "MESSAGES", "SKIPPED", "MEMBERS", "NOTES", box=None)
    for c in report.channels:
        notes = [n for n, on in (("ephemeral", c.ephemeral), ("existed", not c.created)) if on]
        table.add_row(
            c.name, c.type, str(c.messages), str(c.skipped), str(c.members), ", ".join(notes)
        )
    out.print(table)
    r = report
    skips = (r.messages_skipped, r.agents_skipped, r.tokens_skipped, r.tasks_skipped)
    skipped = (
        f" (skipped as already there: {r.messages_skipped} message(s), "
        f"{r.agents_skipped} agent(s), {r.tokens_skipped} token(s), {r.tasks_skipped} task(s), "
        f"{r.leases_skipped} lease(s))"
        if any(skips) or r.leases_skipped
        else ""
    )
    out.print(
        f"migrated {len(r.channels)} channel(s), {r.messages} message(s), "
        f"{r.memberships} membership(s), {r.agents} agent(s), {r.tokens} token(s), "
        f"{r.tasks} task(s), {r.leases} lease(s) in {r.seconds:.1f} s{skipped}"
    )


def migrate_command(
    from_: Annotated[
        str,
        typer.Option(
            "--from",
            help="The hub to copy from: sqlite:///hub.db or nats://host:4222.",
            show_default=False,
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The hub to copy to: nats://host:4222 or sqlite:///hub.db.",
            show_default=False,
        ),
    ],
    from_store: Annotated[
        str | None,
        typer.Option(
            "--from-store", help="With a nats:// source: its store, postgresql://user@host/db."
        ),
    ] = None,
    to_store: Annotated[
        str | None,
        typer.Option(
            "--to-store", help="With a nats:// target: its store, postgresql://user@host/db."
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="Add to a target that already has channels (or resume a migration); "
            "messages it holds are never copied twice.",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML settings for both hubs: the one your hub runs with (retention)."),
    ] = None,
    page_size: Annotated[int, typer.Option(help="Messages per read and write.", min=1)] = PAGE_SIZE,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    log_level: Annotated[str, typer.Option(help="Log level of the hubs' logs.")] = "error",
) -> None:
    """Copy a hub's channels, history, memberships, agents and tokens to another backend."""
    from fleetchat.hub import parse_url

    try:
        level = log_level.upper()
        if level not in logging.getLevelNamesMapping():
            raise InvalidInputError(
                f"--log-level {log_level!r}: use debug, info, warning or error", field="log_level"
            )
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        source = _hub_settings(config, from_, from_store, "from")
        target = _hub_settings(config, to, to_store, "to")
        if _same(source, target):
            raise InvalidInputError("--from and --to are the same hub")
        if parse_url(source.url)[0] == "nats" and from_store is None:
            err.print("note: no --from-store: the source's agents and tokens are not copied")
        with ProgressBar(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("[dim]{task.completed} message(s) copied"),
            console=err,
            transient=True,
            disable=json_ or not err.is_terminal,
        ) as bar:
            task = bar.add_task("opening the hubs", total=None)

            def show(what: str, copied: int) -> None:
                bar.update(task, description=f"copying {what}", completed=copied)

            report = _run(_run_migration(source, target, merge, page_size, show))
    except ConflictError as exc:
        status = 2 if exc.details.get("reason") == TARGET_NOT_EMPTY else 1
        raise _fail(exc.code, exc.message, status) from None
    except FleetchatError as exc:
        raise _fail(exc.code, exc.message, 1) from None
    except Exception as exc:  # never a traceback: one line, with what it was
        raise _fail("internal", f"{type(exc).__name__}: {exc or 'no detail'}", 1) from None
    if json_:
        sys.stdout.write(msgspec.json.encode(report.to_dict()).decode() + "\n")
    else:
        _print_report(report)


def _run(coro: Any) -> MigrationReport:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
        result: MigrationReport = asyncio.run(coro)
        return result
    report: MigrationReport = uvloop.run(coro)
    return report


def register(app: typer.Typer) -> None:
    """Add ``fleetchat migrate`` to the app."""
    app.command("migrate")(migrate_command)
