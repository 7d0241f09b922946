#!/usr/bin/env python
"""fleetchat backup benchmark: backup time, file size and the publish stall during a backup.

    python benchmarks/backup.py [--messages 1000000] [--runs 3] [--rate 1000] [--json]

An embedded hub (SQLite, default settings but ``retention_count`` large enough to keep every
message, a new file in a temporary directory on the local disk) is filled with ``--messages``
messages (1,000,000) over ``CHANNELS`` (10) channels, published in batches of 1,000 straight
to the bus (one group commit each); bodies are about 100 bytes of JSON.

Then, per run (``--runs``, default 3; every figure is the median over the runs):

* baseline: one publisher awaiting each ack publishes to a channel without members at a steady
  ``--rate`` (1,000 /s: the send times are fixed in advance, a late send goes at once) for
  ``BASELINE_SECONDS`` (5 s); the ack latency of each publish (``hub.publish`` call to return,
  which is after the commit) is recorded;
* backup: the same publisher, at the same rate, while ``hub.ops.backups.backup()`` runs (the
  ``VACUUM INTO`` copy and its digests in a process of its own), from its start to its end.

Reported: backup seconds and file size; ack p50 / p99 / max with and without the backup;
``p99 increase`` = p99 during the backup - p99 without (the issue's target: under 5 ms);
``stall`` = the longest ack during the backup. ``--json`` prints one JSON object on stdout
(the table then goes to stderr). Results: docs/performance.md, section "Backups".
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, os.path.dirname(__file__))

import _common as common
from _common import fmt, log, percentile

from fleetchat import Hub, HubSettings
from fleetchat.config import ChatSettings
from fleetchat.models import Message
from fleetchat.types import new_id

CHANNELS = 10
BATCH = 1000
BASELINE_SECONDS = 5.0
TARGETS = [
    ("backup.p99_increase_ms", "<", 5.0, "publish-ack p99 increase during a backup (ms)"),
]


async def fill(hub: Hub, total: int) -> float:
    """``total`` messages over ``CHANNELS`` channels; returns the seconds it took."""
    names = [f"fill-{i}" for i in range(CHANNELS)]
    for name in names:
        await hub.channels.create(name, announce=False)
    started = time.perf_counter()
    pad = "x" * 64
    now = hub.clock.time()
    for start in range(0, total, BATCH):
        count = min(BATCH, total - start)
        batch = [
            Message(
                id=new_id(),
                channel=names[(start // BATCH) % CHANNELS],
                sender="filler",
                kind="chat",
                body={"n": start + i, "pad": pad},
                created_at=now,
            )
            for i in range(count)
        ]
        await hub.bus.publish(batch, 30.0)
        if start and start % 100_000 == 0:
            log(f"  filled {start:,}")
    return time.perf_counter() - started


async def steady(hub: Hub, rate: float, until: asyncio.Future[Any] | float) -> list[float]:
    """Publish at ``rate`` until the future is done (or for that many seconds); ack latencies
    in ms."""
    latencies: list[float] = []
    interval = 1.0 / rate
    begin = time.perf_counter()
    i = 0
    while True:
        if isinstance(until, float):
            if time.perf_counter() - begin >= until:
                break
        elif until.done():
            break
        due = begin + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        await hub.publish("steady", i, sender="bench")
        latencies.append((time.perf_counter() - sent) * 1000)
        i += 1
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


async def one_run(hub: Hub, rate: float) -> dict[str, float]:
    base = summary(await steady(hub, rate, BASELINE_SECONDS))
    backup = asyncio.ensure_future(hub.ops.backups.backup())
    during = summary(await steady(hub, rate, backup))
    info = await backup
    await asyncio.to_thread(os.unlink, info.file)
    assert info.seconds is not None
    return {
        "backup_seconds": info.seconds,
        "file_mb": info.bytes / 1e6,
        "messages": info.counts["messages"],
        "base_p50_ms": base["p50_ms"],
        "base_p99_ms": base["p99_ms"],
        "base_max_ms": base["max_ms"],
        "during_p50_ms": during["p50_ms"],
        "during_p99_ms": during["p99_ms"],
        "stall_ms": during["max_ms"],
        "during_publishes": during["n"],
        "p99_increase_ms": during["p99_ms"] - base["p99_ms"],
    }


async def run(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    chat = ChatSettings(retention_count=max(args.messages, 100_000))
    settings = dataclasses.replace(HubSettings(url=f"sqlite:///{db}"), chat=chat)
    async with Hub(settings) as hub:
        log(f"filling {args.messages:,} messages")
        fill_seconds = await fill(hub, args.messages)
        await hub.channels.create("steady", announce=False)
        runs = []
        for n in range(args.runs):
            log(f"run {n + 1}/{args.runs}")
            runs.append(await one_run(hub, args.rate))
            log(f"  {json.dumps({k: round(v, 3) for k, v in runs[-1].items()})}")
    figures = common.median_figures(runs)
    figures.update(fill_seconds=fill_seconds, rate=args.rate, runs=args.runs)
    return {"backup": figures, "per_run": runs}


def main() -> None:
    p = common.parser(__doc__, quick=None)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=1000.0, help="publishes per second")
    args = common.parse(p)
    with tempfile.TemporaryDirectory(prefix="fleetchat-bench-backup-") as tmp:
        db = Path(tmp) / "bench.db"
        result = uvloop.run(run(args, db))
        result["backup"]["db_mb"] = db.stat().st_size / 1e6
    f = result["backup"]
    targets = common.targets_met(result, TARGETS)
    rows = [
        (
            "hub",
            f"{int(f['messages']):,} messages",
            f"db {f['db_mb']:.0f} MB, filled in {f['fill_seconds']:.1f} s",
        ),
        ("backup", f"{f['backup_seconds']:.2f} s", f"file {f['file_mb']:.0f} MB"),
        (
            "ack without backup",
            f"p99 {fmt(f['base_p99_ms'])} ms",
            f"p50 {fmt(f['base_p50_ms'])} ms, max {fmt(f['base_max_ms'])} ms",
        ),
        (
            "ack during backup",
            f"p99 {fmt(f['during_p99_ms'])} ms",
            f"p50 {fmt(f['during_p50_ms'])} ms, {int(f['during_publishes'])} publishes",
        ),
        ("p99 increase", f"{fmt(f['p99_increase_ms'])} ms", f"at {f['rate']:g} publishes/s"),
        ("stall (max ack during backup)", f"{fmt(f['stall_ms'])} ms", ""),
    ]
    title = f"backup, median of {args.runs} run(s)"
    common.print_report(title, rows, targets, to_stderr=args.json)
    if args.json:
        result["targets"] = targets
        result["machine"] = common.machine()
        common.write_json(result, indent=None)


if __name__ == "__main__":
    main()
