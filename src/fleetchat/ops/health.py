"""Health checks: agents, channels, delivery queues and the database (docs/operations.md).

:class:`HealthMonitor` answers on every node (``/v1/health``, ``fleetchat health``); the
failure detector on the leader runs it every round and acts on what it finds. Each check is
``ok``, ``warn`` or ``fail``, with the offending agents, members or channels named.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import msgspec

from fleetchat.backends.local_bus import DLQ_CHANNEL
from fleetchat.backends.ports import MemberStats
from fleetchat.errors import FleetchatError
from fleetchat.ops.settings import HealthSettings
from fleetchat.tasks.records import TaskRecord

if TYPE_CHECKING:
    from fleetchat.hub import Hub

__all__ = ["Check", "HealthMonitor", "HealthReport", "Status"]

Status = Literal["ok", "warn", "fail"]
_RANK = {"ok": 0, "warn": 1, "fail": 2}
_LISTED = 20  # offenders named per check
_PROBE_TIMEOUT = 5.0


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One health check's result."""

    name: str
    """``agents.heartbeats``, ``agents.load``, ``agents.response_time``, ``channels.backlog``,
    ``channels.dead_letters``, ``channels.stalled``, ``queues.depth``, ``queues.oldest``,
    ``database.write`` or ``database.disk``."""
    status: Status
    message: str
    value: float | None = None
    """The measure the status was decided on (seconds, a count or a fraction)."""
    items: list[str] = []
    """What is unhealthy (agent ids, member ids), at most 20."""


class HealthReport(msgspec.Struct, kw_only=True):
    """Every check, and the worst status among them."""

    status: Status
    node: str
    leader: bool
    degraded: str | None
    """Why the hub refuses low-priority work now (None: it does not)."""
    at: float
    checks: list[Check]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def _check(name: str, bad: list[str], status: Status, ok: str, problem: str) -> Check:
    """A check over a set of offenders: ``ok`` when there are none."""
    if not bad:
        return Check(name=name, status="ok", message=ok, value=0)
    return Check(
        name=name, status=status, message=problem, value=len(bad), items=sorted(bad)[:_LISTED]
    )


class HealthMonitor:
    """Runs the health checks of one node."""

    def __init__(self, hub: Hub, settings: HealthSettings) -> None:
        self._hub = hub
        self.settings = settings
        self._durations: deque[tuple[str, float]] = deque(maxlen=1000)
        self._dlq_seen: int | None = None  # $dlq's last seq at the last detection round
        self._dlq_growth = 0
        self.last_stats: list[MemberStats] = []
        """The member queues the last report was made from (the detector acts on them)."""
        hub.tasks.watchers.append(self._on_task)

    def _on_task(self, task: TaskRecord) -> None:
        """Finished tasks give each agent's response time (started to finished)."""
        if task.state == "succeeded" and task.attempts:
            last = task.attempts[-1]
            if last.started_at is not None and last.ended_at is not None:
                self._durations.append((last.agent, last.ended_at - last.started_at))

    async def report(self, *, advance: bool = False) -> HealthReport:
        """Run every check. ``advance``: this is a detection round, so dead-letter growth is
        measured from the previous round (other callers see the last round's growth)."""
        hub = self._hub
        now = hub.clock.time()
        stats = self.last_stats = hub.bus.member_stats()
        checks = [
            *self._agent_checks(now),
            *self._channel_checks(now, stats, advance),
            *self._queue_checks(now, stats),
            await self._write_check(),
            self._disk_check(),
        ]
        worst: Status = "ok"
        for c in checks:
            if _RANK[c.status] > _RANK[worst]:
                worst = c.status
        return HealthReport(
            status=worst,
            node=hub.coordinator.node_id,
            leader=hub.coordinator.is_leader,
            degraded=hub.gate.reason,
            at=now,
            checks=checks,
        )

    # -- agents ---------------------------------------------------------------------------------

    def _agent_checks(self, now: float) -> Iterable[Check]:
        s = self.settings
        registry = self._hub.registry
        beat = registry.settings.heartbeat_interval
        online = [a for a in registry.list() if a.online]
        late = [a.id for a in online if now - a.last_heartbeat > 2 * beat]
        offline = len(registry) - len(online)
        yield _check(
            "agents.heartbeats",
            late,
            "warn",
            f"{len(online)} online, {offline} offline; every heartbeat on time",
            f"{len(late)} agent(s) late with heartbeats (more than {2 * beat:g} s)",
        )
        busy = [a.id for a in online if a.load() >= s.load_warn]
        yield _check(
            "agents.load",
            busy,
            "warn",
            f"every agent below {s.load_warn:.0%} load",
            f"{len(busy)} agent(s) at or above {s.load_warn:.0%} load",
        )
        per_agent: dict[str, list[float]] = {}
        for agent, took in self._durations:
            per_agent.setdefault(agent, []).append(took)
        slow = [a for a, d in per_agent.items() if sum(d) / len(d) > s.response_time_warn]
        yield _check(
            "agents.response_time",
            slow,
            "warn",
            f"{len(per_agent)} agent(s) measured, none slower than {s.response_time_warn:g} s",
            f"{len(slow)} agent(s) take over {s.response_time_warn:g} s per task on average",
        )

    # -- channels and queues --------------------------------------------------------------------

    def _channel_checks(
        self, now: float, stats: list[MemberStats], advance: bool
    ) -> Iterable[Check]:
        s = self.settings
        backlogged = [m.member for m in stats if m.queued + m.inflight + m.backlog > s.backlog_warn]
        yield _check(
            "channels.backlog",
            backlogged,
            "warn",
            f"no member has more than {s.backlog_warn} deliveries waiting",
            f"{len(backlogged)} member(s) with more than {s.backlog_warn} deliveries waiting",
        )
        dlq = self._hub.bus.channel(DLQ_CHANNEL)
        seq = dlq.last_seq if dlq is not None else 0
        if advance:
            if self._dlq_seen is not None:
                self._dlq_growth = max(seq - self._dlq_seen, 0)
            self._dlq_seen = seq
        growth = self._dlq_growth
        yield Check(
            name="channels.dead_letters",
            status="warn" if growth > s.dead_letter_growth else "ok",
            message=f"{growth} new dead letter(s) in the last round ({seq} in all)",
            value=growth,
        )
        stalled = [
            m.member
            for m in stats
            if m.oldest is not None and now - m.oldest > s.stalled_after and m.queued
        ]
        yield _check(
            "channels.stalled",
            stalled,
            "warn",
            f"no member has waited more than {s.stalled_after:g} s for a delivery",
            f"{len(stalled)} member(s) with deliveries waiting over {s.stalled_after:g} s",
        )

    def _queue_checks(self, now: float, stats: list[MemberStats]) -> Iterable[Check]:
        s = self.settings
        depth = sum(m.queued + m.inflight + m.backlog for m in stats)
        yield Check(
            name="queues.depth",
            status="ok",
            message=f"{depth} deliveries waiting or in flight for {len(stats)} member(s)",
            value=depth,
        )
        oldest = min((m.oldest for m in stats if m.oldest is not None), default=None)
        age = 0.0 if oldest is None else max(now - oldest, 0.0)
        old = [
            m.member for m in stats if m.oldest is not None and now - m.oldest > s.queue_age_warn
        ]
        yield Check(
            name="queues.oldest",
            status="warn" if old else "ok",
            message=f"the oldest delivery has waited {age:.1f} s",
            value=round(age, 3),
            items=sorted(old)[:_LISTED],
        )

    # -- database -------------------------------------------------------------------------------

    async def probe(self) -> float:
        """Time one real write to the store, in seconds.

        Raises:
            FleetchatError: the write failed; TimeoutError: no answer in 5 s.
        """
        hub = self._hub
        start = time.perf_counter()
        async with asyncio.timeout(_PROBE_TIMEOUT):  # (wait_for can lose a cancel in 3.11)
            await hub.store.probe(hub.coordinator.node_id, hub.clock.time())
        return time.perf_counter() - start

    async def _write_check(self) -> Check:
        s = self.settings
        try:
            took = await self.probe()
        except (FleetchatError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "message", None) or type(exc).__name__
            return Check(name="database.write", status="fail", message=f"write failed: {reason}")
        status: Status = (
            "fail" if took > s.db_write_degrade else "warn" if took > s.db_write_warn else "ok"
        )
        return Check(
            name="database.write",
            status=status,
            message=f"a probe write took {took * 1000:.1f} ms",
            value=round(took, 6),
        )

    def _disk_check(self) -> Check:
        s = self.settings
        path = self._hub.database_path
        if path is None:
            return Check(
                name="database.disk",
                status="ok",
                message="not measured here: the database is not a local file",
            )
        usage = shutil.disk_usage(path.parent if path.parent.exists() else ".")
        free = usage.free / usage.total if usage.total else 1.0
        status: Status = (
            "fail" if free < s.disk_free_degrade else "warn" if free < s.disk_free_warn else "ok"
        )
        return Check(
            name="database.disk",
            status=status,
            message=f"{free:.1%} of the disk free ({usage.free / 2**30:.1f} GiB)",
            value=round(free, 4),
        )

    async def ready(self) -> tuple[bool, str]:
        """Ready to serve: open, and the database takes a write."""
        hub = self._hub
        if hub.state != "open":
            return False, f"the hub is {hub.state}"
        try:
            await self.probe()
        except (FleetchatError, TimeoutError, OSError) as exc:
            return False, f"the database does not take writes: {exc}"
        return True, "ready"
