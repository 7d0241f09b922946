"""A pool worker for the autoscaling e2e tests: ``python scaling_worker.py URL CAP DELAY LOG``.

Started by the ``process`` actuator, it takes its id from ``FLEETCHAT_POOL`` and
``FLEETCHAT_INSTANCE`` (``scan-0``, ``scan-1``, ...), serves tasks needing ``CAP`` (capacity
2), works ``DELAY`` seconds on each, and appends ``ready <id> <pid>``, ``done <id> <task>``
and ``exit <id> <pid>`` lines to ``LOG``, each ending with the time. SIGTERM drains and
exits (the SDK's ``run``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from fleetchat.client import Agent
from fleetchat.client.task_work import TaskWork


def main(url: str, capability: str, delay: float, log: Path) -> None:
    agent_id = f"{os.environ['FLEETCHAT_POOL']}-{os.environ['FLEETCHAT_INSTANCE']}"
    agent = Agent(agent_id, capabilities={capability: 1.0}, hub=url, capacity=2)

    def note(line: str) -> None:
        with log.open("a") as f:
            f.write(f"{line} {time.time():.3f}\n")

    @agent.on_task
    async def work(task: TaskWork) -> str:
        await asyncio.sleep(delay)
        note(f"done {agent_id} {task.id}")
        return agent_id

    note(f"ready {agent_id} {os.getpid()}")
    try:
        agent.run()
    finally:
        note(f"exit {agent_id} {os.getpid()}")


if __name__ == "__main__":
    url, capability, delay, log = sys.argv[1:5]
    main(url, capability, float(delay), Path(log))
