"""The planner: an SDK agent that turns a stream of orders into tasks, one step at a time.

It submits each step of an order over the REST task API (``HubClient.tasks.submit``, with an
idempotency key per order and step) when the previous step has succeeded, and follows the
tasks on the ``$tasks`` channel, which it reads over the WebSocket like any member (a REST
``get`` covers an event it has not seen within a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetchat.client import Agent, HubClient
from fleetchat.demo.cell import STEPS, CellSpec, duration
from fleetchat.demo.journal import AgentState, Journal, OrderRecord
from fleetchat.errors import FleetchatError
from fleetchat.models import Message
from fleetchat.tasks.records import TERMINAL_STATES

__all__ = ["RECIPES", "Order", "Planner", "make_orders"]

RECIPES: dict[str, tuple[list[str], float]] = {
    "kit": (["pick", "transport", "assemble", "inspect"], 0.5),
    "frame": (["pick", "transport", "weld", "inspect"], 0.35),
    "restock": (["pick", "transport"], 0.15),
}
"""Order recipes: their steps and their share of the orders."""
ARRIVAL = 4.0
"""Mean real seconds between two orders."""


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    recipe: str
    steps: list[str]
    priority: str
    at: float
    """Wall seconds after the start when it arrives."""


def make_orders(n: int, seed: int, speed: float) -> list[Order]:
    """``n`` orders: recipe, priority (one in eight is a rush order) and arrival time, drawn
    from the seed alone."""
    rng = random.Random(f"{seed}/orders")
    names = list(RECIPES)
    weights = [RECIPES[r][1] for r in names]
    at = 0.0
    orders = []
    for i in range(n):
        recipe = rng.choices(names, weights)[0]
        priority = "high" if rng.random() < 0.125 else "normal"
        orders.append(Order(f"o-{i + 1:03d}", recipe, RECIPES[recipe][0], priority, at))
        at += rng.expovariate(1.0) * ARRIVAL / speed
    return orders


class Planner:
    """Runs every order to its end (or its first failed step)."""

    def __init__(
        self,
        url: str,
        journal: Journal,
        cell: CellSpec,
        orders: list[Order],
        on_submitted: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self.journal = journal
        self.cell = cell
        self.orders = orders
        self.on_submitted = on_submitted
        self.agent = Agent("planner", hub=url, connect_timeout=20.0)
        self.rest = HubClient(url)
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._ended: dict[str, str] = {}
        self._steps_of: dict[str, str] = {}  # task id -> "transport of o-012"
        self._lost: set[str] = set()
        self.agent.on_message("$tasks")(self._on_event)
        journal.agents["planner"] = AgentState("planner", "planner", 0)
        for order in orders:
            journal.orders[order.id] = OrderRecord(order.id, order.recipe, list(order.steps))

    async def start(self) -> None:
        await self.agent.start()
        await self.agent.subscribe("$tasks")
        await self.rest.start()

    async def close(self) -> None:
        await self.agent.close()
        await self.rest.close()

    async def run(self) -> None:
        """Release the orders at their arrival times and wait until all have ended."""
        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for i, order in enumerate(self.orders, 1):
                await asyncio.sleep(max(0.0, order.at - (time.monotonic() - began)))
                group.create_task(self._run_order(order))
                if self.on_submitted is not None:
                    self.on_submitted(i)

    async def _run_order(self, order: Order) -> None:
        record = self.journal.orders[order.id]
        record.submitted_at = time.time()
        try:
            await self._steps(order, record)
        except FleetchatError as exc:  # the hub refused a call: the order cannot go on
            record.failed = f"[{exc.code}] {exc.message}"
            self.journal.log("order", f"{order.id} FAILED: {record.failed}")

    async def _steps(self, order: Order, record: OrderRecord) -> None:
        for n, step in enumerate(order.steps):
            key = f"{order.id}/{step}"
            task = await self.rest.tasks.submit(
                STEPS[step].required,
                payload={"order": order.id, "step": step, "key": key},
                priority=order.priority,
                idempotency_key=key,
                estimate=self._estimate(step, key),
                start_to_close=self._estimate(step, key) * 4 + 10,
                heartbeat=3.0,
            )
            record.tasks.append(task.id)
            self._steps_of[task.id] = f"{step} of {order.id}"
            state = await self._finished(task.id)
            if state != "succeeded":
                record.failed = f"{step} ended {state}"
                self.journal.log("order", f"{order.id} FAILED at {step} ({state})")
                return
            record.step = n + 1
        record.finished_at = time.time()
        record.completions += 1
        took = record.finished_at - record.submitted_at
        self.journal.log("order", f"{order.id} ({order.recipe}) done in {took:.1f} s")

    def _follow(self, task_id: str, state: str, event: dict[str, Any]) -> None:
        """Tell of a task taken from its holder by a fault, and of where it runs next."""
        what = self._steps_of.get(task_id, task_id)
        previous = event.get("previous")
        if state == "queued" and previous in ("accepted", "running"):
            self._lost.add(task_id)
            self.journal.log("recover", f"hub: {what} back in the queue ({event.get('reason')})")
        elif state == "running" and task_id in self._lost:
            self._lost.discard(task_id)
            self.journal.log(
                "recover",
                f"hub: {what} running again on {event.get('agent')} "
                f"(attempt {event.get('attempt')})",
            )

    def _estimate(self, step: str, key: str) -> float:
        """Expected wall seconds: the slowest eligible machine's time, a little padded."""
        times = [
            duration(self.cell.seed, key, spec, step, self.cell.speed)
            for spec in self.cell.agents
            if set(STEPS[step].required) & set(spec.capabilities)
        ]
        return round(max(times, default=1.0) * 1.2 + 0.2, 3)

    async def _finished(self, task_id: str) -> str:
        """The task's final state, from its ``$tasks`` event (or from REST after 5 s)."""
        if task_id in self._ended:
            return self._ended.pop(task_id)
        future = self._waiting[task_id] = asyncio.get_running_loop().create_future()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        return await asyncio.shield(future)
                task = await self.rest.tasks.get(task_id)
                if task.terminal:  # its event is late or lost: worth knowing
                    self.journal.log("info", f"planner: {task_id} {task.state}, no event yet")
                    return task.state
        finally:
            self._waiting.pop(task_id, None)
            self._ended.pop(task_id, None)

    async def _on_event(self, msg: Message) -> None:
        body: Any = msg.body
        if not isinstance(body, dict):
            return
        task_id, state = str(body.get("task")), str(body.get("state"))
        if state not in TERMINAL_STATES:
            self._follow(task_id, state, body)
            return
        future = self._waiting.get(task_id)
        if future is None:
            self._ended[task_id] = state  # before the submit returned
        elif not future.done():
            future.set_result(state)
