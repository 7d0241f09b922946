#!/usr/bin/env python
"""fleetchat workflow engine benchmarks: CPU per step, step-to-step latency, resume.

    python benchmarks/workflows.py [--quick] [--json] [--runs 3] [--only cpu|latency|resume]

Every figure is the median of ``--runs`` runs (default 3), each on a fresh embedded hub (SQLite,
a new file in a temporary directory on the local disk, default settings). ``--json`` prints
exactly one JSON object on stdout (the table then goes to stderr). Results: docs/performance.md,
section "Workflows".

cpu
---
The hub and its ``HubServer`` (port 0) run in this process; the agents run in a separate load
process (benchmarks/task_agents.py ``fleet``: ``FLEET_AGENTS`` SDK agents over WebSocket, each
of capacity ``FLEET_CAPACITY``, so 1,008 slots under the default 0.8 load threshold: no task
waits for a free agent; their handlers return at once). So this process's CPU is the hub's (with
its server), plus the starts and a poll of two in-memory counters every 5 ms. Two workflows,
``EXECUTIONS`` (1,000; 300 with ``--quick``) executions each, all started at once by
``STARTERS`` (64) coroutines awaiting ``hub.workflows.start``, after a warm-up of 20:

* ``mix``: 10 steps: 4 ``agent_task`` (capability ``work``), 3 ``set``, 1 ``condition``,
  1 ``wait`` of 0 s (a timer) and 1 ``succeed``.
* ``local``: 10 steps without tasks: 6 ``set``, 3 ``condition``, 1 ``succeed``.

The window runs from the first start to the moment the engine has completed every step
(``engine.steps_run``) and holds no running execution. CPU per step = this process's utime +
stime (``/proc/self/stat``) over the window / steps completed. CPU per agent_task step =
(CPU of ``mix`` - 6 x steps x CPU per ``local`` step) / agent_task steps (each execution's start
is spread over its steps in both). ``passes``: the scheduler's passes over its queue in the
window (``hub.scheduler.passes``). Checked every run: every execution ``completed`` with 10
``step.completed`` events; every agent_task step was scheduled once and its task (key
``wf:<execution>:<step>:1``) succeeded in one attempt, no attempt 2 exists, and the agents' handlers
ran exactly 4 x executions times (+ warm-up).

latency
-------
The same hub and load process; one execution of ``chain`` (10 ``agent_task`` steps) at a time,
``LATENCY_EXECUTIONS`` (20; 5 with ``--quick``) one after another. From the task records, per
pair of consecutive steps: the first task's succeeding attempt ``ended_at`` (the hub stored the
agent's result) -> the next task's attempt ``offered_at`` (hub clock; the engine saved the step,
submitted the next task and the scheduler offered it), and -> the next task's ``ended_at``
(step to step, including the agent's round trip). 9 gaps per execution; p50 / p99 over all.

resume
------
``RESUME_EXECUTIONS`` (1,000; 300 with ``--quick``) executions of ``park`` (a ``set``, a
``wait`` of 1 h, a ``succeed``) until all wait; the hub closes; a new Hub opens on the same file.
Measured from before ``Hub(...).start()``: until ``start()`` returns, until the engine's first
timer is armed, and until ``hub.workflows.engine.running`` holds every execution and each has
its timer. Checked: nothing ran on resume (``steps_run`` 0, event counts unchanged). Then a
third Hub opens on the file with its clock 1 h ahead: every execution must complete, each step
once.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common
from _common import fmt, log, percentile
from tasks_e2e import Child, cpu_seconds

from fleetchat import Hub, HubSettings
from fleetchat.server.app import HubServer
from fleetchat.types import SystemClock

EXECUTIONS, EXECUTIONS_QUICK = 1_000, 300
LATENCY_EXECUTIONS, LATENCY_EXECUTIONS_QUICK = 20, 5
RESUME_EXECUTIONS, RESUME_EXECUTIONS_QUICK = 1_000, 300
FLEET_AGENTS, FLEET_CAPACITY = 20, 63  # 1,008 slots under the 0.8 load threshold
STARTERS = 64
WARMUP = 20
STEPS = 10
MIX_TASKS = ("t1", "t2", "t3", "t4")
CHAIN_TASKS = tuple(f"t{i}" for i in range(1, 11))

# Targets from the issue: (key in the figures, op, bound, label).
TARGETS: list[tuple[str, str, float, str]] = [
    ("cpu.mix.ms_per_step", "<", 1.0, "engine CPU per step, 1,000 concurrent executions (ms)"),
    ("cpu.mix.once", ">=", 1.0, "every execution completed, every step once (share)"),
    ("resume.once", ">=", 1.0, "resumed executions completed, every step once (share)"),
]


# -- workflows ---------------------------------------------------------------------------------


def definition(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": "fleetchat.workflow/v1",
        "name": name,
        "version": "1.0.0",
        "defaults": {"timeout": {"start_to_close": "30s"}, "retry": {"max_attempts": 1}},
        "steps": steps,
    }


def task(step_id: str, input: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "agent_task",
        "agent": {"capabilities": {"work": 1.0}},
        "input": input,
    }


def cond(step_id: str, when: str, then: str) -> dict[str, Any]:
    return {"id": step_id, "type": "condition", "cases": [{"when": when, "next": then}],
            "default": "fail"}  # fmt: skip


MIX = definition(
    "bench-mix",
    [
        task("t1", {"order": "${input.order}"}),
        {"id": "s1", "type": "set", "values": {"picked": "${input.order * 2}"}},
        task("t2", {"order": "${input.order}", "picked": "${vars.picked}"}),
        {"id": "s2", "type": "set", "values": {"moved": "${input.order + 1}"}},
        cond("c1", "vars.moved > 0", "t3"),
        task("t3", {"order": "${vars.moved}"}),
        {"id": "w1", "type": "wait", "duration": "0s"},
        {"id": "s3", "type": "set", "values": {"checked": True}},
        task("t4", {"order": "${input.order}"}),
        {"id": "done", "type": "succeed", "output": {"order": "${input.order}"}},
    ],
)
LOCAL = definition(
    "bench-local",
    [
        {"id": "s1", "type": "set", "values": {"a": "${input.order}"}},
        cond("c1", "vars.a >= 0", "s2"),
        {"id": "s2", "type": "set", "values": {"b": "${vars.a + 1}"}},
        {"id": "s3", "type": "set", "values": {"c": "${vars.b * 2}"}},
        cond("c2", "vars.c > vars.b", "s4"),
        {"id": "s4", "type": "set", "values": {"d": "${vars.c - 1}"}},
        {"id": "s5", "type": "set", "values": {"e": "${vars.d}"}},
        cond("c3", "vars.e > 0", "s6"),
        {"id": "s6", "type": "set", "values": {"f": True}},
        {"id": "done", "type": "succeed", "output": {"order": "${input.order}"}},
    ],
)
CHAIN = definition("bench-chain", [task(t, {"order": "${input.order}"}) for t in CHAIN_TASKS])
PARK = definition(
    "bench-park",
    [
        {"id": "s1", "type": "set", "values": {"parked": True}},
        {"id": "w1", "type": "wait", "duration": "1h"},
        {"id": "done", "type": "succeed", "output": {"order": "${input.order}"}},
    ],
)


# -- helpers -----------------------------------------------------------------------------------


def sqlite_settings(tmp: str) -> HubSettings:
    return HubSettings(url=f"sqlite:///{os.path.join(tmp, 'bench.db')}")


async def until(ready: Callable[[], bool], timeout: float, poll: float = 0.005) -> None:
    async with asyncio.timeout(timeout):
        while not ready():  # noqa: ASYNC110 - polled: the engine has no event for it
            await asyncio.sleep(poll)


async def start_all(hub: Hub, name: str, count: int) -> list[str]:
    ids: list[str] = []

    async def starter() -> None:
        while len(ids) < count:
            ids.append("")  # claim a slot before awaiting, so exactly ``count`` start
            slot = len(ids) - 1
            ids[slot] = (await hub.workflows.start(name, {"order": slot + 1})).id

    await asyncio.gather(*(starter() for _ in range(min(STARTERS, count))))
    return ids


async def run_all(hub: Hub, name: str, count: int, timeout: float = 300) -> list[str]:
    """Start ``count`` executions of ``name`` at once; return when the engine ran them all."""
    engine = hub.workflows.engine
    target = engine.steps_run + STEPS * count
    ids = await start_all(hub, name, count)
    await asyncio.sleep(0.01)  # the engine takes each started execution in hand
    await until(lambda: engine.steps_run >= target or not engine.running, timeout)
    await until(lambda: not engine.running, timeout)
    if engine.steps_run < target:
        raise RuntimeError(f"{name}: {target - engine.steps_run} steps did not complete")
    return ids


async def checked(hub: Hub, ids: list[str], task_steps: tuple[str, ...]) -> int:
    """How many executions completed with every step completed once and every task once."""
    good = 0
    for execution_id in ids:
        record = await hub.workflows.get(execution_id)
        events = await hub.workflows.events(execution_id)
        completed = [e.step for e in events if e.type == "step.completed"]
        scheduled = [e.step for e in events if e.type == "step.scheduled"]
        ok = (
            record.status == "completed"
            and len(completed) == len(set(completed)) == len(record.runs)
            and all(scheduled.count(s) == 1 for s in task_steps)
        )
        for step in task_steps:
            first = await hub.tasks.find_by_key(f"wf:{execution_id}:{step}:1")
            again = await hub.tasks.find_by_key(f"wf:{execution_id}:{step}:2")
            ok = ok and again is None and first is not None and first.state == "succeeded"
            ok = ok and first is not None and len(first.attempts) == 1
        good += ok
    return good


async def with_fleet(tmp: str, hub: Hub, server: HubServer) -> Child:
    fleet = await Child.spawn(
        Path(tmp) / "fleet.err",
        "fleet",
        server.url,
        f"--agents={FLEET_AGENTS}",
        f"--capacity={FLEET_CAPACITY}",
    )
    await fleet.line("ready")
    return fleet


async def ran_count(fleet: Child) -> int:
    fleet.signal(signal.SIGTERM)
    return int((await fleet.line("ran", 15)).split()[1])


# -- cpu ---------------------------------------------------------------------------------------


async def cpu_phase(
    hub: Hub, fleet: Child, name: str, count: int
) -> tuple[list[str], dict[str, float]]:
    """Run ``count`` executions of ``name`` at once; their ids and CPU figures."""
    me = os.getpid()
    cpu, cpu_load, passes = cpu_seconds(me), cpu_seconds(fleet.pid), hub.scheduler.passes
    wall = time.perf_counter()
    ids = await run_all(hub, name, count)
    wall = time.perf_counter() - wall
    cpu, cpu_load = cpu_seconds(me) - cpu, cpu_seconds(fleet.pid) - cpu_load
    return ids, {
        "executions": count,
        "steps": STEPS * count,
        "wall_s": wall,
        "steps_per_s": STEPS * count / wall,
        "hub_cpu_s": cpu,
        "hub_cpu_share": cpu / wall,
        "ms_per_step": cpu / (STEPS * count) * 1000,
        "load_cpu_share": cpu_load / wall,
        "passes": hub.scheduler.passes - passes,
    }


async def cpu_run(count: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        async with Hub(sqlite_settings(tmp)) as hub, HubServer(hub, port=0) as server:
            await hub.workflows.register(MIX)
            await hub.workflows.register(LOCAL)
            fleet = await with_fleet(tmp, hub, server)
            try:
                await run_all(hub, "bench-mix", WARMUP)
                await run_all(hub, "bench-local", WARMUP)
                mix_ids, mix = await cpu_phase(hub, fleet, "bench-mix", count)
                local_ids, local = await cpu_phase(hub, fleet, "bench-local", count)
                ran = await ran_count(fleet) - WARMUP * len(MIX_TASKS)
            finally:
                await fleet.kill()
            good = await checked(hub, mix_ids, MIX_TASKS)
            mix["once"] = good / count if ran == len(MIX_TASKS) * count else 0.0
            mix["ran"] = ran
            local["once"] = await checked(hub, local_ids, ()) / count
    n_tasks = len(MIX_TASKS)
    per_local = local["ms_per_step"]
    mix["ms_per_task_step"] = (mix["ms_per_step"] * STEPS - per_local * (STEPS - n_tasks)) / n_tasks
    return {"mix": mix, "local": local}


def run_cpu(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    count = EXECUTIONS_QUICK if args.quick else EXECUTIONS
    log(f"cpu: {count} concurrent executions of bench-mix and bench-local x {args.runs}")
    results = [uvloop.run(cpu_run(count)) for _ in range(args.runs)]
    for key in ("mix", "local"):
        runs = [r[key] for r in results]
        # every run must pass, not the median one
        out = common.median_figures(runs, worst=("once",))
        out["runs_ms_per_step"] = [r["ms_per_step"] for r in runs]  # type: ignore[assignment]
        figures[f"cpu.{key}"] = out


# -- latency -----------------------------------------------------------------------------------


async def latency_run(count: int) -> dict[str, float]:
    offer: list[float] = []
    step: list[float] = []
    total: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with Hub(sqlite_settings(tmp)) as hub, HubServer(hub, port=0) as server:
            await hub.workflows.register(CHAIN)
            fleet = await with_fleet(tmp, hub, server)
            try:
                await run_all(hub, "bench-chain", 2)  # warm-up
                ids = []
                for _ in range(count):
                    ids += await run_all(hub, "bench-chain", 1, 30)
                ran = await ran_count(fleet) - 2 * len(CHAIN_TASKS)
            finally:
                await fleet.kill()
            good = await checked(hub, ids, CHAIN_TASKS)
            for execution_id in ids:
                tasks = [
                    await hub.tasks.find_by_key(f"wf:{execution_id}:{t}:1") for t in CHAIN_TASKS
                ]
                attempts = [t.attempts[-1] for t in tasks if t is not None]
                for a, b in itertools.pairwise(attempts):
                    offer.append((b.offered_at - (a.ended_at or 0.0)) * 1000)
                    step.append(((b.ended_at or 0.0) - (a.ended_at or 0.0)) * 1000)
                record = await hub.workflows.get(execution_id)
                total.append(((record.ended_at or 0.0) - record.created_at) * 1000)
    return {
        "executions": count,
        "gaps": len(offer),
        "offer_p50_ms": percentile(offer, 50),
        "offer_p99_ms": percentile(offer, 99),
        "step_p50_ms": percentile(step, 50),
        "step_p99_ms": percentile(step, 99),
        "execution_p50_ms": percentile(total, 50),
        "once": good / count if ran == count * len(CHAIN_TASKS) else 0.0,
    }


def run_latency(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    count = LATENCY_EXECUTIONS_QUICK if args.quick else LATENCY_EXECUTIONS
    log(f"latency: {count} executions of bench-chain (10 agent tasks), one at a time x {args.runs}")
    runs = [uvloop.run(latency_run(count)) for _ in range(args.runs)]
    figures["latency"] = common.median_figures(runs, worst=("once",))


# -- resume ------------------------------------------------------------------------------------


class AheadClock(SystemClock):
    """The system clock, ``offset`` seconds ahead: a hub opened later (the 1 h wait is over)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset


async def resume_run(count: int) -> dict[str, float]:
    me = os.getpid()
    with tempfile.TemporaryDirectory() as tmp:
        settings = sqlite_settings(tmp)
        async with Hub(settings) as hub:
            await hub.workflows.register(PARK)
            # Let the engine finish loading running executions first: one started while it
            # loads is started twice (its first step runs twice; docs/performance.md).
            await asyncio.sleep(0.5)
            engine = hub.workflows.engine
            ids = await start_all(hub, "bench-park", count)

            def parked() -> bool:
                return len(engine.running) == count and all(
                    r.runs.get("w1") is not None and r.runs["w1"].status == "waiting"
                    for r in engine.running.values()
                )

            await until(parked, 120, 0.05)
            before = {i: (await hub.workflows.get(i)).events for i in ids}
        cpu, t0 = cpu_seconds(me), time.perf_counter()
        hub = Hub(settings)
        await hub.start()
        opened = time.perf_counter() - t0
        engine = hub.workflows.engine
        timers = engine._timers  # the engine's armed timers, one per execution
        await until(lambda: bool(timers), 60, 0.0005)
        first = time.perf_counter() - t0
        await until(lambda: len(engine.running) == count and len(timers) == count, 120, 0.0005)
        resumed = time.perf_counter() - t0
        cpu = cpu_seconds(me) - cpu
        quiet = engine.steps_run == 0
        after = {i: (await hub.workflows.get(i)).events for i in ids}
        quiet = quiet and after == before
        await hub.close()
        # An hour later: every parked execution finishes, each step once.
        async with Hub(settings, clock=AheadClock(3601.0)) as later:
            await until(lambda: later.workflows.engine.steps_run >= 2 * count, 120)
            await until(lambda: not later.workflows.engine.running, 60)
            good = await checked(later, ids, ())
    return {
        "executions": count,
        "open_ms": opened * 1000,
        "first_timer_ms": first * 1000,
        "resumed_ms": resumed * 1000,
        "us_per_execution": resumed / count * 1e6,
        "cpu_ms": cpu * 1000,
        "once": good / count if quiet else 0.0,
    }


def run_resume(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    count = RESUME_EXECUTIONS_QUICK if args.quick else RESUME_EXECUTIONS
    log(f"resume: {count} executions waiting 1 h, the hub reopened x {args.runs}")
    runs = [uvloop.run(resume_run(count)) for _ in range(args.runs)]
    figures["resume"] = common.median_figures(runs, worst=("once",))


SECTIONS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], None]] = {
    "cpu": run_cpu,
    "latency": run_latency,
    "resume": run_resume,
}


# -- report ------------------------------------------------------------------------------------


def rows(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for key, what in (("mix", "10 steps, 4 agent_task"), ("local", "10 steps, no task")):
        if f := figures.get(f"cpu.{key}"):
            also = (
                f"{fmt(f['wall_s'])} s for all, {fmt(f['steps_per_s'])} steps/s; hub CPU "
                f"{f['hub_cpu_share']:.0%}, agents {f['load_cpu_share']:.0%}; "
                f"{f['once']:.0%} once; {f['passes']:,.0f} scheduler passes"
            )
            if "ms_per_task_step" in f:
                also += f"; agent_task step {fmt(f['ms_per_task_step'])} ms"
            out.append(
                (
                    f"cpu: {f['executions']:,.0f} concurrent executions, {what}",
                    f"{fmt(f['ms_per_step'])} ms CPU/step",
                    also,
                )
            )
    if f := figures.get("latency"):
        out.append(
            (
                f"latency: {f['executions']:.0f} x 10 agent_task steps, one at a time",
                f"done->next offered p50 {fmt(f['offer_p50_ms'])} ms, p99 {fmt(f['offer_p99_ms'])}",
                f"done->next done p50 {fmt(f['step_p50_ms'])} ms, p99 {fmt(f['step_p99_ms'])}; "
                f"execution p50 {fmt(f['execution_p50_ms'])} ms; {f['once']:.0%} once",
            )
        )
    if f := figures.get("resume"):
        out.append(
            (
                f"resume: {f['executions']:,.0f} executions waiting, hub reopened",
                f"{fmt(f['resumed_ms'])} ms to all running",
                f"start() {fmt(f['open_ms'])} ms, first timer {fmt(f['first_timer_ms'])} ms; "
                f"{fmt(f['us_per_execution'])} us/execution; CPU {fmt(f['cpu_ms'])} ms; "
                f"{f['once']:.0%} completed once later",
            )
        )
    return out


def main() -> None:
    p = common.parser(
        __doc__,
        quick="smaller runs; under a minute",
        only="run only this section",
        only_choices=SECTIONS,
    )
    common.sections_main(p, SECTIONS, TARGETS, rows, what="workflow", width=140)


if __name__ == "__main__":
    main()
