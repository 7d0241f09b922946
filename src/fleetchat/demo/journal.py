"""What the simulated cell records as it runs: events, agent states, orders, and the dock.

The agents write here (in this process, beside the hub) and the view reads it; the report is
computed from it and from the hub's task records. Nothing here talks to the hub.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AgentState", "Dock", "DockGrant", "Event", "Journal", "OrderRecord"]

EventKind = Literal["order", "fault", "decline", "dock", "recover", "info"]


@dataclass(slots=True)
class Event:
    at: float
    """Seconds since the run started."""
    kind: EventKind
    text: str


@dataclass(slots=True)
class AgentState:
    """What the view shows of one simulated agent."""

    id: str
    kind: str
    """amr, arm, camera or planner."""
    capacity: int = 1
    state: str = "idle"
    """idle, working, declining, waiting-dock, charging, dead."""
    detail: str = ""
    battery: float | None = None
    done: int = 0
    busy_seconds: float = 0.0
    charging_seconds: float = 0.0


@dataclass(slots=True)
class OrderRecord:
    id: str
    recipe: str
    steps: list[str]
    submitted_at: float = 0.0
    finished_at: float | None = None
    completions: int = 0
    """Times the planner saw the order finish: exactly 1 when all is well."""
    step: int = 0
    """Steps done."""
    tasks: list[str] = field(default_factory=list)
    failed: str | None = None


@dataclass(slots=True)
class DockGrant:
    """One robot's turn on the charging dock, as the dock itself saw it."""

    holder: str
    token: int
    plugged_at: float
    unplugged_at: float | None = None


class Dock:
    """The charging dock: the hardware the lease guards. Robots plug in with the fencing token
    of their lease; the dock refuses a token older than one it has seen (a robot whose lease
    was lost), and notes any moment two robots are plugged in at once."""

    def __init__(self, name: str = "dock-1") -> None:
        self.name = name
        self.grants: list[DockGrant] = []
        self.occupants: list[str] = []
        self.overlaps = 0
        self.fenced = 0
        self._highest = 0

    def plug(self, robot: str, token: int) -> bool:
        """Start charging ``robot``; False (and nothing changes) for a stale token."""
        if token <= self._highest:
            self.fenced += 1
            return False
        self._highest = token
        if self.occupants:
            self.overlaps += 1
        self.occupants.append(robot)
        self.grants.append(DockGrant(robot, token, time.time()))
        return True

    def unplug(self, robot: str) -> None:
        if robot in self.occupants:
            self.occupants.remove(robot)
        for grant in reversed(self.grants):
            if grant.holder == robot and grant.unplugged_at is None:
                grant.unplugged_at = time.time()
                break


class Journal:
    """The run's shared notebook (single event loop: no locks needed)."""

    def __init__(self, *, keep: int = 12) -> None:
        self.started = time.time()
        self.events: list[Event] = []
        self.recent: deque[Event] = deque(maxlen=keep)
        self.agents: dict[str, AgentState] = {}
        self.orders: dict[str, OrderRecord] = {}
        self.dock = Dock()
        self.dock_waiting: set[str] = set()
        self.dock_waiting_max = 0
        self.declines = 0
        self.deaths: dict[str, float] = {}
        """Agent id -> wall time (epoch seconds) it died."""

    def elapsed(self) -> float:
        return time.time() - self.started

    def log(self, kind: EventKind, text: str) -> None:
        event = Event(round(self.elapsed(), 2), kind, text)
        self.events.append(event)
        self.recent.append(event)

    def agent(self, agent_id: str) -> AgentState:
        return self.agents[agent_id]

    def set_state(self, agent_id: str, state: str, detail: str = "") -> None:
        entry = self.agents[agent_id]
        entry.state, entry.detail = state, detail

    def waiting_for_dock(self, agent_id: str, waiting: bool) -> None:
        if waiting:
            self.dock_waiting.add(agent_id)
            self.dock_waiting_max = max(self.dock_waiting_max, len(self.dock_waiting))
        else:
            self.dock_waiting.discard(agent_id)
