"""``fleetchat``: the command line (typer + rich). Only the CLI configures logging."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fleetchat.errors import FleetchatError

__all__ = ["app", "main"]

app = typer.Typer(
    name="fleetchat",
    help="fleetchat: a coordination hub for fleets of robots and AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
        asyncio.run(coro)  # type: ignore[arg-type]


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long the fleet talks.")] = 12.0,
    agents: Annotated[int, typer.Option(help="Agents in the simulated fleet (20 or more).")] = 24,
    db: Annotated[str, typer.Option(help="Backend URL.")] = "sqlite:///fleetchat-demo.db",
    log_level: Annotated[str, typer.Option(help="Log level: warning, info, debug.")] = "warning",
) -> None:
    """Run the embedded demo: a fleet talking in channels with mixed priorities."""
    from fleetchat.cli.demo import fresh_database, run_demo

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    fresh_database(db)
    _run(run_demo(seconds=seconds, n_agents=agents, url=db))


@app.command()
def version() -> None:
    """Print the version."""
    from fleetchat import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point: errors print as one line with their code, never a traceback."""
    try:
        app()
    except FleetchatError as exc:
        err.print(f"[red]error[/red] {escape(f'[{exc.code}]')} {escape(exc.message)}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
