"""The factory-cell order flow, end to end against a running hub.

    fleetchat serve                                   # in one terminal (auth off)
    python examples/workflows/factory_order.py        # in another

Starts the cell's agents (a picker, two mobile robots that bid for transports and hold the dock
lease while crossing it, an assembler, an inspection camera and a supervisor who approves
finished orders on the ``approvals`` channel), registers ``factory-order.yaml``, runs a few
orders through it and prints how each went. ``--hub`` points it elsewhere. The
agents connect without tokens: run it against a hub with auth off.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

from fleetchat.client import Agent, HubClient
from fleetchat.client.task_work import CallForProposals, TaskWork

HERE = Path(__file__).parent


def cell(hub: str, rng: random.Random) -> list[Agent]:
    picker = Agent("picker-1", {"pick": 0.95}, hub=hub, capacity=2)
    assembler = Agent("assembler-1", {"assemble": 0.9}, hub=hub)
    camera = Agent("camera-1", {"inspect": 0.97}, hub=hub, capacity=2)
    robots = [Agent(f"amr-{i}", {"transport": 0.9}, hub=hub) for i in (1, 2)]

    @picker.on_task
    async def pick(work: TaskWork) -> list[str]:
        await asyncio.sleep(0.2)
        return list(work.payload["input"]["parts"] or ["frame", "bolts"])

    for robot in robots:
        distance = rng.uniform(5, 30)

        @robot.on_cfp
        async def bid(cfp: CallForProposals, d: float = distance) -> tuple[float, float]:
            return d, d / 2  # cost: metres to drive; eta: seconds

        @robot.on_task
        async def transport(work: TaskWork, me: Agent = robot) -> dict[str, Any]:
            async with me.leases.hold("dock-1", ttl=30, timeout=20) as lease:
                await asyncio.sleep(0.3)  # crossing the dock, with the lease's fencing token
                token_used = lease.token
            return {"by": me.agent_id, "dock_token": token_used}

    @assembler.on_task
    async def assemble(work: TaskWork) -> str:
        await asyncio.sleep(0.4)
        return f"assembled {len(work.payload['input']['parts'])} parts"

    @camera.on_task
    async def inspect(work: TaskWork) -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"passed": True, "defects": 0}

    return [picker, assembler, camera, *robots]


async def approve_when_ready(
    rest: HubClient, supervisor: Agent, execution_id: str, order: str
) -> None:
    """The supervisor approves once the order waits for approval."""
    while True:
        record = await rest.workflows.execution(execution_id)
        run = record.runs.get("approval")
        if record.status != "running" or (run is not None and run.status == "waiting"):
            break
        await asyncio.sleep(0.1)
    if record.status == "running":
        await supervisor.publish("approvals", {"order": order, "approved": True})


async def main(hub: str, orders: int, seed: int) -> int:
    rng = random.Random(seed)
    agents = cell(hub, rng)
    supervisor = Agent("supervisor", hub=hub)
    async with HubClient(hub) as rest:
        await rest.workflows.register((HERE / "factory-order.yaml").read_text())
        for agent in [*agents, supervisor]:
            await agent.start()
        await supervisor.subscribe("approvals")
        try:
            started = time.monotonic()
            runs = []
            for n in range(1, orders + 1):
                order = f"o-{n:03d}"
                data = {
                    "order_id": order,
                    "bin": f"bin-{n}",
                    "station": "cell-2",
                    "parts": ["frame", "axle"],
                }
                execution = await rest.workflows.start("factory-order", data)
                runs.append((order, execution.id))
            await asyncio.gather(*(approve_when_ready(rest, supervisor, e, o) for o, e in runs))
            failed = 0
            for order, execution_id in runs:
                done = await rest.workflows.wait(execution_id, 60)
                took = (done.ended_at or 0) - done.created_at
                print(f"{order}: {done.status} in {took:.1f} s: {done.output or done.error}")
                failed += done.status != "completed"
            print(
                f"{orders - failed}/{orders} orders completed in {time.monotonic() - started:.1f} s"
            )
            return 1 if failed else 0
        finally:
            for agent in [*agents, supervisor]:
                await agent.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub", default="http://127.0.0.1:8765")
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.hub, args.orders, args.seed)))
