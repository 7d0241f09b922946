"""The embedded demo: a simulated factory fleet talking through one hub.

Twenty-odd agents (mobile robots, arms, cameras, planners) share task channels, a telemetry
stream and an alert channel, with every priority in use. A legacy controller joins a channel
but never acks, so its deliveries are retried and dead-lettered; one robot stops sending
heartbeats and goes offline. At the end the delivery metrics are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fleetchat import ChatSettings, Hub, HubSettings, Priority, QosSettings, RegistrySettings
from fleetchat.hub import parse_url

console = Console()

KINDS = {
    "amr": {"navigate": 0.95, "transport": 0.9},
    "arm": {"pick": 0.92, "place": 0.9, "weld": 0.6},
    "cam": {"inspect": 0.97, "detect": 0.9},
}


def fresh_database(url: str) -> None:
    """Delete the demo's SQLite file (and its WAL) so every run starts clean."""
    kind, path = parse_url(url)
    if kind == "sqlite" and path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def run_demo(*, seconds: float, n_agents: int, url: str) -> None:
    # A short ack timeout so the silent member's retries and dead letter fit in the run.
    qos = {p: QosSettings(ack_timeout=1.0, max_attempts=3) for p in Priority}
    settings = HubSettings(
        url=url,
        chat=ChatSettings(qos=qos),
        registry=RegistrySettings(heartbeat_interval=0.5),
    )
    n_agents = max(n_agents, 20)
    async with Hub(settings) as hub:
        await _run(hub, seconds, n_agents)


async def _run(hub: Hub, seconds: float, n_agents: int) -> None:
    rng = random.Random(7)
    console.rule("[bold]fleetchat demo[/bold]: an embedded hub and a simulated factory fleet")
    await hub.channels.create("cell-1", type="task")
    await hub.channels.create("cell-2", type="task")
    await hub.channels.create("alerts", type="broadcast", announce=False)
    await hub.channels.create("telemetry", type="broadcast", ephemeral=True, announce=False)

    robots: list[str] = []
    kinds = ["amr", "arm", "cam"]
    for i in range(n_agents - 3):
        kind = kinds[i % 3]
        robots.append(f"{kind}-{i // 3 + 1:02d}")
    planners = ["planner-a", "planner-b"]
    for agent_id in robots:
        kind = agent_id.split("-")[0]
        caps = {k: round(v - rng.random() * 0.1, 2) for k, v in KINDS[kind].items()}
        await hub.registry.register(
            agent_id,
            capabilities=caps,
            capacity=2,
            performance=round(0.7 + rng.random() * 0.3, 2),
            labels={"kind": kind},
            resources={"battery": 100},
        )
    console.print(
        f"registered [bold]{len(robots)}[/bold] robots; 2 planners, a fleet monitor and a "
        "legacy controller that never acks join too"
    )

    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    offline_robot = robots[-1]
    for agent_id in robots:
        cell = "cell-1" if int(agent_id[-2:]) % 2 else "cell-2"
        sub = await hub.subscribe(agent_id, cell, "alerts")
        tasks.append(
            asyncio.ensure_future(_robot(hub, agent_id, sub, stop, rng, agent_id == offline_robot))
        )
    for planner in planners:
        await hub.subscribe(planner, "cell-1", "cell-2", "alerts")
        tasks.append(asyncio.ensure_future(_planner(hub, planner, stop, rng)))
    # A fleet monitor reads the telemetry stream in batches.
    monitor = await hub.subscribe("fleet-monitor", "telemetry")
    tasks.append(asyncio.ensure_future(_monitor(monitor)))
    # The legacy controller joins cell-1 but never acks: retries, then dead letters.
    legacy = await hub.subscribe("legacy-plc", "cell-1")
    tasks.append(asyncio.ensure_future(_silent(legacy, stop)))
    events = hub.registry.events()
    tasks.append(asyncio.ensure_future(_watch_events(events, stop)))

    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(min(2.0, max(seconds - (time.monotonic() - started), 0.01)))
        s = hub.metrics.snapshot()
        console.print(
            f"[dim]{time.monotonic() - started:5.1f}s[/dim] pub {s.published:6d}  "
            f"acked {s.delivered:7d}  retries {s.retries:4d}  dlq {s.dead_lettered:4d}  "
            f"req {s.requests:4d}  p99 {s.latency_p99_ms:5.2f} ms"
        )
    stop.set()
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    events.close()
    await _report(hub)


async def _robot(
    hub: Hub,
    agent_id: str,
    sub: object,
    stop: asyncio.Event,
    rng: random.Random,
    goes_offline: bool,
) -> None:
    from fleetchat import Subscription

    assert isinstance(sub, Subscription)
    battery = 100.0
    beats = 0

    async def work() -> None:
        async for d in sub:
            if d.message.kind == "request":
                await d.reply({"accepted": True, "eta_s": round(rng.uniform(1, 9), 1)})
            else:
                await d.ack()

    worker = asyncio.ensure_future(work())
    try:
        while not stop.is_set():
            beats += 1
            battery -= rng.random() * 0.5
            if not (goes_offline and beats > 25):
                hub.registry.heartbeat(agent_id, resources={"battery": round(battery, 1)})
            await hub.publish(
                "telemetry",
                {"battery": round(battery, 1), "x": rng.random(), "y": rng.random()},
                sender=agent_id,
                priority="low",
            )
            if agent_id.startswith("cam") and rng.random() < 0.05:
                await hub.publish(
                    "alerts",
                    {"defect": f"lot-{rng.randint(1, 99)}"},
                    sender=agent_id,
                    priority="critical",
                )
            await asyncio.sleep(0.2)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def _planner(hub: Hub, planner: str, stop: asyncio.Event, rng: random.Random) -> None:
    jobs = [{"pick": 1.0, "place": 0.5}, {"navigate": 1.0, "transport": 1.0}, {"inspect": 1.0}]
    while not stop.is_set():
        need = rng.choice(jobs)
        best = hub.registry.find_best_agents(need, limit=1)
        cell = rng.choice(["cell-1", "cell-2"])
        await hub.publish(
            cell, {"job": list(need), "status": "planning"}, sender=planner, priority="high"
        )
        await hub.publish(cell, {"note": "shift update"}, sender=planner, priority="normal")
        if best:
            with contextlib.suppress(Exception):
                await hub.request(best[0].agent.id, {"job": need}, sender=planner, timeout=2.0)
        await asyncio.sleep(0.05)


async def _monitor(sub: object) -> None:
    from fleetchat import Subscription

    assert isinstance(sub, Subscription)
    while True:
        batch = await sub.fetch(timeout=1.0)
        if batch is not None:
            await batch.ack()


async def _silent(sub: object, stop: asyncio.Event) -> None:
    from fleetchat import Subscription

    assert isinstance(sub, Subscription)
    while not stop.is_set():
        await sub.fetch(timeout=0.5)  # takes deliveries, never acks


async def _watch_events(events: object, stop: asyncio.Event) -> None:
    from fleetchat.registry.agents import EventStream

    assert isinstance(events, EventStream)
    async for event in events:
        if event.kind in ("offline", "online"):
            console.print(f"[yellow]registry[/yellow]: {event.agent_id} is {event.kind}")


async def _report(hub: Hub) -> None:
    s = hub.metrics.snapshot()
    table = Table(title="delivery metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("messages published", f"{s.published:,}"),
        ("deliveries acked", f"{s.delivered:,}"),
        ("delivery success rate", f"{s.success_rate * 100:.2f} %"),
        (
            "latency avg / p50 / p99",
            f"{s.latency_avg_ms:.2f} / {s.latency_p50_ms:.2f} / {s.latency_p99_ms:.2f} ms",
        ),
        ("retries", f"{s.retries:,}"),
        ("dead letters", f"{s.dead_lettered:,}"),
        ("expired / dropped", f"{s.expired:,} / {s.dropped:,}"),
        (
            "requests (timeouts, late replies)",
            f"{s.requests:,} ({s.request_timeouts}, {s.late_replies})",
        ),
    ]
    for p in Priority:
        rows.append(
            (
                f"published / acked, {p}",
                f"{s.published_by_priority[p]:,} / {s.delivered_by_priority[p]:,}",
            )
        )
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    letters = await hub.dead_letters(limit=1000)
    by_member: dict[str, int] = {}
    for letter in letters:
        by_member[letter.member] = by_member.get(letter.member, 0) + 1
    if letters:
        first = letters[0]
        console.print(
            f"dead letters: {dict(by_member)}; e.g. {first.message.channel}#{first.message.seq} "
            f"for {first.member}: {first.reason} after {first.attempts} attempts"
        )
    status = {
        st: len(hub.registry.list(status=st)) for st in ("available", "busy", "draining", "offline")
    }
    console.print(f"registry: {status}")
