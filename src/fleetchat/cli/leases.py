"""``fleetchat leases list|get|acquire|renew|release``: leases on a running hub (REST).

Like the other remote commands: ``--hub`` (env ``FLEETCHAT_HUB``), ``--token`` (env
``FLEETCHAT_TOKEN``), ``--json``; errors print as ``error [code] message`` with exit 1.
The holder is ``--as``, else the token's agent, else ``cli``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from fleetchat.cli.remote import DEFAULT_HUB, PANEL, HubOpt, JsonOpt, TokenOpt, _dump, _run, out

__all__ = ["leases_app", "register"]

leases_app = typer.Typer(
    help="Leases on shared resources (a dock, a door): list, acquire, renew, release.",
    no_args_is_help=True,
)

AsOpt = Annotated[
    str | None, typer.Option("--as", help="Holder id (default: the token's agent, or 'cli').")
]


def _holder(as_: str | None, token: str | None) -> str | None:
    return as_ or (None if token else "cli")


def _until(ts: float | None) -> str:
    return "-" if ts is None else f"{max(ts - time.time(), 0):.1f}s left"


@leases_app.command("list")
def list_(json_: JsonOpt = False, hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None) -> None:
    """List every leased resource: holder, token, time left, queue."""

    async def main() -> list[Any]:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.leases.list()

    found = _run(main)
    if json_:
        _dump(found)
        return
    table = Table("RESOURCE", "HOLDER", "TOKEN", "EXPIRES", "WAITING", box=None)
    for s in found:
        waiting = ", ".join(f"{w.holder}({w.priority})" for w in s.waiting)
        table.add_row(s.resource, s.holder or "-", str(s.token), _until(s.expires_at), waiting)
    out.print(table)


@leases_app.command("acquire")
def acquire(
    resource: Annotated[str, typer.Argument(help="The resource, e.g. dock-1.")],
    ttl: Annotated[float | None, typer.Option(help="Seconds the lease lasts (default 30).")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for it (default 10; 0: once).")
    ] = None,
    priority: Annotated[str, typer.Option(help="critical, high, normal or low.")] = "normal",
    as_: AsOpt = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Acquire RESOURCE and print the lease's fencing token (release it with that token)."""

    async def main() -> Any:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            held = await rest.leases.acquire(
                resource, ttl=ttl, timeout=timeout, priority=priority, holder=_holder(as_, token)
            )
            return held.lease

    lease = _run(main)
    if json_:
        _dump(lease)
    else:
        out.print(
            f"acquired {lease.resource} as {lease.holder}: token {lease.token}, "
            f"{_until(lease.expires_at)}"
        )


@leases_app.command("renew")
def renew(
    resource: Annotated[str, typer.Argument(help="The resource.")],
    lease_token: Annotated[int, typer.Option("--lease", help="The lease's fencing token.")],
    ttl: Annotated[float | None, typer.Option(help="Seconds from now (default 30).")] = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Extend a held lease."""

    async def main() -> Any:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.leases.renew(
                resource, lease_token, ttl=ttl, holder=_holder(as_, token)
            )

    lease = _run(main)
    if json_:
        _dump(lease)
    else:
        out.print(f"renewed {lease.resource}: token {lease.token}, {_until(lease.expires_at)}")


@leases_app.command("release")
def release(
    resource: Annotated[str, typer.Argument(help="The resource.")],
    lease_token: Annotated[int, typer.Option("--lease", help="The lease's fencing token.")],
    as_: AsOpt = None,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Release a held lease; the next waiter gets it."""

    async def main() -> None:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            await rest.leases.release(resource, lease_token, holder=_holder(as_, token))

    _run(main)
    out.print(f"released {resource}")


def register(app: typer.Typer) -> None:
    """Add ``fleetchat leases`` to the app."""
    app.add_typer(leases_app, name="leases", rich_help_panel=PANEL)
