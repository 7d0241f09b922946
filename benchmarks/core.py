#!/usr/bin/env python
"""fleetchat core benchmarks: fan-out, durable publish, request/reply, registry.

    python benchmarks/core.py [--quick] [--json] [--runs 3] [--only NAME ...]

Every figure is the median of ``--runs`` runs (default 3); each run opens a fresh hub (and, for
SQLite, a fresh database file in a temporary directory on the local disk). ``--json`` prints
exactly one JSON object on stdout (the table then goes to stderr). ``--only`` runs some sections
(fanout, publish, publish-serial, request, memory, subscribe, register) or one scenario for
profiling, e.g. ``--only fanout:ephemeral:100`` or ``--only publish:normal``. See
docs/performance.md for results and profiles.

How load is generated
---------------------
Fan-out: one channel, N subscribers (agents ``sub-0..N-1``), one sender ``pub`` that is not a
member, so every publish makes N deliveries. Each subscriber runs one consumer coroutine:
``fetch(max_items=256)`` then ``batch.ack()`` until it has acked every message. The publisher
side is a closed loop with a window: messages are cut into rounds of ``ROUND`` messages and
round r may only start once every subscriber has acked all of round r-2, so at most 2 x ROUND
messages are outstanding (published, not yet acked by everyone). The window stays below the
member queue limit (1000), so deliveries take the direct-push path instead of being paged back
in from the log. Ephemeral channels: one publisher coroutine (an ephemeral publish never yields
to the loop, so more coroutines would add nothing but switches); it publishes until the window
is full, then waits. Durable channels: ``PUBLISHERS`` (256) publisher coroutines, each awaiting
its ``hub.publish`` (which returns once the group commit holding it is done), so up to 256
publishes are in flight and one SQLite transaction commits up to 256 rows.
Rates: publishes/s = messages / elapsed and deliveries/s = messages x N / elapsed, where elapsed
runs from the first publish to the last ack of the last subscriber.

Unbatched fan-out (``fanout:ephemeral-unbatched:100``): the publisher yields to the loop after
every publish, so each subscriber is woken per message and fetches batches of about one: the
worst case for per-batch costs, and the shape of traffic trickling in from many clients.

Durable publish (N = 1): the same harness with one subscriber and 256 publisher coroutines
(``publish``) or one (``publish-serial``), for ``sync="normal"`` and ``sync="full"``; the rate
counts publishes whose ``hub.publish`` returned (committed), up to the last one returning;
latency is each ``hub.publish`` call, start to return.

Request/reply: one requester awaiting ``hub.request("responder", ...)`` in a loop and one
responder task doing ``d = await sub.next(); await d.reply(...)``, on ``memory://``.

Registry: tracemalloc heap deltas for 10,000 registered agents and for their 10,000
subscriptions on ``memory://`` (each ``hub.subscribe`` also creates the agent's ``@inbox``; the
agents join 10 channels of 1,000 members, because joining one channel costs O(members) today, so
10,000 joins of one channel take ~40 s: the ``subscribe`` section times 1,000 / 2,000 / 4,000
joins of one channel to show that growth; 1,000 / 2,000 with ``--quick``). Registration time
for 1,000 / 5,000 / 10,000 agents: on ``memory://`` one ``await register(...)`` after another
(it never waits), on SQLite ``asyncio.gather`` over chunks of 1,000 registrations so that they
share group commits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import _common as common
import uvloop
from _common import fmt, log, percentile, wanted

from fleetchat import Hub, HubSettings, StorageSettings

PUBLISHERS = 256  # concurrent publisher coroutines on durable channels
ROUND = 400  # messages per round; at most 2 rounds outstanding (window 800 < queue limit 1000)
FETCH = 256  # max_items per fetch
BODY = {"robot": "amr-17", "x": 12.5, "y": -3.25, "battery": 0.82, "state": "moving"}
CAPABILITIES = {"navigate": 0.9, "lift": 0.6, "scan": 0.75}
REGISTER_SIZES = (1_000, 5_000, 10_000)
MEMORY_AGENTS = 10_000
MEMORY_PER_CHANNEL = 1_000  # subscriptions per channel in the memory test (see subscribe_run)
SUBSCRIBE_SIZES = (1_000, 2_000, 4_000)
FANOUT_NS = (1, 10, 100, 1000)

# Targets from the issue: (key in the figures, op, bound, label).
TARGETS: list[tuple[str, str, float, str]] = [
    ("fanout.ephemeral.100.deliveries_per_s", ">=", 1_000_000, "ephemeral N=100 deliveries/s"),
    (
        "fanout.ephemeral-unbatched.100.deliveries_per_s",
        ">=",
        1_000_000,
        "same, batches of one (stress variant)",
    ),
    ("fanout.durable.100.deliveries_per_s", ">=", 500_000, "durable N=100 deliveries/s"),
    ("publish.normal.publishes_per_s", ">=", 50_000, "N=1 durable acked publishes/s (sync=normal)"),
    ("publish.full.publishes_per_s", ">=", 50_000, "N=1 durable acked publishes/s (sync=full)"),
    ("request.p50_us", "<=", 20, "request/reply p50 (us)"),
    ("register.memory.10000.seconds", "<", 1.0, "register 10,000 agents, memory:// (s)"),
    ("register.sqlite.10000.seconds", "<", 1.0, "register 10,000 agents, sqlite (s)"),
]


def sqlite_url(tmp: str) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(tmp, 'bench.db'))}"


async def subscribe_all(hub: Hub, names: list[str], channel: str, chunk: int = 250) -> list[Any]:
    subs: list[Any] = []
    for i in range(0, len(names), chunk):
        subs += await asyncio.gather(*(hub.subscribe(n, channel) for n in names[i : i + chunk]))
    return subs


# -- fan-out and durable publish ---------------------------------------------------------------


async def fanout_run(
    kind: str,
    n: int,
    total: int,
    *,
    publishers: int,
    sync: str = "normal",
    yield_each: bool = False,
) -> dict[str, float]:
    """One fan-out run; see the module docstring for the load model.

    ``yield_each``: the publisher yields to the loop after every publish, so consumers are woken
    per message and fetch batches of about one (the unbatched worst case).
    """
    with tempfile.TemporaryDirectory(prefix="fleetchat-bench-") as tmp:
        url = "memory://" if kind == "ephemeral" else sqlite_url(tmp)
        settings = HubSettings(url=url, storage=StorageSettings(sync=sync))  # type: ignore[arg-type]
        async with Hub(settings) as hub:
            await hub.channels.create("fan", ephemeral=kind == "ephemeral", announce=False)
            subs = await subscribe_all(hub, [f"sub-{i}" for i in range(n)], "fan")
            loop = asyncio.get_running_loop()
            rounds = math.ceil(total / ROUND)
            round_done = [loop.create_future() for _ in range(rounds)]
            reached = [0] * rounds

            async def consume(sub: Any) -> None:
                got = 0
                r = 0
                while got < total:
                    batch = await sub.fetch(FETCH, timeout=30.0)
                    if batch is None:
                        raise RuntimeError(f"{sub.agent_id} stalled at {got}/{total}")
                    got += len(batch)
                    await batch.ack()
                    while r < rounds and got >= min((r + 1) * ROUND, total):
                        reached[r] += 1
                        if reached[r] == n:
                            round_done[r].set_result(None)
                        r += 1

            ticket = 0
            lat: list[float] = []
            last_publish = 0.0
            perf = time.perf_counter

            async def publish_worker() -> None:
                nonlocal ticket, last_publish
                publish = hub.publish
                while ticket < total:
                    r = ticket // ROUND
                    ticket += 1
                    if r >= 2:
                        gate = round_done[r - 2]
                        if not gate.done():
                            await gate
                    t0 = perf()
                    await publish("fan", BODY, sender="pub")
                    t1 = perf()
                    lat.append(t1 - t0)
                    last_publish = t1
                    if yield_each:
                        await asyncio.sleep(0)

            consumers = [loop.create_task(consume(s)) for s in subs]
            await asyncio.sleep(0)  # let every consumer reach its first fetch
            gc.collect()
            t0 = perf()
            await asyncio.gather(*(publish_worker() for _ in range(publishers)))
            await asyncio.gather(*consumers)
            elapsed = perf() - t0
            snap = hub.delivery_metrics()
            if snap.delivered != total * n or snap.dropped:
                raise RuntimeError(f"lost deliveries: {snap}")
    return {
        "publishes_per_s": total / elapsed,
        "deliveries_per_s": total * n / elapsed,
        "acked_publishes_per_s": total / (last_publish - t0),
        "publish_p50_us": percentile(lat, 50) * 1e6,
        "publish_p99_us": percentile(lat, 99) * 1e6,
        "messages": total,
        "seconds": elapsed,
    }


# -- request/reply ---------------------------------------------------------------------------


async def request_run(count: int) -> dict[str, float]:
    async with Hub.open("memory://") as hub:
        sub = await hub.subscribe("responder")

        async def respond() -> None:
            while True:
                d = await sub.next()
                await d.reply({"ok": True, "echo": d.body["n"]})

        task = asyncio.get_running_loop().create_task(respond())
        request = hub.request
        perf = time.perf_counter_ns
        for i in range(min(count, 2000)):  # warm-up
            await request("responder", {"n": i}, sender="requester", timeout=5.0)
        gc.collect()
        lat: list[int] = []
        t0 = perf()
        for i in range(count):
            s = perf()
            await request("responder", {"n": i}, sender="requester", timeout=5.0)
            lat.append(perf() - s)
        elapsed = (perf() - t0) / 1e9
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {
        "p50_us": percentile(lat, 50) / 1e3,
        "p99_us": percentile(lat, 99) / 1e3,
        "requests_per_s": count / elapsed,
    }


# -- registry and memory ---------------------------------------------------------------------


async def memory_run(agents: int) -> dict[str, float]:
    """Heap bytes per registered agent and per subscription (tracemalloc, memory://)."""
    gc.collect()
    tracemalloc.start()
    try:
        async with Hub.open("memory://") as hub:
            for c in range(math.ceil(agents / MEMORY_PER_CHANNEL)):
                await hub.channels.create(f"fleet-{c}", announce=False)
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(agents):
                await hub.registry.register(f"agent-{i}", capabilities=CAPABILITIES, capacity=2)
            gc.collect()
            after_agents = tracemalloc.get_traced_memory()[0]
            subs = []
            for i in range(agents):
                subs.append(await hub.subscribe(f"agent-{i}", f"fleet-{i // MEMORY_PER_CHANNEL}"))
            gc.collect()
            after_subs = tracemalloc.get_traced_memory()[0]
            del subs
    finally:
        tracemalloc.stop()
    return {
        "bytes_per_agent": (after_agents - base) / agents,
        "bytes_per_subscription": (after_subs - after_agents) / agents,
    }


async def subscribe_run(n: int) -> float:
    """Seconds to subscribe ``n`` agents, one after another, to one channel (memory://)."""
    async with Hub.open("memory://") as hub:
        await hub.channels.create("fleet", announce=False)
        gc.collect()
        t0 = time.perf_counter()
        subs = [await hub.subscribe(f"agent-{i}", "fleet") for i in range(n)]
        elapsed = time.perf_counter() - t0
        assert len(subs) == n
    return elapsed


async def register_run(backend: str, n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fleetchat-bench-") as tmp:
        url = "memory://" if backend == "memory" else sqlite_url(tmp)
        async with Hub.open(url) as hub:
            register = hub.registry.register
            gc.collect()
            t0 = time.perf_counter()
            if backend == "memory":
                for i in range(n):
                    await register(f"agent-{i}", capabilities=CAPABILITIES, capacity=2)
            else:
                for lo in range(0, n, 1000):
                    await asyncio.gather(
                        *(
                            register(f"agent-{i}", capabilities=CAPABILITIES, capacity=2)
                            for i in range(lo, min(lo + 1000, n))
                        )
                    )
            elapsed = time.perf_counter() - t0
            assert len(hub.registry) == n
    return elapsed


# -- driver ----------------------------------------------------------------------------------


def fanout_messages(n: int, quick: bool) -> int:
    """Messages per fan-out run: about the same number of deliveries at every N."""
    deliveries = 300_000 if quick else 2_000_000
    return max(2 * ROUND, min(100_000 if not quick else 20_000, deliveries // n))


CPU_SHARES: dict[str, float] = {}


def median_of(
    runs: int, fn: Callable[[], Awaitable[Any]], label: str = ""
) -> Callable[[], Awaitable[Any]]:
    """Run ``fn`` ``runs`` times; the median of each figure. Also records the CPU share (this
    process's CPU time over wall time): well below 1 means other processes took the CPU (or,
    for sync=full, that we waited on the disk)."""

    async def go() -> Any:
        results = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(runs):
            results.append(await fn())
            gc.collect()
        if label:
            CPU_SHARES[label] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        if isinstance(results[0], dict):
            return common.median_figures(results)
        return statistics.median(results)

    return go


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    quick, runs, only = args.quick, args.runs, args.only
    figures: dict[str, Any] = {}

    for kind in ("ephemeral", "durable"):
        for n in FANOUT_NS:
            if not wanted(only, f"fanout:{kind}:{n}"):
                continue
            total = fanout_messages(n, quick)
            pubs = 1 if kind == "ephemeral" else PUBLISHERS
            log(f"fan-out {kind} N={n}: {total} messages x {runs} runs")
            res = await median_of(
                runs,
                lambda kind=kind, n=n, total=total, pubs=pubs: fanout_run(
                    kind, n, total, publishers=pubs
                ),
                f"fanout.{kind}.{n}",
            )()
            figures[f"fanout.{kind}.{n}"] = {
                "publishes_per_s": res["publishes_per_s"],
                "deliveries_per_s": res["deliveries_per_s"],
                "messages": total,
            }

    if wanted(only, "fanout:ephemeral-unbatched:100"):
        total = 2_000 if quick else 5_000
        log(f"fan-out ephemeral N=100, yield after every publish: {total} messages x {runs} runs")
        res = await median_of(
            runs,
            lambda: fanout_run("ephemeral", 100, total, publishers=1, yield_each=True),
            "fanout.ephemeral-unbatched.100",
        )()
        figures["fanout.ephemeral-unbatched.100"] = {
            "publishes_per_s": res["publishes_per_s"],
            "deliveries_per_s": res["deliveries_per_s"],
            "messages": total,
        }

    for sync, pubs in (("normal", PUBLISHERS), ("full", PUBLISHERS), ("normal", 1), ("full", 1)):
        name = sync if pubs > 1 else f"{sync}.serial"
        if not wanted(only, f"publish:{sync}" if pubs > 1 else f"publish-serial:{sync}"):
            continue
        total = (20_000 if quick else 100_000) if pubs > 1 else (1_000 if quick else 5_000)
        log(f"durable publish N=1 sync={sync}, {pubs} in flight: {total} messages x {runs} runs")
        res = await median_of(
            runs,
            lambda sync=sync, total=total, pubs=pubs: fanout_run(
                "durable", 1, total, publishers=pubs, sync=sync
            ),
            f"publish.{name}",
        )()
        figures[f"publish.{name}"] = {
            "publishes_per_s": res["acked_publishes_per_s"],
            "p50_us": res["publish_p50_us"],
            "p99_us": res["publish_p99_us"],
            "messages": total,
        }

    if wanted(only, "request"):
        count = 10_000 if quick else 50_000
        log(f"request/reply: {count} requests x {runs} runs")
        figures["request"] = await median_of(runs, lambda: request_run(count), "request")()

    if wanted(only, "memory"):
        log(f"memory: {MEMORY_AGENTS} agents and subscriptions x {runs} runs")
        figures["memory"] = await median_of(runs, lambda: memory_run(MEMORY_AGENTS), "memory")()

    for n in SUBSCRIBE_SIZES[:2] if quick else SUBSCRIBE_SIZES:
        if not wanted(only, f"subscribe:{n}"):
            continue
        log(f"subscribe {n} agents to one channel x {runs} runs")
        secs = await median_of(runs, lambda n=n: subscribe_run(n), f"subscribe.{n}")()
        figures[f"subscribe.{n}"] = {"seconds": secs, "us_per_agent": secs / n * 1e6}

    warmed = False
    for backend in ("memory", "sqlite"):
        for n in REGISTER_SIZES:
            if not wanted(only, f"register:{backend}:{n}"):
                continue
            if not warmed:  # the first hub of a process pays one-off costs; keep them out
                await register_run("sqlite", 500)
                warmed = True
            log(f"register {n} agents on {backend} x {runs} runs")
            secs = await median_of(
                runs, lambda b=backend, n=n: register_run(b, n), f"register.{backend}.{n}"
            )()
            figures[f"register.{backend}.{n}"] = {"seconds": secs, "us_per_agent": secs / n * 1e6}
    return figures


def rows_of(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    fanouts = [("ephemeral", n) for n in FANOUT_NS] + [("ephemeral-unbatched", 100)]
    fanouts += [("durable", n) for n in FANOUT_NS]
    for kind, n in fanouts:
        f = figures.get(f"fanout.{kind}.{n}")
        if f:
            rows.append(
                (
                    f"fan-out {kind} N={n}",
                    f"{fmt(f['deliveries_per_s'])} deliveries/s",
                    f"{fmt(f['publishes_per_s'])} publishes/s",
                )
            )
    for name in ("normal", "full", "normal.serial", "full.serial"):
        f = figures.get(f"publish.{name}")
        if f:
            sync, _, serial = name.partition(".")
            inflight = 1 if serial else PUBLISHERS
            rows.append(
                (
                    f"N=1 durable publish sync={sync}, {inflight} in flight",
                    f"{fmt(f['publishes_per_s'])} acked publishes/s",
                    f"ack latency p50 {fmt(f['p50_us'])} us, p99 {fmt(f['p99_us'])} us",
                )
            )
    f = figures.get("request")
    if f:
        rows.append(
            (
                "request/reply (memory://)",
                f"p50 {fmt(f['p50_us'])} us, p99 {fmt(f['p99_us'])} us",
                f"{fmt(f['requests_per_s'])} round trips/s",
            )
        )
    f = figures.get("memory")
    if f:
        rows.append(("memory per registered agent", f"{fmt(f['bytes_per_agent'])} B", ""))
        rows.append(("memory per subscription", f"{fmt(f['bytes_per_subscription'])} B", ""))
    for n in SUBSCRIBE_SIZES:
        f = figures.get(f"subscribe.{n}")
        if f:
            rows.append(
                (
                    f"subscribe {n:,} agents to 1 channel",
                    f"{f['seconds'] * 1000:,.1f} ms",
                    f"{f['us_per_agent']:.1f} us/agent",
                )
            )
    for backend in ("memory", "sqlite"):
        for n in REGISTER_SIZES:
            f = figures.get(f"register.{backend}.{n}")
            if f:
                rows.append(
                    (
                        f"register {n:,} agents ({backend})",
                        f"{f['seconds'] * 1000:,.1f} ms",
                        f"{f['us_per_agent']:.1f} us/agent",
                    )
                )
    return rows


def main() -> None:
    args = common.parse(
        common.parser(
            __doc__,
            only="run only this section or scenario (repeatable): fanout, fanout:ephemeral:100, "
            "publish, publish:normal, publish-serial, request, memory, subscribe, register, "
            "register:sqlite",
        )
    )
    session = common.Session(args)
    figures = uvloop.run(run_all(args))
    targets = common.targets_met(figures, TARGETS, ratio=True)
    common.print_report(
        session.title("core"), rows_of(figures), targets, to_stderr=args.json, width=110
    )
    common.warn_shares(
        "warning: these figures got under 90% of a CPU (other processes were running?): ",
        {k: v for k, v in CPU_SHARES.items() if v < 0.9 and ".full" not in k},
    )
    session.finish(figures, targets, cpu_share=CPU_SHARES)


if __name__ == "__main__":
    main()
