"""``fleetchat scaling``: the autoscaler of a running hub (REST, docs/autoscaling.md).

- ``fleetchat scaling``: every pool: size, wanted size, bounds, the last measures and decision;
- ``fleetchat scaling events``: the newest scaling events;
- ``fleetchat scaling set POOL COUNT``: resize a pool now (admin token when auth is on).

Like the other remote commands: ``--hub`` (env ``FLEETCHAT_HUB``), ``--token`` (env
``FLEETCHAT_TOKEN``), ``--json``; errors print as ``error [code] message`` with exit 1.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fleetchat.cli.remote import DEFAULT_HUB, PANEL, HubOpt, JsonOpt, TokenOpt, _dump, _run, out

if TYPE_CHECKING:
    from fleetchat.server import schemas_scaling as s

__all__ = ["register", "scaling_app"]


scaling_app = typer.Typer(
    help="The autoscaler: pools, scaling events, manual resizes.", invoke_without_command=True
)


async def _call(hub: str, token: str | None, method: str, path: str, into: Any, **kw: Any) -> Any:
    from fleetchat.client import HubClient

    async with HubClient(hub, token) as rest:
        return await rest._call(method, path, into, **kw)  # the scaling routes have no helper


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@scaling_app.callback()
def status(
    ctx: typer.Context, json_: JsonOpt = False, hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None
) -> None:
    """Every pool: current and wanted size, bounds, the last measures and decision."""
    if ctx.invoked_subcommand is not None:
        return
    from fleetchat.server import schemas_scaling as s

    got: s.ScalingStatus = _run(lambda: _call(hub, token, "GET", "/v1/scaling", s.ScalingStatus))
    if json_:
        _dump(got)
        return
    if not got.pools:
        out.print("no scaling pools configured ([scaling.pools.<name>] in the config)")
        return
    if not got.leader:
        out.print("[yellow]this node does not lead: its autoscaler does not run here[/]")
    table = Table(
        "POOL",
        "ACTUATOR",
        "NOW",
        "WANTED",
        "MIN..MAX",
        "QUEUED",
        "UTIL",
        "CPU",
        "DECISION",
        box=None,
    )
    for p in got.pools:
        m = p.metrics
        decision = (p.error and f"[red]failing: {p.error}[/]") or p.reason or "-"
        if p.cooldown_left:
            decision += f" ({p.cooldown_left:.0f}s left)"
        table.add_row(
            p.name,
            p.actuator,
            "-" if p.current is None else str(p.current),
            "-" if p.desired is None else str(p.desired),
            f"{p.min}..{p.max}",
            "-" if m is None else str(m.queued),
            _pct(None if m is None else m.utilisation),
            _pct(None if m is None else m.cpu),
            decision,
        )
    out.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in got.counts.items())
    out.print(f"[dim]every {got.interval:g}s; {got.rounds} rounds; events: {counts}[/]")


@scaling_app.command("events")
def events(
    limit: Annotated[int, typer.Option(help="How many of the newest (1..10000).")] = 20,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """The newest scaling events, oldest first: resizes, restarts and failures."""
    from fleetchat.server import schemas_scaling as s

    got: s.ScalingEvents = _run(
        lambda: _call(
            hub, token, "GET", "/v1/scaling/events", s.ScalingEvents, params={"limit": limit}
        )
    )
    if json_:
        _dump(got.events)
        return
    table = Table("AT", "POOL", "KIND", "FROM", "TO", "OK", "TOOK", "REASON", box=None)
    for e in got.events:
        ok = "yes" if e.ok else f"[red]no: {e.error}[/]"
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        table.add_row(at, e.pool, e.kind, str(e.from_), str(e.to), ok, f"{e.took:.2f}s", e.reason)
    out.print(table)


@scaling_app.command("set")
def set_(
    pool: Annotated[str, typer.Argument(help="The pool.")],
    count: Annotated[int, typer.Argument(help="Instances, within the pool's min..max.")],
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Resize POOL to COUNT now; the policies leave it alone for the cooldowns."""
    from urllib.parse import quote

    from fleetchat.server import schemas_scaling as s

    path = f"/v1/scaling/{quote(pool, safe='')}"
    e: s.ScalingEvent = _run(
        lambda: _call(hub, token, "POST", path, s.ScalingEvent, body={"count": count})
    )
    if json_:
        _dump(e)
    elif e.ok:
        out.print(f"pool {e.pool}: {e.from_} -> {e.to} in {e.took:.2f}s")
    else:
        out.print(f"[red]pool {e.pool}: {e.from_} -> {e.to} failed: {e.error}[/]")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``fleetchat scaling`` to ``app``."""
    app.add_typer(scaling_app, name="scaling", rich_help_panel=PANEL)
