"""``fleetchat``: the command line (typer + rich). Only the CLI configures logging."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fleetchat.cli.backup import register as register_backup
from fleetchat.cli.demo import demo
from fleetchat.cli.leases import register as register_leases
from fleetchat.cli.migrate import register as register_migrate
from fleetchat.cli.ops import register as register_ops
from fleetchat.cli.remote import register as register_remote
from fleetchat.cli.scaling import register as register_scaling
from fleetchat.cli.stats import register as register_stats
from fleetchat.cli.tasks import register as register_tasks
from fleetchat.cli.workflow import register as register_workflow
from fleetchat.config import HubSettings, load_settings
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's ``extra`` context."""

    _skip = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
        asyncio.run(coro)  # type: ignore[arg-type]


app.command()(demo)


def _settings(
    config: Path | None, db: str | None, overrides: dict[str, Any] | None = None
) -> HubSettings:
    return load_settings(config, overrides=_settings_tree(db, overrides))


def _settings_tree(db: str | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The settings given as flags, which keep precedence when the file is reloaded."""
    tree: dict[str, Any] = dict(overrides or {})
    if db is not None:
        tree["url"] = db
    return tree


def _configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8765; 0 picks one).")] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            "--bus",
            help="Backend URL: sqlite:///fleetchat.db (default), memory://, or nats://host:4222.",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="With a nats:// bus: the store, postgresql://user@host/db."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
    auth: Annotated[bool | None, typer.Option("--auth/--no-auth", help="Require tokens.")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="PEM certificate: serve https/wss.")] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key for --tls-cert.")] = None,
    log_format: Annotated[str, typer.Option(help="Log format: text or json.")] = "text",
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the network hub: REST under /v1, agents on the WebSocket /v1/ws."""
    server: dict[str, Any] = {}
    for key, value in (
        ("host", host),
        ("port", port),
        ("auth", auth),
        ("tls_cert", tls_cert),
        ("tls_key", tls_key),
    ):
        if value is not None:
            server[key] = value
    overrides: dict[str, Any] = {"server": server} if server else {}
    if store is not None:
        overrides["store_url"] = store
    settings = _settings(config, db, overrides or None)
    _configure_logging(log_level, log_format)
    from fleetchat.server.app import serve_forever

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_forever(
            None, settings, stop, config_file=config, overrides=_settings_tree(db, overrides)
        )

    _run(main())


token_app = typer.Typer(
    help="Manage access tokens (stored hashed in the hub's database).", no_args_is_help=True
)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    agent_id: Annotated[str, typer.Argument(help="The agent the token authenticates.")],
    admin: Annotated[bool, typer.Option(help="Also allow admin operations over REST.")] = False,
    db: Annotated[
        str | None, typer.Option("--db", help="Backend URL of the hub's database.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
) -> None:
    """Create a token for AGENT_ID and print it (it is shown only this once)."""
    settings = _settings(config, db)

    async def main() -> str:
        from fleetchat.hub import Hub
        from fleetchat.server.auth import Authenticator

        async with Hub(settings) as hub:
            auth = Authenticator(hub.store, hub.clock, enabled=True)
            return await auth.create(agent_id, admin=admin)

    typer.echo(asyncio.run(main()))


@token_app.command("revoke")
def token_revoke(
    agent_id: Annotated[str, typer.Argument(help="Revoke every token of this agent.")],
    db: Annotated[
        str | None, typer.Option("--db", help="Backend URL of the hub's database.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
) -> None:
    """Revoke every token of AGENT_ID (a running hub picks this up on restart)."""
    settings = _settings(config, db)

    async def main() -> int:
        from fleetchat.hub import Hub
        from fleetchat.server.auth import Authenticator

        async with Hub(settings) as hub:
            return await Authenticator(hub.store, hub.clock, enabled=True).revoke(agent_id)

    typer.echo(f"revoked {asyncio.run(main())} token(s) of {agent_id}")


register_remote(app)
register_leases(app)
register_tasks(app)
register_workflow(app)
register_migrate(app)
register_ops(app)
register_stats(app)
register_backup(app)
register_scaling(app)


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
