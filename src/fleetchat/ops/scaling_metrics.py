"""What the autoscaler measures per pool: CPU, queue depth, utilisation and task latency.

Collection is cheap: the queue comes from the scheduler's in-memory view of unfinished tasks
(on the leader, where the autoscaler runs), utilisation from the registry, latency from the
task changes this node saves, and CPU from psutil's counters since the previous round (no
sampling sleep).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec
import psutil  # type: ignore[import-untyped]  # no stubs; types-psutil is not a dependency

from fleetchat.tasks.records import TaskRecord

if TYPE_CHECKING:
    from fleetchat.hub import Hub
    from fleetchat.models import AgentInfo
    from fleetchat.types import Clock

__all__ = ["LatencyWindow", "MetricsCollector", "PoolMetrics", "pool_metrics"]

LATENCY_WINDOW = 60.0
"""Seconds of started tasks the latency is averaged over."""


class PoolMetrics(msgspec.Struct, kw_only=True):
    """One pool's measures at one evaluation."""

    cpu: float | None
    """The CPU utilisation the policy acts on, 0..1: for a ``process`` pool the mean of its
    worker processes (each as a share of one core; None before they are measured), for
    another pool the machine's."""
    system_cpu: float
    """The machine's CPU utilisation, 0..1."""
    queued: int
    """Queued tasks that need the pool's capability (all queued tasks when it names none)."""
    agents: int
    """Online agents with the capability (all online agents when it names none)."""
    utilisation: float | None
    """Their active tasks over their capacity, 0..1 (None: no such agent online)."""
    latency: float | None
    """Mean seconds from queued to started of the pool's tasks started in the last minute
    (None: none started)."""
    oldest_queued: float
    """Seconds the oldest of the pool's queued tasks has waited (0: none waits)."""


class LatencyWindow:
    """The queued-to-started waits of recently started tasks, told by ``hub.tasks``."""

    def __init__(self, clock: Clock, window: float = LATENCY_WINDOW) -> None:
        self._clock = clock
        self._window = window
        self._waits: deque[tuple[float, tuple[str, ...], float]] = deque(maxlen=10_000)
        self._seen: dict[str, int] = {}  # task id -> attempts counted (bounded below)

    def observe(self, task: TaskRecord) -> None:
        """A saved task change: a task that just started adds its wait."""
        if task.state != "running" or not task.attempts:
            return
        attempt = task.attempts[-1]
        if attempt.started_at is None or self._seen.get(task.id, 0) >= len(task.attempts):
            return
        self._seen[task.id] = len(task.attempts)
        if len(self._seen) > 20_000:  # forget the oldest half
            for key in list(self._seen)[:10_000]:
                del self._seen[key]
        # A retry waited from the end of the previous attempt, the first from submission.
        since = task.attempts[-2].ended_at if len(task.attempts) > 1 else task.created_at
        wait = max(attempt.started_at - (since or task.created_at), 0.0)
        self._waits.append((attempt.started_at, tuple(task.required), wait))

    def mean(self, capability: str) -> float | None:
        """Mean wait of the tasks needing ``capability`` ("": all) started within the window."""
        cutoff = self._clock.time() - self._window
        while self._waits and self._waits[0][0] < cutoff:
            self._waits.popleft()
        waits = [w for _, caps, w in self._waits if not capability or capability in caps]
        return sum(waits) / len(waits) if waits else None


def pool_metrics(
    capability: str,
    tasks: Iterable[TaskRecord],
    agents: Iterable[AgentInfo],
    *,
    now: float,
    system_cpu: float,
    pool_cpu: float | None,
    latency: float | None,
    local: bool = False,
) -> PoolMetrics:
    """One pool's metrics from the unfinished tasks and the registry's agents (pure).
    ``local``: a pool of local processes, whose CPU is ``pool_cpu``."""
    queued = [
        t for t in tasks if t.state == "queued" and (not capability or capability in t.required)
    ]
    mine = [a for a in agents if a.online and (not capability or capability in a.capabilities)]
    capacity = sum(max(a.capacity, 0) for a in mine)
    return PoolMetrics(
        cpu=pool_cpu if local else system_cpu,
        system_cpu=system_cpu,
        queued=len(queued),
        agents=len(mine),
        utilisation=min(sum(a.active_tasks for a in mine) / capacity, 1.0) if capacity else None,
        latency=latency,
        oldest_queued=max((now - t.created_at for t in queued), default=0.0),
    )


class MetricsCollector:
    """Measures every pool of a hub; one :meth:`snapshot` per evaluation round."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.latency = LatencyWindow(hub.clock)
        self._procs: dict[int, psutil.Process] = {}
        hub.tasks.watchers.append(self.latency.observe)
        psutil.cpu_percent(interval=None)  # the first call starts the counter

    async def unfinished_tasks(self) -> list[TaskRecord]:
        """Every unfinished task: the scheduler's view on the leader, else the store's."""
        if self._hub.scheduler.running:
            return self._hub.scheduler.view()
        return await self._hub.tasks.load_active()

    def process_cpu(self, pids: Sequence[int]) -> float | None:
        """Mean CPU of the processes ``pids`` since the previous call, each as a share of
        one core, 0..1 (None: no pids, or none measured yet)."""
        if not pids:
            return None
        shares: list[float] = []
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    self._procs[pid] = proc = psutil.Process(pid)
                    proc.cpu_percent(interval=None)  # starts its counter; measures next time
                    continue
                shares.append(min(proc.cpu_percent(interval=None) / 100.0, 1.0))
            except psutil.Error:  # exited meanwhile
                self._procs.pop(pid, None)
        for gone in set(self._procs) - set(pids):
            del self._procs[gone]
        return sum(shares) / len(shares) if shares else None

    async def snapshot(
        self, pools: dict[str, tuple[str, Sequence[int] | None]]
    ) -> dict[str, PoolMetrics]:
        """Metrics of each pool, given by name -> (capability, its worker pids; None for a
        pool of remote instances)."""
        tasks = await self.unfinished_tasks()
        agents = self._hub.registry.list()
        system_cpu = psutil.cpu_percent(interval=None) / 100.0
        now = self._hub.clock.time()
        return {
            name: pool_metrics(
                capability,
                tasks,
                agents,
                now=now,
                system_cpu=system_cpu,
                pool_cpu=self.process_cpu(pids or ()),
                latency=self.latency.mean(capability),
                local=pids is not None,
            )
            for name, (capability, pids) in pools.items()
        }
