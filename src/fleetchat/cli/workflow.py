"""``fleetchat workflow validate|register|definitions|run|status|list|cancel|redrive|graph``.

``validate`` works on a file alone; the others talk to a running hub over REST, like the other
remote commands: ``--hub`` (env ``FLEETCHAT_HUB``), ``--token`` (env ``FLEETCHAT_TOKEN``),
``--json``; errors print as ``error [code] message`` with exit 1 (an invalid definition also
lists every problem).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Column, Table

from fleetchat.cli.remote import (
    DEFAULT_HUB,
    PANEL,
    HubOpt,
    JsonOpt,
    TokenOpt,
    _age,
    _dump,
    _run,
    err,
    out,
)
from fleetchat.errors import InvalidDefinitionError, InvalidInputError

if TYPE_CHECKING:
    from fleetchat.client.workflows_rest import WorkflowClient
    from fleetchat.workflows.records import DefinitionRecord, ExecutionEvent, ExecutionRecord

__all__ = ["register", "workflow_app"]

T = TypeVar("T")

workflow_app = typer.Typer(
    help="Workflows: validate and register definitions, run them, follow their executions.",
    no_args_is_help=True,
)

FileArg = Annotated[
    Path,
    typer.Argument(help="A definition file (.yaml, .yml or .json).", exists=True, dir_okay=False),
]
ExecutionArg = Annotated[str, typer.Argument(help="The execution's id.")]
VersionOpt = Annotated[str, typer.Option(help="A version, or latest (not deprecated).")]
_STYLE = {"completed": "green", "failed": "red", "error": "red", "cancelled": "dim"}
_STYLE.update(running="cyan", waiting="yellow")


def _call(hub: str, token: str | None, fn: Callable[[WorkflowClient], Awaitable[T]]) -> T:
    """``fn(client.workflows)`` on the hub, its FleetchatError printed as one line (exit 1)."""

    async def main() -> T:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await fn(rest.workflows)

    return _run(main)


def _status(status: str) -> str:
    style = _STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def _problems(exc: InvalidDefinitionError) -> None:
    problems = exc.details.get("problems") or [{"path": "", "message": exc.message}]
    err.print(f"[red]invalid[/red]: {len(problems)} problem(s)")
    for p in problems:
        where = p.get("path") or "/"
        step = f" (step {p['step']})" if p.get("step") else ""
        err.print(f"  {escape(where)}{escape(step)}: {escape(str(p.get('message')))}")


@workflow_app.command("validate")
def validate(file: FileArg, json_: JsonOpt = False) -> None:
    """Check a definition file without a hub: print every problem (exit 1 if any)."""
    from fleetchat.workflows.validate import parse_definition

    try:
        text = file.read_text(encoding="utf-8")
        definition = parse_definition(text, fmt="json" if file.suffix == ".json" else "yaml")
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error[/red] cannot read {escape(str(file))}: {escape(str(exc))}")
        raise typer.Exit(1) from None
    except InvalidDefinitionError as exc:
        if json_:
            _dump({"valid": False, "problems": exc.details.get("problems", [])})
        else:
            _problems(exc)
        raise typer.Exit(1) from None
    if json_:
        _dump({"valid": True, "name": definition.name, "version": definition.version})
    else:
        steps = len(definition.steps)
        out.print(f"ok: {definition.name}@{definition.version} ({steps} top-level steps)")


@workflow_app.command("register")
def register_(
    file: FileArg, json_: JsonOpt = False, hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None
) -> None:
    """Register a definition on the hub (the same content again changes nothing)."""

    async def send(w: WorkflowClient) -> DefinitionRecord | InvalidDefinitionError:
        try:
            return await w.register(file)
        except InvalidDefinitionError as exc:
            return exc

    record = _call(hub, token, send)
    if isinstance(record, InvalidDefinitionError):
        _problems(record)
        raise typer.Exit(1)
    if json_:
        _dump(record)
    else:
        out.print(f"registered {record.name}@{record.version} ({record.content_hash[:12]})")


@workflow_app.command("definitions")
def definitions(json_: JsonOpt = False, hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None) -> None:
    """List registered definitions: name, version, deprecated, content hash, age."""

    found = _call(hub, token, lambda w: w.definitions())
    if json_:
        _dump(found)
        return
    table = Table("NAME", "VERSION", "DEPRECATED", "HASH", "AGE", box=None)
    for d in found:
        flag = "yes" if d.deprecated else "-"
        table.add_row(d.name, d.version, flag, d.content_hash[:12], _age(d.created_at))
    out.print(table)


def _input(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"--input is not JSON: {exc}", field="input") from None


@workflow_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="The workflow's name.")],
    input_: Annotated[
        str | None, typer.Option("--input", help="The execution's input, as JSON.")
    ] = None,
    version: VersionOpt = "latest",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the end; print it.")] = False,
    wait_timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Start an execution and print its id; with --wait, wait for it to end (exit 1 unless it
    completed)."""

    async def start(w: WorkflowClient) -> ExecutionRecord:
        execution = await w.start(name, _input(input_), version=version)
        if wait:
            if not json_:
                err.print(f"started {execution.id}; waiting for it to end")
            execution = await w.wait(execution.id, wait_timeout)
        return execution

    execution = _call(hub, token, start)
    if json_:
        _dump(execution)
    elif wait:
        _show(execution)
    else:
        out.print(execution.id)
    if wait and execution.status != "completed":
        raise typer.Exit(1)


def _show(e: ExecutionRecord) -> None:
    out.print(f"execution {e.id}: {_status(e.status)} ({e.workflow}@{e.workflow_version})")
    ended = f", ended {_age(e.ended_at)}" if e.ended_at else ""
    out.print(f"  started {_age(e.created_at)}{ended}")
    if e.status == "completed":
        out.print(f"  output: {json.dumps(e.output)}", markup=False)
    if e.error:
        out.print(f"  error: {json.dumps(e.error)}", markup=False)


def _took(start: float, end: float | None) -> str:
    if not start:
        return "-"
    return f"{(end or time.time()) - start:.1f}s"


@workflow_app.command("status")
def status(
    execution_id: ExecutionArg,
    events: Annotated[bool, typer.Option("--events", help="Also print the event log.")] = False,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Print an execution: its status, output or error, every step run (and its events)."""

    async def read(w: WorkflowClient) -> tuple[ExecutionRecord, list[ExecutionEvent]]:
        return await w.execution(execution_id), await w.events(execution_id) if events else []

    execution, log = _call(hub, token, read)
    if json_:
        _dump({"execution": execution, "events": log} if events else execution)
        return
    _show(execution)
    table = Table("STEP RUN", "STATUS", "ATTEMPT", "BY", "TOOK", box=None)
    for run_ in sorted(execution.runs.values(), key=lambda r: r.started_at):
        by = run_.agent or run_.child or run_.channel or "-"
        took = _took(run_.started_at, run_.ended_at)
        table.add_row(run_.key, _status(run_.status), str(run_.attempt), by, took)
    out.print(table)
    if events:
        start = log[0].at if log else 0.0
        ev = Table("SEQ", "AT", "EVENT", "STEP", "DATA", box=None)
        for e in log:
            data = "" if e.data is None else json.dumps(e.data, separators=(",", ":"))[:80]
            ev.add_row(str(e.seq), f"+{e.at - start:.2f}s", e.type, e.key or "-", escape(data))
        out.print(ev)


@workflow_app.command("list")
def list_(
    status_: Annotated[
        str | None,
        typer.Option("--status", help="Only this status: running, completed, failed, ..."),
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="Only executions of this name.")] = None,
    limit: Annotated[int, typer.Option(help="Most executions, oldest first.")] = 100,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """List executions: id, workflow, status, steps run, age."""

    found = _call(
        hub, token, lambda w: w.executions(status=status_, workflow=workflow, limit=limit)
    )
    if json_:
        _dump(found)
        return
    id_column = Column("ID", no_wrap=True, min_width=max((len(e.id) for e in found), default=2))
    table = Table(id_column, "WORKFLOW", "STATUS", "STEPS", "AGE", box=None)
    for e in found:
        name = f"{e.workflow}@{e.workflow_version}"
        table.add_row(e.id, name, _status(e.status), str(len(e.runs)), _age(e.created_at))
    out.print(table)


@workflow_app.command("cancel")
def cancel(
    execution_id: ExecutionArg,
    reason: Annotated[str | None, typer.Option(help="Why (kept on the execution).")] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Cancel a running execution: its tasks, branches and child executions stop."""

    _changed(_call(hub, token, lambda w: w.cancel(execution_id, reason)), json_)


@workflow_app.command("redrive")
def redrive(
    execution_id: ExecutionArg,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Run a failed execution again from the step(s) that failed."""

    _changed(_call(hub, token, lambda w: w.redrive(execution_id)), json_)


def _changed(execution: ExecutionRecord, json_: bool) -> None:
    if json_:
        _dump(execution)
    else:
        out.print(f"execution {execution.id}: {_status(execution.status)}")


@workflow_app.command("graph")
def graph(
    name: Annotated[str, typer.Argument(help="The workflow's name.")],
    version: VersionOpt = "latest",
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Print a definition as a Mermaid flowchart."""

    typer.echo(_call(hub, token, lambda w: w.graph(name, version)).rstrip("\n"))


def register(app: typer.Typer) -> None:
    """Add ``fleetchat workflow`` to the app."""
    app.add_typer(workflow_app, name="workflow", rich_help_panel=PANEL)
