"""``fleetchat health``, ``fleetchat events``, ``fleetchat alerts`` and ``fleetchat config``
(show, reload, set): operations on a running hub over REST (docs/operations.md).

Like the other remote commands: ``--hub`` (env ``FLEETCHAT_HUB``), ``--token`` (env
``FLEETCHAT_TOKEN``), ``--json``; errors print as ``error [code] message`` with exit 1.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from fleetchat.cli.remote import DEFAULT_HUB, PANEL, HubOpt, JsonOpt, TokenOpt, _dump, _run, out

__all__ = ["register"]

_STATUS = {"ok": "green", "warn": "yellow", "fail": "bold red"}

config_app = typer.Typer(
    help="The running hub's settings: show them, reload the file, change some live.",
    no_args_is_help=True,
)


def _when(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%H:%M:%S", time.localtime(ts))


def health(
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Every health check of the hub; exit status 2 when one fails."""

    async def main() -> Any:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.ops.health()

    report = _run(main)
    if json_:
        _dump(report)
    else:
        colour = _STATUS[report.status]
        lead = "leader" if report.leader else "follower"
        out.print(f"[{colour}]{report.status}[/{colour}]  node {report.node} ({lead})")
        if report.degraded:
            out.print(f"[bold red]degraded[/bold red]: {report.degraded}")
        table = Table("CHECK", "STATUS", "DETAIL", "WHICH", box=None)
        for c in report.checks:
            style = _STATUS[c.status]
            table.add_row(c.name, f"[{style}]{c.status}[/{style}]", c.message, ", ".join(c.items))
        out.print(table)
    if report.status == "fail":
        raise typer.Exit(2)


def events(
    type_: Annotated[
        str | None,
        typer.Option("--type", help="Only this type: incident, scaling, backup or config."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Most records shown (newest kept).")] = 50,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """The operations journal: failures and recoveries with their timings, scaling events,
    backups and configuration changes."""

    async def main() -> list[dict[str, Any]]:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.ops.events(type=type_, limit=limit)

    _records(_run(main), json_)


def alerts(
    limit: Annotated[int, typer.Option(help="Most alerts shown (newest kept).")] = 50,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Alerts: recoveries that failed or took too long, degradation."""

    async def main() -> list[dict[str, Any]]:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.ops.alerts(limit=limit)

    _records(_run(main), json_)


def _records(records: list[dict[str, Any]], json_: bool) -> None:
    if json_:
        _dump(records)
        return
    table = Table("AT", "TYPE", box=None)
    table.add_column("WHAT", overflow="fold")  # wrapped, never cut
    for r in records:
        table.add_row(_when(r.get("at")), str(r.get("type", "")), _summary(r))
    out.print(table)


def _summary(r: dict[str, Any]) -> str:
    """One record in a line; ``--json`` has every field."""
    kind = r.get("type")
    if "message" in r:
        return str(r["message"])
    if kind == "incident":
        who = r.get("agent") or r.get("member") or ""
        state = "recovered" if r.get("ok") else "open" if "recovered_at" not in r else "FAILED"
        took = f" in {r['took'] * 1000:.0f} ms" if isinstance(r.get("took"), int | float) else ""
        extra = f", {r['parked']} parked" if r.get("parked") else ""
        moved = f", {len(r['tasks'])} task(s) moved" if r.get("tasks") else ""
        return f"{r.get('failure')} {who}".strip() + f": {state}{took}{moved}{extra}"
    if kind == "config":
        changes = [
            *(f"{c['path']} {c['old']!r} -> {c['new']!r}" for c in r.get("applied", [])),
            *(f"{c['path']} (restart)" for c in r.get("restart_required", [])),
        ]
        return f"{r.get('source')}: " + "; ".join(changes)
    if kind == "backup":
        return f"{r.get('file')} ({r.get('bytes', 0) / 1e6:.1f} MB) in {r.get('seconds', 0):.2f} s"
    if kind == "scaling":
        ok = "" if r.get("ok", True) else f" FAILED: {r.get('error')}"
        return f"{r.get('pool')} {r.get('from')} -> {r.get('to')} ({r.get('reason')}){ok}"
    rest = {k: v for k, v in r.items() if k not in ("seq", "at", "type")}
    return msgspec.json.encode(rest).decode()


def _print_result(result: Any, json_: bool) -> None:
    if json_:
        _dump(result)
        return
    if not result.applied and not result.restart_required:
        out.print("no change")
    for c in result.applied:
        out.print(f"[green]applied[/green] {c.path}: {c.old!r} -> {c.new!r}")
    for c in result.restart_required:
        out.print(f"[yellow]needs a restart[/yellow] {c.path}: {c.old!r} -> {c.new!r}")


@config_app.command("show")
def config_show(hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None) -> None:
    """Print the running settings as JSON (admin token; tokens shown as ***)."""

    async def main() -> dict[str, Any]:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.ops.settings()

    _dump(_run(main))


@config_app.command("reload")
def config_reload(
    json_: JsonOpt = False, hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None
) -> None:
    """Reload the hub's settings file now (as SIGHUP does); a bad file changes nothing."""

    async def main() -> Any:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.ops.reload()

    _print_result(_run(main), json_)


@config_app.command("set")
def config_set(
    changes: Annotated[
        list[str],
        typer.Argument(
            help="PATH=VALUE, e.g. chat.qos.normal.max_attempts=5 (VALUE as JSON, else a string)."
        ),
    ],
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Change settings live, all or nothing: every problem is listed and nothing changes."""
    tree: dict[str, Any] = {}
    for change in changes:
        path, sep, raw = change.partition("=")
        if not sep or not path:
            raise typer.BadParameter(f"{change!r}: write PATH=VALUE")
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            value = raw
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    async def main() -> Any:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.ops.change(tree)

    _print_result(_run(main), json_)


def register(app: typer.Typer) -> None:
    """Add ``health``, ``events``, ``alerts`` and ``config`` to ``app``."""
    for command in (health, events, alerts):
        app.command(rich_help_panel=PANEL)(command)
    app.add_typer(config_app, name="config", rich_help_panel=PANEL)
