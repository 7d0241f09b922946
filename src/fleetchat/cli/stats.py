"""``fleetchat stats``: one summary of a running hub (``GET /v1/stats``), as a table or JSON,
once or every ``--watch`` seconds.

Like the other remote commands: ``--hub`` (env ``FLEETCHAT_HUB``), ``--token`` (env
``FLEETCHAT_TOKEN``), ``--json``; errors print as ``error [code] message`` with exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

import typer
from rich.live import Live
from rich.table import Table

from fleetchat.cli.remote import (
    DEFAULT_HUB,
    PANEL,
    HubOpt,
    JsonOpt,
    TokenOpt,
    _dump,
    _run,
    _until_signal,
    out,
)
from fleetchat.errors import InvalidInputError

if TYPE_CHECKING:
    from fleetchat.client import HubClient
    from fleetchat.server.schemas_stats import StatsSummary

__all__ = ["register", "render"]


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def render(s: StatsSummary) -> Table:
    """The summary as a two-column table."""
    n, d, t, w, le = s.node, s.deliveries, s.tasks, s.workflows, s.leases
    role = f"leader, epoch {n.epoch}" if n.leader else f"follower, epoch {n.epoch}"
    rows = [
        ("node", f"{n.node} ({role}), up {_duration(n.uptime_seconds)}, v{n.version}"),
        (
            "deliveries",
            f"published {d.published}, delivered {d.delivered}, "
            f"success {d.success_rate:.1%}, p50 {d.latency_p50_ms:.2f} ms, "
            f"p99 {d.latency_p99_ms:.2f} ms",
        ),
        (
            "failures",
            f"retries {d.retries}, dead-lettered {d.dead_lettered} "
            f"({d.dead_letter_backlog} kept), expired {d.expired}, dropped {d.dropped}",
        ),
        ("tasks", f"{_counts(t.active)}; submitted {t.submitted}"),
        ("tasks finished", _counts(t.finished)),
        (
            "allocation",
            f"{t.allocations} decisions, p50 {t.allocation_p50_ms:.3f} ms, "
            f"p99 {t.allocation_p99_ms:.3f} ms",
        ),
        ("workflows", f"running {w.running}; executions: {_counts(w.executions)}"),
        ("workflow steps", _counts(w.steps)),
        ("leases", f"held {le.held} of {le.resources} resources, {le.waiters} waiting"),
        ("connections", f"{s.connections} sessions, {s.agents_connected} agents"),
        ("agents", _counts(s.agents)),
        ("channels", str(s.channels)),
        ("scaling", f"{_counts(s.scaling_events)}; desired: {_counts(s.scaling_desired)}"),
    ]
    if n.degraded:
        rows.insert(1, ("degraded", n.degraded))
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, text in rows:
        table.add_row(name, text)
    return table


async def _read(rest: HubClient) -> StatsSummary:
    from fleetchat.server.schemas_stats import StatsSummary

    return await rest._call("GET", "/v1/stats", StatsSummary)


def stats(
    watch: Annotated[
        float | None,
        typer.Option(help="Refresh every SECONDS until Ctrl-C.", metavar="SECONDS"),
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="With --watch: stop after this many readings.")
    ] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """A summary of the hub: deliveries, tasks, workflows, leases, agents, scaling."""

    async def main() -> None:
        from fleetchat.client import HubClient

        if watch is not None and not watch > 0:
            raise InvalidInputError("--watch takes a positive number of seconds", field="watch")

        async with HubClient(hub, token) as rest:
            if watch is None:
                _show(await _read(rest), json_)
                return
            await _until_signal(_watch(rest, watch, count, json_))

    _run(main)


def _show(summary: StatsSummary, as_json: bool) -> None:
    if as_json:
        _dump(summary)
        sys.stdout.flush()
    else:
        out.print(render(summary))


async def _watch(rest: HubClient, every: float, count: int | None, as_json: bool) -> None:
    """Read every ``every`` seconds: a table redrawn in place, or one JSON line per reading."""
    live = None if as_json else Live(console=out, auto_refresh=False)
    seen = 0
    with live or contextlib.nullcontext():
        while True:
            summary = await _read(rest)
            if live is None:
                _show(summary, True)
            else:
                live.update(render(summary), refresh=True)
            seen += 1
            if count is not None and seen >= count:
                return
            await asyncio.sleep(every)


def register(app: typer.Typer) -> None:
    """Add ``fleetchat stats`` to ``app``."""
    app.command(rich_help_panel=PANEL)(stats)
