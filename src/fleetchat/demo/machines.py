"""The cell's machines as SDK agents: arms and cameras (:class:`Machine`) and mobile robots
(:class:`MobileRobot`, with a battery and the shared charging dock).

Each one is a real :class:`~fleetchat.client.Agent` on the hub's WebSocket API: the hub
offers it tasks in its inbox, it runs them (reporting progress, which is also the heartbeat)
and returns the result, or declines an offer through its ``accept`` predicate. A robot takes
the dock's lease over the REST API before it plugs in, and hands the dock the lease's fencing
token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fleetchat.client import Agent
from fleetchat.client.task_work import TaskWork
from fleetchat.demo.cell import AgentSpec, CellSpec, duration
from fleetchat.demo.journal import AgentState, Journal
from fleetchat.errors import FleetchatError, LeaseTimeoutError

__all__ = ["DOCK", "Machine", "MobileRobot"]

DOCK = "dock-1"
CHARGE_AT = 30.0
"""Battery percent under which a robot goes to the dock after its task."""
MIN_TRIP = 20.0
"""Battery percent a robot needs to accept a transport."""
FULL = 95.0
CHARGE_RATE = 5.0
"""Battery percent per real second on the dock."""


class Machine:
    """An arm or a camera: runs whatever the hub offers it, one progress report per quarter."""

    def __init__(self, spec: AgentSpec, url: str, journal: Journal, cell: CellSpec) -> None:
        self.spec = spec
        self.journal = journal
        self.cell = cell
        self.alive = True
        self.running = 0
        self.agent = Agent(
            spec.id,
            capabilities=spec.capabilities,
            hub=url,
            capacity=spec.capacity,
            labels={"kind": spec.kind},
            connect_timeout=20.0,
        )
        self.agent.on_task(accept=self.accept)(self.work)
        journal.agents[spec.id] = AgentState(
            spec.id, spec.kind, spec.capacity, battery=spec.battery
        )

    @property
    def id(self) -> str:
        return self.spec.id

    async def start(self) -> None:
        await self.agent.start()

    async def close(self) -> None:
        if self.alive:
            self.alive = False
            await self.agent.close()

    def accept(self, work: TaskWork) -> bool:
        return True

    async def work(self, work: TaskWork) -> dict[str, Any]:
        step = str(work.payload["step"])
        seconds = duration(self.cell.seed, work.payload["key"], self.spec, step, self.cell.speed)
        return await self.perform(work, step, seconds)

    async def perform(self, work: TaskWork, step: str, seconds: float) -> dict[str, Any]:
        """Do ``step`` for ``seconds``, reporting progress at each quarter."""
        state = self.journal.agent(self.id)
        self._busy(+1, f"{step} {work.payload['order']}")
        began = time.time()
        try:
            for quarter in range(1, 5):
                await asyncio.sleep(seconds / 4)
                await work.progress(quarter / 4)
        finally:
            state.busy_seconds += time.time() - began
            self._busy(-1)
        state.done += 1
        return {"step": step, "by": self.id, "seconds": round(seconds, 3)}

    def _busy(self, delta: int, detail: str = "") -> None:
        self.running += delta
        if not self.alive:
            return
        if self.running > 0:
            self.journal.set_state(self.id, "working", detail)
        else:
            self.journal.set_state(self.id, "idle")


class MobileRobot(Machine):
    """A transport robot: drains its battery with every trip, declines offers while it is low
    or at the dock, and charges only while it holds the dock's lease."""

    def __init__(self, spec: AgentSpec, url: str, journal: Journal, cell: CellSpec) -> None:
        super().__init__(spec, url, journal, cell)
        self.battery = float(spec.battery if spec.battery is not None else 100.0)
        self.docking = False
        self._charger: asyncio.Task[None] | None = None
        self._death: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        if self.battery < CHARGE_AT:
            self.go_charge()

    async def close(self) -> None:
        if self._charger is not None:
            self._charger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._charger
        if self._death is not None:
            await self._death
        await super().close()

    def accept(self, work: TaskWork) -> bool:
        if not (self.docking or self.battery < MIN_TRIP):
            return True
        why = "queued for the dock" if self.id in self.journal.dock_waiting else "charging"
        if not self.docking:
            why = "battery too low"
        self.journal.declines += 1
        self.journal.log(
            "decline",
            f"{self.id} declines {work.payload['step']} of {work.payload['order']} "
            f"({why}, battery {self.battery:.0f} %)",
        )
        return False

    async def work(self, work: TaskWork) -> dict[str, Any]:
        step = str(work.payload["step"])
        seconds = duration(self.cell.seed, work.payload["key"], self.spec, step, self.cell.speed)
        faults = self.cell.faults
        if faults is not None and faults.claim_death(self.id):
            await self._die_during(work, step, seconds)
        result = await self.perform(work, step, seconds)
        self._set_battery(self.battery - self.spec.drain)
        if self.battery < CHARGE_AT:
            self.go_charge()
        return result

    def _set_battery(self, value: float) -> None:
        self.battery = max(0.0, min(value, 100.0))
        self.journal.agent(self.id).battery = round(self.battery, 1)

    def cold_soak(self, level: float) -> None:
        """The dock-rush fault: the battery drops to ``level`` (the robot docks when free)."""
        self._set_battery(min(self.battery, level))
        self.journal.log("fault", f"{self.id}: battery drops to {self.battery:.0f} %")
        if self.running == 0:
            self.go_charge()

    async def _die_during(self, work: TaskWork, step: str, seconds: float) -> None:
        """The robot-death fault: half-way through, the agent is closed without draining (no
        result, no goodbye); the hub notices the dropped connection."""
        self._busy(+1, f"{step} {work.payload['order']}")
        await asyncio.sleep(seconds / 2)
        await work.progress(0.5)
        self.journal.log(
            "fault",
            f"{self.id} dies half-way through {step} of {work.payload['order']} "
            f"(task {work.id}): connection dropped, no drain",
        )
        self.journal.deaths[self.id] = time.time()
        self.journal.set_state(self.id, "dead")
        self.alive = False
        self._death = asyncio.get_running_loop().create_task(self.agent.close(drain=False))
        await asyncio.Event().wait()  # cancelled by the close above

    # -- the dock ---------------------------------------------------------------------------

    def go_charge(self) -> None:
        if self.docking or not self.alive:
            return
        self.docking = True
        self._charger = asyncio.get_running_loop().create_task(self._charge())

    async def _charge(self) -> None:
        journal, me = self.journal, self.id
        journal.set_state(me, "waiting-dock", f"battery {self.battery:.0f} %")
        ahead = len(journal.dock.occupants) + len(journal.dock_waiting)
        journal.waiting_for_dock(me, True)
        journal.log("dock", f"{me} wants the dock (battery {self.battery:.0f} %, {ahead} ahead)")
        try:
            ttl = (FULL - self.battery) / CHARGE_RATE / self.cell.speed + 10.0
            while True:
                try:
                    lease = await self.agent.leases.acquire(DOCK, ttl=ttl, timeout=60)
                    break
                except LeaseTimeoutError:
                    continue
            journal.waiting_for_dock(me, False)
            async with lease:
                if not journal.dock.plug(me, lease.token):
                    journal.log("dock", f"{me}: the dock refused stale token {lease.token}")
                    return
                journal.log("dock", f"{me} docks with fencing token {lease.token}")
                journal.set_state(me, "charging")
                await self._charging()
                journal.log("dock", f"{me} leaves the dock at {self.battery:.0f} %")
        except FleetchatError as exc:
            journal.log("dock", f"{me}: dock lease failed [{exc.code}]")
        finally:
            journal.waiting_for_dock(me, False)
            self.docking = False
            if self.alive:
                journal.set_state(me, "working" if self.running else "idle")

    async def _charging(self) -> None:
        began = time.time()
        tick = 0.1
        try:
            while self.battery < FULL:
                await asyncio.sleep(tick)
                self._set_battery(self.battery + CHARGE_RATE * tick * self.cell.speed)
        finally:
            self.journal.dock.unplug(self.id)
            self.journal.agent(self.id).charging_seconds += time.time() - began
