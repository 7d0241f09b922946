#!/usr/bin/env python
"""What one Prometheus scrape of ``/metrics`` costs on a loaded hub.

    python benchmarks/metrics.py [--tasks 10000] [--agents 1000] [--scrapes 20] [--json]
                                 [--url sqlite|memory]

A hub on a fresh SQLite file (or ``memory://``) behind a real HubServer on a free port, with
``--agents`` registered agents (half offline, a tenth draining, the rest available) and
``--tasks`` tasks (a fifth cancelled, the rest queued: they need a capability no agent has, so
they stay), then ``--scrapes`` GETs of ``/metrics`` over HTTP, one after another, timed from
request to the last byte. The first scrape reads the unfinished tasks once (the seed of the
live counts); later ones read no task at all. ``/v1/stats`` is timed the same way. For scale,
the time of one full read of every task (what a scrape that counted tasks by reading them would
cost) is shown too. ``--json`` prints one JSON object on stdout (the table goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from _common import console, parse, parser, write_json
from prometheus_client.parser import text_string_to_metric_families

from fleetchat import Hub, HubSettings
from fleetchat.config import ServerSettings
from fleetchat.server import HubServer


async def _timed_get(http: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with http.get(url) as r:
        body = await r.read()
        assert r.status == 200, body[:200]
    return time.perf_counter() - started, body


def _tasks_by_state(exposition: bytes) -> dict[str, float]:
    """What the scrape said: fleetchat_tasks and fleetchat_tasks_finished, by state."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        if family.name in ("fleetchat_tasks", "fleetchat_tasks_finished"):
            for sample in family.samples:
                if sample.value:
                    out[sample.labels["state"]] = sample.value
    return out


async def _fill(hub: Hub, agents: int, tasks: int) -> None:
    for i in range(agents):
        await hub.registry.register(f"amr-{i}", capabilities={"carry": 0.9}, capacity=2)
    for i in range(agents):
        if i % 2:
            hub.registry.mark_offline(f"amr-{i}")
        elif i % 10 == 0:
            await hub.registry.set_draining(f"amr-{i}")
    batch = []
    for i in range(tasks):
        batch.append(hub.tasks.submit({"paint": 1.0}, payload=i, must_be_satisfiable=False))
        if len(batch) == 500:
            submitted = await asyncio.gather(*batch)
            for t in submitted[:100]:  # a fifth finish (cancelled)
                await hub.tasks.cancel(t.id, "benchmark")
            batch = []
    await asyncio.gather(*batch)


async def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    url = "memory://" if args.url == "memory" else f"sqlite:///{directory / 'hub.db'}"
    settings = HubSettings(url=url, server=ServerSettings(auth=False))
    async with (
        Hub(settings) as hub,
        HubServer(hub, port=0) as server,
        aiohttp.ClientSession() as http,
    ):
        started = time.perf_counter()
        await _fill(hub, args.agents, args.tasks)
        fill = time.perf_counter() - started
        first, body = await _timed_get(http, server.url + "/metrics")
        scrapes = [
            (await _timed_get(http, server.url + "/metrics"))[0] for _ in range(args.scrapes)
        ]
        stats = [(await _timed_get(http, server.url + "/v1/stats"))[0] for _ in range(args.scrapes)]
        started = time.perf_counter()
        everything = await hub.store.load_tasks()
        full_read = time.perf_counter() - started
    return {
        "url": args.url,
        "agents": args.agents,
        "tasks": len(everything),
        "fill_s": fill,
        "first_scrape_ms": first * 1000,
        "scrape_ms_median": statistics.median(scrapes) * 1000,
        "scrape_ms_max": max(scrapes) * 1000,
        "stats_ms_median": statistics.median(stats) * 1000,
        "exposition_bytes": len(body),
        "tasks_by_state": _tasks_by_state(body),
        "full_task_read_ms": full_read * 1000,
    }


def report(r: dict[str, Any], to_stderr: bool) -> None:
    from rich.table import Table

    table = Table(title=f"/metrics on {r['url']}: {r['tasks']:,} tasks, {r['agents']:,} agents")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("first scrape (seeds the task counts)", f"{r['first_scrape_ms']:.1f} ms"),
        ("scrape, median", f"{r['scrape_ms_median']:.2f} ms"),
        ("scrape, slowest", f"{r['scrape_ms_max']:.2f} ms"),
        ("/v1/stats, median", f"{r['stats_ms_median']:.2f} ms"),
        ("exposition size", f"{r['exposition_bytes']:,} bytes"),
        (
            "tasks by state, as scraped",
            ", ".join(f"{k} {v:,.0f}" for k, v in r["tasks_by_state"].items()),
        ),
        ("one full read of every task (avoided)", f"{r['full_task_read_ms']:.1f} ms"),
        ("filling the hub", f"{r['fill_s']:.1f} s"),
    ]
    for row in rows:
        table.add_row(*row)
    console(to_stderr).print(table)


def main() -> None:
    p = parser(__doc__, quick=None, runs=False)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--agents", type=int, default=1_000)
    p.add_argument("--scrapes", type=int, default=20)
    p.add_argument("--url", choices=("sqlite", "memory"), default="sqlite")
    args = parse(p)
    with tempfile.TemporaryDirectory() as directory:
        result = uvloop.run(run(args, Path(directory)))
    report(result, to_stderr=args.json)
    if args.json:
        write_json(result, indent=None)


if __name__ == "__main__":
    main()
