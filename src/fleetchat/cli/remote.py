"""Commands that talk to a running hub: ``tail``, ``send``, ``channels``, ``agents``, ``dlq``.

Each takes ``--hub`` (env ``FLEETCHAT_HUB``) and ``--token`` (env ``FLEETCHAT_TOKEN``), and
prints errors as one line ``error [code] message`` with exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleetchat.errors import FleetchatError, InvalidInputError
from fleetchat.types import check_channel_name, parse_priority

if TYPE_CHECKING:
    from fleetchat.client import MessageStream
    from fleetchat.models import Message

__all__ = ["register"]

T = TypeVar("T")

PANEL = "Talk to a running hub"
DEFAULT_HUB = "http://127.0.0.1:8765"
"""As ``fleetchat.client.DEFAULT_HUB``; not imported from there, so ``--help`` stays quick."""
HubOpt = Annotated[
    str, typer.Option("--hub", envvar="FLEETCHAT_HUB", help="The hub's URL.", show_default=True)
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="FLEETCHAT_TOKEN", help="Access token.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

_STYLE = {"critical": "bold red", "high": "yellow", "normal": "", "low": "dim"}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a fresh event loop; a FleetchatError becomes one line and exit 1."""
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
            return asyncio.run(main())
        return uvloop.run(main())
    except FleetchatError as exc:
        err.print(Text.assemble(("error", "red"), f" [{exc.code}] {exc.message}"))
        raise typer.Exit(1) from None


def _dump(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _age(ts: float) -> str:
    if not ts:
        return "-"
    seconds = max(time.time() - ts, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _body(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))


def message_line(m: Message) -> Text:
    """One message as a line of text, coloured by priority."""
    stamp = time.strftime("%H:%M:%S", time.localtime(m.created_at or time.time()))
    style = "dim italic" if m.kind == "system" else _STYLE.get(str(m.priority), "")
    where = f"{m.channel}#{m.seq}" if m.seq else m.channel
    kind = "" if m.kind == "chat" else f" ({m.kind})"
    body = m.body
    if m.kind == "system" and isinstance(body, dict):  # the hub's announcements
        body = body.get("text", body)
    return Text.assemble(
        (f"{stamp} ", "dim"),
        (f"{where} ", "cyan"),
        (f"{m.sender}", "bold"),
        (f" [{m.priority}]{kind} ", style or "dim"),
        (_body(body), style),
    )


# -- tail ---------------------------------------------------------------------------------


def tail(
    channels: Annotated[list[str], typer.Argument(help="Channels to follow.")],
    as_: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Agent id to follow as (the token's agent when auth is on). With a fixed id "
            "the memberships stay and the next run resumes where this one stopped; without "
            "one a throwaway tail-<random> id is used and leaves the channels at exit.",
        ),
    ] = None,
    count: Annotated[int | None, typer.Option(help="Exit after this many messages.")] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Print messages of CHANNELS live, coloured by priority, until Ctrl-C."""
    for name in channels:
        check_channel_name(name)

    async def main() -> None:
        from fleetchat.client import Agent, HubClient

        agent_id = as_ or f"tail-{secrets.token_hex(3)}"
        async with HubClient(hub, token) as rest:
            for name in channels:
                if not name.startswith("@"):
                    await rest.get_channel(name)  # no channel typos creating new channels
        agent = Agent(agent_id, hub=hub, token=token, connect_timeout=0)
        stream = agent.messages()
        async with agent:
            await agent.subscribe(*channels)
            if not json_:
                err.print(f"following {', '.join(channels)} as {agent_id} (Ctrl-C stops)")
            try:
                await _until_signal(_print_messages(stream, count, json_))
            finally:
                stream.close()
                if as_ is None:
                    for name in channels:
                        with contextlib.suppress(FleetchatError):
                            await agent.unsubscribe(name)

    _run(main)


async def _print_messages(stream: MessageStream, count: int | None, as_json: bool) -> None:
    seen = 0
    while count is None or seen < count:
        try:
            m = await stream.next()
        except StopAsyncIteration:
            return
        if as_json:
            _dump(m)
        else:
            out.print(message_line(m))
        sys.stdout.flush()
        seen += 1


async def _until_signal(work: Awaitable[None]) -> None:
    """Run ``work``; SIGINT / SIGTERM cancel it quietly."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    main = threading.current_thread() is threading.main_thread()
    if main:
        for sig in signals:
            loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        if main:
            for sig in signals:
                loop.remove_signal_handler(sig)


# -- send ---------------------------------------------------------------------------------


def send(
    channel: Annotated[str, typer.Argument(help="Channel (or @agent inbox) to post in.")],
    text: Annotated[str, typer.Argument(help="The message body.")],
    priority: Annotated[str, typer.Option(help="critical, high, normal or low.")] = "normal",
    json_body: Annotated[
        bool, typer.Option("--json-body", help="Parse TEXT as JSON for the body.")
    ] = False,
    kind: Annotated[str, typer.Option(help="Message kind: chat, task or result.")] = "chat",
    as_: Annotated[
        str | None,
        typer.Option("--as", help="Sender id (default: the token's agent, or 'cli')."),
    ] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Publish TEXT to CHANNEL."""

    async def main() -> Message:
        from fleetchat.client import HubClient

        body: Any = text
        if json_body:
            try:
                body = json.loads(text)
            except ValueError as exc:
                raise InvalidInputError(f"TEXT is not JSON: {exc}", field="text") from None
        sender = as_ or (None if token else "cli")
        async with HubClient(hub, token) as rest:
            return await rest.publish(
                channel,
                body,
                sender=sender,
                priority=parse_priority(priority),
                kind=kind,  # type: ignore[arg-type]  # the hub checks it
            )

    m = _run(main)
    if json_:
        _dump(m)
    else:
        out.print(f"published {m.channel}#{m.seq} as {m.sender} (message {m.id})")


# -- listings -----------------------------------------------------------------------------


def channels(
    all_: Annotated[bool, typer.Option("--all", help="Include $ system channels.")] = False,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """List the hub's channels."""

    async def main() -> list[Any]:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.list_channels(include_system=all_)

    found = _run(main)
    if json_:
        _dump(found)
        return
    table = Table("CHANNEL", "TYPE", "LAST SEQ", "LAST ACTIVITY", "NOTES", box=None)
    for c in found:
        notes = [n for n, on in (("ephemeral", c.ephemeral), ("writers", c.writers)) if on]
        table.add_row(c.name, c.type, str(c.last_seq), _age(c.last_activity_at), ", ".join(notes))
    out.print(table)


def agents(
    status: Annotated[
        str | None, typer.Option(help="Only agents that are available, busy, draining or offline.")
    ] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """List the registered agents."""

    async def main() -> list[Any]:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.list_agents(status=status)  # type: ignore[arg-type]

    found = _run(main)
    if json_:
        _dump(found)
        return
    table = Table("AGENT", "STATE", "LOAD", "CAPABILITIES", "LAST HEARTBEAT", box=None)
    for a in found:
        state = "draining" if a.draining else "online" if a.online else "offline"
        caps = ", ".join(f"{k}={v:g}" for k, v in sorted(a.capabilities.items()))
        load = f"{a.active_tasks}/{a.capacity}"
        table.add_row(a.id, state, load, caps, _age(a.last_heartbeat))
    out.print(table)


def dlq(
    replay: Annotated[
        list[int] | None,
        typer.Option(help="Replay the dead letter with this $dlq seq (repeat for more)."),
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--replay-all", help="Replay every dead letter kept.")
    ] = False,
    purge: Annotated[bool, typer.Option("--purge", help="Delete every dead letter.")] = False,
    limit: Annotated[int, typer.Option(help="Most dead letters listed.")] = 100,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """List dead letters; --replay / --replay-all send them again, --purge deletes them."""

    async def main() -> Any:
        from fleetchat.client import HubClient

        if (replay or replay_all) and purge:
            raise InvalidInputError("give --replay or --purge, not both", field="purge")
        async with HubClient(hub, token) as rest:
            if replay or replay_all:
                return ("replayed", await rest.replay_dead_letters(replay or None))
            if purge:
                return ("purged", await rest.purge_dead_letters())
            return await rest.list_dead_letters(limit=limit)

    result = _run(main)
    if isinstance(result, tuple):
        verb, n = result
        if json_:
            _dump({verb: n})
        else:
            out.print(f"{verb} {n} dead letter(s)")
        return
    if json_:
        _dump(result)
        return
    table = Table("SEQ", "MEMBER", "MESSAGE", "REASON", "ATTEMPTS", "DEAD", "BODY", box=None)
    for e in result:
        d = e.letter
        where = f"{d.message.channel}#{d.message.seq}"
        body = _body(d.message.body)
        body = body if len(body) <= 40 else body[:39] + "…"
        table.add_row(str(e.seq), d.member, where, d.reason, str(d.attempts), _age(d.dead_at), body)
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the remote commands to the ``fleetchat`` app."""
    for command in (tail, send, channels, agents, dlq):
        app.command(rich_help_panel=PANEL)(command)
