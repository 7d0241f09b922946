"""What the autoscaler measures: per-pool queue, utilisation and oldest wait (pure), and the
queued-to-started latency window on a fake clock."""

from __future__ import annotations

from typing import Any

from fleetchat.models import AgentInfo
from fleetchat.ops.scaling_metrics import LatencyWindow, pool_metrics
from fleetchat.tasks.records import Attempt, TaskRecord
from fleetchat.testing import FakeClock

T0 = 1_700_000_000.0


def task(
    id: str, state: str = "queued", caps: tuple[str, ...] = ("scan",), **kw: Any
) -> TaskRecord:
    return TaskRecord(
        id=id, required={c: 1.0 for c in caps}, state=state, created_at=kw.pop("at", T0), **kw
    )


def agent(id: str, caps: tuple[str, ...], active: int, capacity: int = 2, **kw: Any) -> AgentInfo:
    return AgentInfo(
        id=id, capabilities={c: 1.0 for c in caps}, active_tasks=active, capacity=capacity, **kw
    )


def measure(capability: str, tasks: list[TaskRecord], agents: list[AgentInfo], **kw: Any) -> Any:
    args: dict[str, Any] = {"now": T0 + 10, "system_cpu": 0.3, "pool_cpu": None, "latency": None}
    return pool_metrics(capability, tasks, agents, **{**args, **kw})


def test_the_queue_counts_queued_tasks_needing_the_pools_capability() -> None:
    tasks = [
        task("a", at=T0 + 4),
        task("b", at=T0 + 1),
        task("c", caps=("weld",)),
        task("d", state="running"),
    ]
    m = measure("scan", tasks, [])
    assert (m.queued, m.oldest_queued) == (2, 9.0)
    assert measure("", tasks, []).queued == 3


def test_utilisation_is_the_active_share_of_the_online_capable_agents_capacity() -> None:
    agents = [
        agent("s1", ("scan",), 2),
        agent("s2", ("scan", "weld"), 0, capacity=2),
        agent("w1", ("weld",), 2),
        agent("s3", ("scan",), 2, online=False),
    ]
    m = measure("scan", [], agents)
    assert (m.agents, m.utilisation) == (2, 0.5)
    assert measure("", [], agents).utilisation == 4 / 6
    assert measure("lift", [], agents).utilisation is None


def test_a_process_pool_acts_on_its_workers_cpu_and_a_remote_one_on_the_machines() -> None:
    local = measure("scan", [], [], pool_cpu=0.9, local=True)
    assert (local.cpu, local.system_cpu) == (0.9, 0.3)
    assert measure("scan", [], [], pool_cpu=None, local=True).cpu is None
    assert measure("scan", [], [], pool_cpu=None).cpu == 0.3


def started(
    id: str, waits: list[tuple[float, float | None]], caps: tuple[str, ...] = ("scan",)
) -> TaskRecord:
    """A running task whose attempts were (offered_at, ended_at) pairs; the last one started."""
    attempts = [Attempt(agent="a", offered_at=o, started_at=o + 0.5, ended_at=e) for o, e in waits]
    return task(id, state="running", caps=caps, attempts=attempts)


async def test_latency_is_the_mean_wait_from_queued_to_started() -> None:
    clock = FakeClock(T0)
    window = LatencyWindow(clock)
    assert window.mean("scan") is None
    window.observe(started("a", [(T0 + 1.5, None)]))  # started at T0 + 2
    window.observe(started("b", [(T0 + 3.5, None)], caps=("weld",)))  # at T0 + 4
    window.observe(task("c"))  # queued: no wait yet
    assert window.mean("scan") == 2.0
    assert window.mean("") == 3.0


async def test_a_task_counts_once_per_attempt_and_a_retry_waits_from_the_last_attempt() -> None:
    clock = FakeClock(T0)
    window = LatencyWindow(clock)
    first = started("a", [(T0, None)])
    window.observe(first)
    window.observe(first)  # a progress report saves the running task again
    assert window.mean("scan") == 0.5
    window.observe(started("a", [(T0, T0 + 10), (T0 + 11, None)]))  # retried, started T0+11.5
    assert window.mean("scan") == (0.5 + 1.5) / 2


async def test_waits_leave_the_window_after_a_minute() -> None:
    clock = FakeClock(T0)
    window = LatencyWindow(clock, window=60.0)
    window.observe(started("a", [(T0, None)]))
    await clock.advance(60)
    assert window.mean("scan") == 0.5
    await clock.advance(1)
    assert window.mean("scan") is None
