"""``fleetchat tasks submit|list|get|cancel``: tasks on a running hub (REST).

Like the other remote commands: ``--hub`` (env ``FLEETCHAT_HUB``), ``--token`` (env
``FLEETCHAT_TOKEN``), ``--json``; errors print as ``error [code] message`` with exit 1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
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
from fleetchat.errors import InvalidInputError

if TYPE_CHECKING:
    from fleetchat.tasks.records import TaskRecord

__all__ = ["register", "tasks_app"]

tasks_app = typer.Typer(
    help="Tasks for the fleet: submit, list, get, cancel.", no_args_is_help=True
)

TaskArg = Annotated[str, typer.Argument(help="The task's id.")]
_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "dim",
    "running": "cyan",
    "offered": "yellow",
    "accepted": "yellow",
}


def parse_requirements(items: list[str]) -> dict[str, float]:
    """``["weld=1.0", "inspect"]`` -> ``{"weld": 1.0, "inspect": 1.0}``."""
    required: dict[str, float] = {}
    for item in items:
        name, sep, weight = item.partition("=")
        try:
            required[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise InvalidInputError(
                f"--require {item!r}: the weight must be a number (name=weight)", field="require"
            ) from None
    return required


def _payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"--payload is not JSON: {exc}", field="payload") from None


def _mode(mode: str | None) -> Literal["best", "batch", "auction"] | None:
    if mode not in (None, "best", "batch", "auction"):
        raise InvalidInputError("--mode must be best, batch or auction", field="mode")
    return cast('Literal["best", "batch", "auction"] | None', mode)


def _state(task: TaskRecord) -> str:
    style = _STYLE.get(task.state)
    return f"[{style}]{task.state}[/{style}]" if style else task.state


def _show(task: TaskRecord) -> None:
    holder = f" held by {task.holder}" if task.holder else ""
    out.print(f"task {task.id}: {_state(task)}{holder} ({task.priority}, attempt {task.attempt})")
    if task.progress is not None and not task.terminal:
        out.print(f"  progress: {task.progress:.0%}")
    if task.reason:
        out.print(f"  reason: {task.reason}", markup=False)
    if task.state == "succeeded":
        out.print(f"  result: {json.dumps(task.result)}", markup=False)
    if task.error:
        out.print(f"  error: {task.error}", markup=False)


@tasks_app.command("submit")
def submit(
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require", "-r", help="A required capability, name=weight (repeat for more)."
        ),
    ] = None,
    payload: Annotated[str | None, typer.Option(help="The task's payload, as JSON.")] = None,
    priority: Annotated[str, typer.Option(help="critical, high, normal or low.")] = "normal",
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key: submit once, whatever retries.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="best (default), batch or auction.")] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Only this agent may take it.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Start-to-close seconds (default 30).")
    ] = None,
    heartbeat: Annotated[
        float | None, typer.Option(help="Longest silence while running, in seconds.")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", help="Attempts after a failed one (default 3).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the end; print the result.")] = (
        False
    ),
    wait_timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Submit a task and print its id; with --wait, wait for it to end (exit 1 unless it
    succeeded)."""

    async def main() -> TaskRecord:
        from fleetchat.client import HubClient

        required = parse_requirements(require or [])
        async with HubClient(hub, token) as rest:
            task = await rest.tasks.submit(
                required,
                payload=_payload(payload),
                priority=priority,
                idempotency_key=key,
                mode=_mode(mode),
                agent_id=agent,
                start_to_close=timeout,
                heartbeat=heartbeat,
                max_retries=retries,
            )
            if wait:
                if not json_:
                    err.print(f"submitted {task.id}; waiting for it to end")
                task = await rest.tasks.wait(task.id, wait_timeout)
            return task

    task = _run(main)
    if json_:
        _dump(task)
    elif wait:
        _show(task)
    else:
        out.print(task.id)
    if wait and task.state != "succeeded":
        raise typer.Exit(1)


@tasks_app.command("list")
def list_(
    state: Annotated[
        str | None,
        typer.Option(help="Only this state (queued, offered, ..., cancelled) or active."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Most tasks, oldest first.")] = 100,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """List tasks: id, state, priority, holder, attempts, age."""

    async def main() -> list[TaskRecord]:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.tasks.list(state=state, limit=limit)

    found = _run(main)
    if json_:
        _dump(found)
        return
    # ids are copied into other commands: shown whole, the other columns give way
    id_column = Column("ID", no_wrap=True, min_width=max((len(t.id) for t in found), default=2))
    table = Table(id_column, "STATE", "PRIORITY", "HOLDER", "ATTEMPTS", "AGE", box=None)
    for t in found:
        attempts = f"{t.attempt}/{t.max_retries + 1}"
        table.add_row(
            t.id, _state(t), str(t.priority), t.holder or "-", attempts, _age(t.created_at)
        )
    out.print(table)


@tasks_app.command("get")
def get(
    task_id: TaskArg, json_: JsonOpt = False, hub: HubOpt = DEFAULT_HUB, token: TokenOpt = None
) -> None:
    """Print a task: its state, holder, every attempt, and its result or error."""

    async def main() -> TaskRecord:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.tasks.get(task_id)

    task = _run(main)
    if json_:
        _dump(task)
        return
    _show(task)
    required = ", ".join(f"{name}={weight:g}" for name, weight in task.required.items())
    out.print(f"  required: {required or '-'}  submitted {_age(task.created_at)}", markup=False)
    for n, a in enumerate(task.attempts, 1):
        ended = f" -> {a.outcome}" if a.outcome else ""
        why = f" ({a.reason})" if a.reason and a.reason != a.outcome else ""
        out.print(f"  attempt {n}: {a.agent}{ended}{why}", markup=False)


@tasks_app.command("cancel")
def cancel(
    task_id: TaskArg,
    reason: Annotated[str | None, typer.Option(help="Why (kept on the task).")] = None,
    json_: JsonOpt = False,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = None,
) -> None:
    """Cancel a task that has not ended; its holder is told to stop."""

    async def main() -> TaskRecord:
        from fleetchat.client import HubClient

        async with HubClient(hub, token) as rest:
            return await rest.tasks.cancel(task_id, reason)

    task = _run(main)
    if json_:
        _dump(task)
    else:
        out.print(f"cancelled {task.id}")


def register(app: typer.Typer) -> None:
    """Add ``fleetchat tasks`` to the app."""
    app.add_typer(tasks_app, name="tasks", rich_help_panel=PANEL)
