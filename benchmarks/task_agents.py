#!/usr/bin/env python
"""The load process of the end-to-end task benchmarks (benchmarks/tasks_e2e.py).

    python benchmarks/task_agents.py fleet URL --agents 20 --capacity 4 [--work-ms 0]
    python benchmarks/task_agents.py worker URL --id ID --proficiency 0.95 [--work-s 3600]

``fleet``: ``--agents`` SDK agents (``bench-0`` ...) with ``{"work": 0.9}`` and ``--capacity``,
in this one process and event loop, each with an ``on_task`` handler that sleeps ``--work-ms``
(0: returns at once, without yielding). Prints ``ready <agents>`` once every agent is
connected, then runs until SIGTERM, when it prints ``ran <handler calls>`` and exits (SIGKILL
works too, without the count).

``worker``: one agent ``ID`` with ``{"work": PROFICIENCY}`` and capacity 1 whose handler works
``--work-s`` seconds. Prints ``ready``, then ``start <task> <attempt> <time.time()>`` as each
handler begins (flushed at once, so a SIGKILL loses nothing printed), and runs until killed.

Every line goes to stdout, flushed; the benchmark reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import uvloop

from fleetchat.client import Agent
from fleetchat.client.task_work import TaskWork

CAPABILITY = "work"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def fleet(url: str, agents_n: int, capacity: int, work_ms: float) -> None:
    ran = 0
    delay = work_ms / 1000

    def make(i: int) -> Agent:
        agent = Agent(f"bench-{i}", capabilities={CAPABILITY: 0.9}, hub=url, capacity=capacity)

        @agent.on_task
        async def work(task: TaskWork) -> None:
            nonlocal ran
            ran += 1
            if delay:
                await asyncio.sleep(delay)

        return agent

    agents = [make(i) for i in range(agents_n)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await asyncio.gather(*(a.start() for a in agents))
    say(f"ready {agents_n}")
    await stop.wait()
    say(f"ran {ran}")
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


async def worker(url: str, agent_id: str, proficiency: float, work_s: float) -> None:
    agent = Agent(agent_id, capabilities={CAPABILITY: proficiency}, hub=url, capacity=1)

    @agent.on_task
    async def work(task: TaskWork) -> None:
        say(f"start {task.id} {task.attempt} {time.time():.6f}")
        await asyncio.sleep(work_s)

    async with agent:
        say("ready")
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    f = sub.add_parser("fleet", help="many agents that complete tasks at once")
    f.add_argument("url")
    f.add_argument("--agents", type=int, default=20)
    f.add_argument("--capacity", type=int, default=4)
    f.add_argument("--work-ms", type=float, default=0.0)
    w = sub.add_parser("worker", help="one agent that prints when each task starts")
    w.add_argument("url")
    w.add_argument("--id", required=True)
    w.add_argument("--proficiency", type=float, default=0.9)
    w.add_argument("--work-s", type=float, default=3600.0)
    args = parser.parse_args()
    if args.role == "fleet":
        uvloop.run(fleet(args.url, args.agents, args.capacity, args.work_ms))
    else:
        uvloop.run(worker(args.url, args.id, args.proficiency, args.work_s))


if __name__ == "__main__":
    main()
