"""``fleetchat demo``: an embedded hub and a simulated factory cell, in one process.

The hub runs on a SQLite file in a temporary directory (or ``url``) and serves HTTP and
WebSocket on a free local port. The cell's machines and its planner are SDK agents on that
port, each in its own asyncio task; nothing of theirs calls into the hub directly. The view
and the final report observe the hub (its scheduler's loads, and the task records over REST).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console

from fleetchat.client import HubClient
from fleetchat.config import HubSettings, RegistrySettings, TaskSettings
from fleetchat.demo.cell import CellSpec, build_cell
from fleetchat.demo.journal import Journal
from fleetchat.demo.machines import Machine, MobileRobot
from fleetchat.demo.planner import Planner, make_orders
from fleetchat.demo.report import (
    Report,
    allocation_quality,
    check_dock,
    check_orders,
    latencies,
    percentile,
    reassignments,
    recovery_times,
    utilisation,
)
from fleetchat.demo.view import HeadlessView, LiveView, print_report
from fleetchat.hub import Hub
from fleetchat.server.app import HubServer
from fleetchat.tasks.policy import AllocationPolicy

__all__ = ["DemoOptions", "run_demo"]


@dataclass(frozen=True, slots=True)
class DemoOptions:
    agents: int = 20
    """Agents in the cell, the planner included (at least 8). Default 20."""
    orders: int = 30
    """Orders the planner receives. Default 30."""
    speed: float = 6.0
    """Time scale: simulated seconds per wall second. Default 6."""
    seed: int = 7
    """Fixes the cell, the order stream, the faults and every duration. Default 7."""
    headless: bool = False
    """Plain lines for CI instead of the live view, and a final ``RESULT {json}`` line."""
    url: str | None = None
    """The hub's backend; None: a SQLite file in a temporary directory."""


async def run_demo(options: DemoOptions, console: Console | None = None) -> Report:
    """Run the cell until every order has ended (or a time limit), print the report and
    return it; ``report.ok`` is False when an invariant broke."""
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="fleetchat-demo-") as tmp:
        settings = HubSettings(
            url=options.url or f"sqlite:///{tmp}/demo.db",
            registry=RegistrySettings(heartbeat_interval=0.5),
            tasks=TaskSettings(offer_timeout=3.0, retry_backoff=0.2, retry_backoff_max=2.0),
        )
        async with Hub(settings) as hub, HubServer(hub, host="127.0.0.1", port=0) as server:
            report = await _run(hub, server.url, options, console)
    print_report(report, console, headless=options.headless)
    return report


async def _run(hub: Hub, url: str, options: DemoOptions, console: Console) -> Report:
    cell = build_cell(options.agents, options.orders, options.seed, options.speed)
    journal = Journal()
    machines: list[Machine] = [
        MobileRobot(spec, url, journal, cell)
        if spec.kind == "amr"
        else Machine(spec, url, journal, cell)
        for spec in cell.agents
    ]
    orders = make_orders(options.orders, options.seed, options.speed)
    planner = Planner(url, journal, cell, orders, _fault_injector(cell, machines, journal))
    title = (
        f"fleetchat demo: a factory cell of {len(machines) + 1} agents, {len(orders)} orders, "
        f"seed {options.seed}, speed x{options.speed:g}, hub at {url}"
    )
    view_type = HeadlessView if options.headless else LiveView
    await asyncio.gather(*(m.start() for m in machines))
    await planner.start()
    journal.log("info", _roll_call(cell))
    limit = (orders[-1].at if orders else 0.0) + 90.0
    try:
        async with view_type(journal, hub, console, title):
            try:
                async with asyncio.timeout(limit):
                    await planner.run()
            except TimeoutError:
                journal.log("info", f"time limit ({limit:.0f} s) reached with orders unfinished")
        ended = time.time()
        return await _report(url, cell, journal, hub, ended)
    finally:
        for closing in [planner.close(), *(m.close() for m in machines)]:
            with contextlib.suppress(Exception):
                await closing


def _roll_call(cell: CellSpec) -> str:
    kinds = Counter(a.kind for a in cell.agents)
    parts = ", ".join(f"{n} {k}" + "s" * (n > 1) for k, n in kinds.items())
    assert cell.faults is not None
    f = cell.faults
    return (
        f"online: {parts} and the planner; faults planned: {f.low_start} starts flat, "
        f"dock rush ({', '.join(f.rush)}) after order {f.rush_after}, a robot dies after "
        f"order {f.death_after}"
    )


def _fault_injector(
    cell: CellSpec, machines: list[Machine], journal: Journal
) -> Callable[[int], None]:
    faults = cell.faults
    robots = {m.id: m for m in machines if isinstance(m, MobileRobot)}
    rng = random.Random(f"{cell.seed}/faults")

    def on_submitted(n: int) -> None:
        if faults is None:
            return
        if n == faults.rush_after:
            journal.log("fault", f"dock rush: {', '.join(faults.rush)} run low at once")
            for robot in faults.rush:
                robots[robot].cold_soak(rng.uniform(14, 22))
        if n == faults.death_after:
            faults.armed = True
            journal.log("fault", "armed: the next robot to start a transport dies half-way")

    return on_submitted


async def _report(url: str, cell: CellSpec, journal: Journal, hub: Hub, ended: float) -> Report:
    async with HubClient(url) as rest:
        tasks = await rest.tasks.list(limit=10_000)
        agents = await rest.list_agents()
        health = await rest.ops.health()
        lost = [
            {"agent": i["agent"], "took": i["took"], "ok": i["ok"]}
            for i in await rest.ops.events(type="incident", limit=1000)
            if i.get("failure") == "agent_lost"
        ]
    by_id = {t.id: t for t in tasks}
    kinds = {a.id: a.kind for a in cell.agents}
    registry = hub.settings.registry
    policy = AllocationPolicy(
        load_threshold=registry.load_threshold, min_confidence=registry.min_confidence
    )
    lat = latencies(tasks)
    reasons = reassignments(tasks)
    problems = check_orders(journal.orders.values(), by_id)
    dock = check_dock(journal.dock.grants)
    if dock.overlaps or journal.dock.overlaps:
        problems.append(f"the dock had two robots at once ({dock.overlaps} times)")
    if not dock.tokens_increasing:
        problems.append("dock fencing tokens did not increase")
    for death in journal.deaths:
        if not any(i["agent"] == death and i["ok"] for i in lost):
            problems.append(f"{death}'s loss was not recorded as recovered")
    amrs = [a for a in journal.agents.values() if a.kind == "amr"]
    run_time = ended - journal.started
    charging = sum(a.charging_seconds for a in amrs) / (len(amrs) * run_time) if amrs else 0.0
    return Report(
        seconds=run_time,
        orders=len(journal.orders),
        orders_done=sum(o.completions for o in journal.orders.values()),
        tasks=len(tasks),
        tasks_done=sum(t.state == "succeeded" for t in tasks),
        task_states=dict(Counter(t.state for t in tasks)),
        latency_p50=percentile(lat, 50),
        latency_p99=percentile(lat, 99),
        reassigned=sum(reasons.values()),
        reasons=dict(reasons),
        utilisation=utilisation(tasks, kinds, journal.started, ended, journal.deaths),
        charging_share=charging,
        quality=allocation_quality(tasks, agents, policy, journal.deaths),
        dock=dock,
        dock_waiting_max=journal.dock_waiting_max,
        declines=journal.declines,
        deaths=sorted(journal.deaths),
        recovery=recovery_times(tasks, journal.deaths),
        health=health.status,
        incidents=lost,
        problems=problems,
    )
