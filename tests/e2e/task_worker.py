"""An agent process for the task e2e tests: ``python task_worker.py URL AGENT CAP DELAY LOG``.

It takes tasks needing ``CAP`` (proficiency 0.9 in the id's last digit order: ``w-1`` 0.95,
``w-2`` 0.9, ...), works ``DELAY`` seconds each, and appends ``start <task> <attempt>`` and
``done <task> <attempt>`` lines to ``LOG`` (flushed at once, so a kill -9 loses nothing
written).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fleetchat.client import Agent
from fleetchat.client.task_work import TaskWork


async def main(url: str, agent_id: str, capability: str, delay: float, log: Path) -> None:
    proficiency = 1.0 - 0.05 * int(agent_id.rsplit("-", 1)[-1])
    agent = Agent(agent_id, capabilities={capability: proficiency}, hub=url, capacity=1)

    def note(line: str) -> None:
        with log.open("a") as f:
            f.write(line + "\n")
            f.flush()

    @agent.on_task
    async def work(task: TaskWork) -> dict[str, object]:
        note(f"start {task.id} {task.attempt}")
        await asyncio.sleep(delay)
        note(f"done {task.id} {task.attempt}")
        return {"by": agent_id, "payload": task.payload}

    async with agent:
        note("ready")
        await asyncio.Event().wait()


if __name__ == "__main__":
    url, agent_id, capability, delay, log = sys.argv[1:6]
    asyncio.run(main(url, agent_id, capability, float(delay), Path(log)))
