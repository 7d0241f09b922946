"""What the demo shows: a rich live view of the cell, or plain lines for CI (``--headless``),
and the final report.

The view reads the journal the simulated agents keep and, for loads and task states, the
hub's scheduler (in this process): it observes, it never acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from fleetchat.demo.journal import Journal
    from fleetchat.demo.report import Report
    from fleetchat.hub import Hub

__all__ = ["HeadlessView", "LiveView", "print_report"]

_STATE_STYLE = {
    "idle": "dim",
    "working": "green",
    "waiting-dock": "yellow",
    "charging": "cyan",
    "dead": "bold red",
}
_EVENT_STYLE = {
    "fault": "bold red",
    "recover": "bold magenta",
    "decline": "yellow",
    "dock": "cyan",
    "order": "green",
}


def _task_counts(hub: Hub, journal: Journal) -> dict[str, int]:
    counts = Counter(t.state for t in hub.scheduler.view())
    counts["succeeded"] = sum(o.step for o in journal.orders.values())
    return {s: counts[s] for s in ("queued", "offered", "accepted", "running", "succeeded")}


def _orders_done(journal: Journal) -> int:
    return sum(o.completions for o in journal.orders.values())


class _View:
    def __init__(self, journal: Journal, hub: Hub, console: Console, title: str) -> None:
        self.journal = journal
        self.hub = hub
        self.console = console
        self.title = title
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _View:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.final()

    async def _loop(self) -> None:
        raise NotImplementedError

    def final(self) -> None:
        """Show the last state once more (the loop may have missed the end)."""


class HeadlessView(_View):
    """Every journal event as one plain line, and a status line every two seconds."""

    def __init__(self, journal: Journal, hub: Hub, console: Console, title: str) -> None:
        super().__init__(journal, hub, console, title)
        self._printed = 0

    async def _loop(self) -> None:
        print(self.title, flush=True)
        ticks = 0
        while True:
            self._flush()
            if ticks % 8 == 0:
                self._status()
            ticks += 1
            await asyncio.sleep(0.25)

    def _flush(self) -> None:
        for event in self.journal.events[self._printed :]:
            print(f"{event.at:7.2f}s  {event.kind:<7} {event.text}", flush=True)
        self._printed = len(self.journal.events)

    def _status(self) -> None:
        j = self.journal
        counts = " ".join(f"{k} {v}" for k, v in _task_counts(self.hub, j).items())
        dock = ",".join(j.dock.occupants) or "free"
        print(
            f"{j.elapsed():7.2f}s  status  orders {_orders_done(j)}/{len(j.orders)} done; "
            f"tasks: {counts}; dock {dock} ({len(j.dock_waiting)} waiting)",
            flush=True,
        )

    def final(self) -> None:
        self._flush()
        self._status()


class LiveView(_View):
    """A rich live view: orders, tasks by state, every agent, the dock, recent events."""

    async def _loop(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=4) as live:
            try:
                while True:
                    await asyncio.sleep(0.25)
                    live.update(self.render())
            finally:
                live.update(self.render())  # the end, as it was

    def render(self) -> Group:
        j = self.journal
        done, total = _orders_done(j), len(j.orders)
        head = Table.grid(padding=(0, 2))
        head.add_row(
            Text(f"{j.elapsed():6.1f} s", style="bold"),
            Text(f"orders {done}/{total}"),
            ProgressBar(total=max(total, 1), completed=done, width=40),
        )
        counts = _task_counts(self.hub, j)
        tasks = Text("tasks  " + "  ".join(f"{k} {v}" for k, v in counts.items()), style="dim")
        body = Table.grid(padding=(0, 2))
        body.add_row(self._agents(), Group(self._dock(), self._events()))
        return Group(Panel(Group(head, tasks), title=self.title, title_align="left"), body)

    def _agents(self) -> Table:
        table = Table(title="agents", title_justify="left", show_edge=False, pad_edge=False)
        for name in ("agent", "state", "load", "battery", "done", "doing"):
            table.add_column(name, justify="right" if name in ("load", "done") else "left")
        for a in self.journal.agents.values():
            if a.kind == "planner":
                continue
            load = f"{self.hub.scheduler.load(a.id)}/{a.capacity}"
            battery = "" if a.battery is None else _battery(a.battery)
            style = _STATE_STYLE.get(a.state, "")
            table.add_row(
                a.id, Text(a.state, style=style), load, battery, str(a.done), escape(a.detail)
            )
        return table

    def _dock(self) -> Panel:
        j = self.journal
        holder = ", ".join(j.dock.occupants) or "free"
        last = j.dock.grants[-1].token if j.dock.grants else 0
        waiting = ", ".join(sorted(j.dock_waiting)) or "nobody"
        text = (
            f"holder [bold]{holder}[/]  (token {last}, {len(j.dock.grants)} grants)\n"
            f"waiting: {waiting}   overlaps: {j.dock.overlaps}"
        )
        return Panel(text, title=j.dock.name, title_align="left")

    def _events(self) -> Panel:
        lines = Text()
        for e in self.journal.recent:
            lines.append(f"{e.at:6.1f}s ", style="dim")
            lines.append(e.text + "\n", style=_EVENT_STYLE.get(e.kind, ""))
        return Panel(lines, title="recent events", title_align="left")


def _battery(level: float) -> Text:
    style = "red" if level < 30 else "yellow" if level < 60 else "green"
    return Text(f"{level:3.0f} %", style=style)


def _rows(report: Report) -> list[tuple[str, str]]:
    q, d = report.quality, report.dock
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.reasons.items())) or "none"
    util = ", ".join(f"{k} {v * 100:.0f} %" for k, v in report.utilisation.items())
    overlap = "NONE" if d.overlaps == 0 else f"{d.overlaps} OVERLAPS"
    recovery = ", ".join(f"{s * 1000:.0f} ms" for s in report.recovery) or "-"
    return [
        ("run time", f"{report.seconds:.1f} s"),
        ("orders done", f"{report.orders_done}/{report.orders}"),
        ("tasks done", f"{report.tasks_done}/{report.tasks}"),
        ("task latency p50 / p99", f"{report.latency_p50:.2f} / {report.latency_p99:.2f} s"),
        ("reassignments", f"{report.reassigned} ({reasons})"),
        ("offers declined", f"{report.declines}"),
        ("robots died", ", ".join(report.deaths) or "none"),
        ("death to task running elsewhere", recovery),
        (
            "failure detection",
            ", ".join(
                f"{i['agent']} lost, recovered in {i['took'] * 1000:.0f} ms"
                + ("" if i["ok"] else " (NOT RECOVERED)")
                for i in report.incidents
            )
            or "no agent lost",
        ),
        ("hub health at the end", report.health),
        ("utilisation", util),
        ("amr time on the dock", f"{report.charging_share * 100:.0f} %"),
        (
            "assignment quality",
            f"{q.ratio * 100:.2f} % of the optimum ({q.decisions} decisions in {q.rounds} "
            f"rounds, {q.below} below)",
        ),
        (
            "dock grants",
            f"{d.grants}, tokens {'increasing' if d.tokens_increasing else 'NOT INCREASING'}, "
            f"at most {report.dock_waiting_max} waiting; two holders at once: {overlap}",
        ),
        ("invariants", "ok" if report.ok else "BROKEN: " + "; ".join(report.problems)),
    ]


def print_report(report: Report, console: Console, *, headless: bool) -> None:
    """The final report: a table, or plain lines ending with ``RESULT {json}``."""
    if headless:
        print("report", flush=True)
        for label, value in _rows(report):
            print(f"  {label}: {value}", flush=True)
        result: dict[str, Any] = report.to_json()
        print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
        return
    console.print()
    table = Table(title="factory cell: final report", title_justify="left")
    table.add_column("measure")
    table.add_column("value")
    for label, value in _rows(report):
        style = "bold red" if label == "invariants" and not report.ok else ""
        table.add_row(label, Text(value, style=style))
    console.print(table)
