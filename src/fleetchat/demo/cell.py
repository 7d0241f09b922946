"""The simulated factory cell: who is in it, how long work takes, and the faults it suffers.

Every machine is a real SDK :class:`~fleetchat.client.Agent` connected over the WebSocket API:
mobile robots (``amr-*``: transport, on a battery they recharge on the shared dock, which they
must hold the lease of), arms (``arm-*``: pick, place, assemble, weld, in three profiles) and
inspection cameras (``cam-*``). The machines themselves are in :mod:`fleetchat.demo.machines`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from fleetchat.registry.matching import match_score

__all__ = ["STEPS", "AgentSpec", "CellSpec", "FaultPlan", "StepSpec", "build_cell", "duration"]


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One kind of work: what it requires ({capability: weight}) and how long it takes a
    perfect machine, in real seconds."""

    required: dict[str, float]
    seconds: float


STEPS: dict[str, StepSpec] = {
    "pick": StepSpec({"pick": 1.0}, 8.0),
    "transport": StepSpec({"transport": 1.0, "navigate": 0.5}, 24.0),
    "assemble": StepSpec({"assemble": 1.0, "place": 0.5}, 20.0),
    "weld": StepSpec({"weld": 1.0}, 26.0),
    "inspect": StepSpec({"inspect": 1.0, "vision": 0.5}, 6.0),
}

# Three kinds of arm. Every arm picks; a picker cannot assemble (score 0.79 < 0.8), a welder
# assembles just well enough (0.81), only a welder welds: picks compete with the rest.
_ARMS = [
    {"pick": 0.96, "place": 0.93, "assemble": 0.72},
    {"pick": 0.86, "place": 0.9, "assemble": 0.95, "weld": 0.55},
    {"pick": 0.83, "place": 0.8, "assemble": 0.82, "weld": 0.96},
]
_CAMERAS = [{"inspect": 0.97, "vision": 0.95}, {"inspect": 0.9, "vision": 0.86}]


@dataclass(frozen=True, slots=True)
class AgentSpec:
    id: str
    kind: str
    """amr, arm or camera."""
    capabilities: dict[str, float]
    capacity: int = 1
    battery: float | None = None
    """Percent at the start (mobile robots only)."""
    drain: float = 0.0
    """Battery percent one transport uses."""


@dataclass(slots=True)
class FaultPlan:
    """The faults of a run, fixed by the seed before it starts.

    - ``low_start``: the best transport robot starts almost flat; it heads for the dock at
      once and declines every offer until charged (its ``accept`` predicate says no).
    - ``rush``: after order ``rush_after`` is submitted these robots' batteries drop (a cold
      soak) and they all want the dock at once; the lease queue serialises them.
    - after order ``death_after`` the next robot to start a transport dies half-way through
      it: its agent is closed without draining; the hub sees the connection drop and gives the
      task to another robot.
    """

    low_start: str
    rush: list[str]
    rush_after: int
    death_after: int
    armed: bool = False
    victim: str | None = None

    def claim_death(self, robot: str) -> bool:
        """Whether ``robot``, starting a transport now, is the one that dies."""
        if not self.armed or self.victim is not None:
            return False
        self.victim = robot
        return True


@dataclass(slots=True)
class CellSpec:
    seed: int
    speed: float
    agents: list[AgentSpec] = field(default_factory=list)
    faults: FaultPlan | None = None

    def of_kind(self, kind: str) -> list[AgentSpec]:
        return [a for a in self.agents if a.kind == kind]


def _vary(rng: random.Random, profile: dict[str, float], spread: float = 0.03) -> dict[str, float]:
    return {k: round(min(0.99, v + rng.uniform(-spread, spread)), 2) for k, v in profile.items()}


def build_cell(n_agents: int, n_orders: int, seed: int, speed: float) -> CellSpec:
    """The cell's machines (``n_agents`` with the planner, at least 8) and its fault plan.

    About 30 % arms, one camera per ten agents, the rest mobile robots.
    """
    rng = random.Random(seed)
    n = max(n_agents, 8) - 1  # the planner is the last one
    cameras = max(1, round(n / 10))
    arms = max(3, round(n * 0.3))
    amrs = n - cameras - arms
    cell = CellSpec(seed, speed)
    for i in range(amrs):
        transport = round(rng.uniform(0.84, 0.97), 2)
        caps = {"transport": transport, "navigate": round(rng.uniform(0.88, 0.98), 2)}
        battery = round(rng.uniform(55, 100))
        drain = round(rng.uniform(6, 10), 1)
        cell.agents.append(AgentSpec(f"amr-{i + 1:02d}", "amr", caps, 1, battery, drain))
    for i in range(arms):
        caps = _vary(rng, _ARMS[i % len(_ARMS)])
        cell.agents.append(AgentSpec(f"arm-{i + 1:02d}", "arm", caps))
    for i in range(cameras):
        caps = _vary(rng, _CAMERAS[i % len(_CAMERAS)], 0.01)
        cell.agents.append(AgentSpec(f"cam-{i + 1:02d}", "camera", caps, capacity=2))
    robots = cell.of_kind("amr")
    need = STEPS["transport"].required
    best = max(robots, key=lambda a: (match_score(a.capabilities, need), a.id))
    others = [a.id for a in robots if a.id != best.id]
    cell.agents[cell.agents.index(best)] = AgentSpec(
        best.id, "amr", best.capabilities, 1, 12.0, best.drain
    )
    cell.faults = FaultPlan(
        low_start=best.id,
        rush=sorted(rng.sample(others, min(3, len(others)))),
        rush_after=max(1, round(n_orders * rng.uniform(0.2, 0.3))),
        death_after=max(1, round(n_orders * rng.uniform(0.35, 0.5))),
    )
    return cell


def duration(seed: int, task_key: str, spec: AgentSpec, step: str, speed: float) -> float:
    """Wall seconds ``spec`` takes for ``step`` of ``task_key``: the step's real time, longer
    for a less proficient machine (x0.6 at a match of 1.0, x1.0 at 0.6), with +-15 % noise that
    depends only on the seed, the task and the machine (so a seed replays the same)."""
    work = STEPS[step]
    score = match_score(spec.capabilities, work.required)
    noise = random.Random(f"{seed}/{task_key}/{spec.id}").uniform(0.85, 1.15)
    return work.seconds * (1.6 - score) * noise / speed
