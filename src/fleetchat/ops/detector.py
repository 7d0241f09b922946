"""Failure detection and recovery, on the leading node (docs/operations.md#failure-detection).

A round every ``health.interval`` (5 s) runs the health checks and acts on them; an agent
going offline (its connection dropped, or its heartbeat deadline passed) is acted on at once,
from the registry's events. The strategy per failure type:

- agent lost: its tasks are retried elsewhere (the scheduler) and its leases released (the
  lease service); the detector follows both to the end, redoes what is late, and records the
  timings;
- member stalled (deliveries waiting longer than ``stalled_after``, no progress in a round):
  its overdue queued deliveries are parked in the dead letters (reason ``stalled``);
- backlog: a scaling signal to the autoscaler;
- database slow or disk nearly full: the hub degrades (refuses new low-priority work with the
  error ``degraded``) and alerts, until the checks pass again.

Every failure and recovery is recorded on ``$ops`` (``type: incident``) with its timings; a
recovery that fails or overruns ``recovery_timeout`` escalates: an alert on ``$alerts`` and in
the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.background import Background
from fleetchat.errors import FleetchatError
from fleetchat.ops.health import HealthMonitor, HealthReport
from fleetchat.ops.settings import HealthSettings
from fleetchat.types import Priority

if TYPE_CHECKING:
    from fleetchat.hub import Hub
    from fleetchat.ops.journal import OpsJournal
    from fleetchat.registry.agents import EventStream

__all__ = ["FailureDetector"]

log = logging.getLogger(__name__)

_FOLLOW = 0.02  # seconds between looks while following a recovery
_GRACE = 0.25  # seconds a finished recovery still listens for releases reported late
_DEGRADE_TOPIC = "degrade"  # bus broadcast topics: one word each
_RELEASED_TOPIC = "released"


class FailureDetector:
    """Finds failures and sees their recoveries through; see the module docstring."""

    def __init__(self, hub: Hub, monitor: HealthMonitor, journal: OpsJournal) -> None:
        self._hub = hub
        self._monitor = monitor
        self._journal = journal
        self._loop_task: asyncio.Task[None] | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._events: EventStream | None = None
        self._work = Background()  # agent-loss follow-ups, a stop after losing the lead
        self._open: dict[str, float] = {}  # condition -> since (backlog, degraded)
        self._marks: dict[str, tuple[float, int]] = {}  # member -> oldest, waiting
        self._released: dict[str, list[str]] = {}  # lost holder -> leases released
        self._held: dict[str, list[str]] = {}  # holder -> leases, as of the last round
        hub.bus.on_broadcast(_DEGRADE_TOPIC, self._on_degrade)
        hub.leases.on_release.append(self._on_release)
        hub.bus.on_broadcast(_RELEASED_TOPIC, self._on_released_elsewhere)

    def _on_release(self, holder: str, resources: list[str]) -> None:
        """A lost holder's leases were released here: keep them for its incident, or tell the
        leader, whose detector records it."""
        if self._loop_task is not None:
            self._released.setdefault(holder, []).extend(resources)
        else:
            data = {"holder": holder, "resources": resources}
            self._hub.bus.broadcast(_RELEASED_TOPIC, msgspec.json.encode(data))

    def _on_released_elsewhere(self, data: bytes) -> None:
        if self._loop_task is not None:
            body = msgspec.json.decode(data)
            self._released.setdefault(body["holder"], []).extend(body["resources"])

    @property
    def settings(self) -> HealthSettings:
        return self._monitor.settings

    # -- lifecycle ------------------------------------------------------------------------------

    def lead(self, leading: bool) -> None:
        if leading and self._loop_task is None:
            self._events = self._hub.registry.events()
            self._loop_task = asyncio.get_running_loop().create_task(self._rounds())
            self._events_task = asyncio.get_running_loop().create_task(self._watch(self._events))
        elif not leading:
            self._spawn(self.stop())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, self._events_task) if t is not None]
        self._loop_task = self._events_task = None
        if self._events is not None:
            self._events.close()
            self._events = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._work.cancel()

    def _spawn(self, coro: Any) -> None:
        self._work.spawn(coro)

    # -- the round ------------------------------------------------------------------------------

    async def _rounds(self) -> None:
        clock = self._hub.clock
        while self._loop_task is not None:
            try:
                await self.check()
            except Exception:
                log.exception("failure detection round failed")
            await clock.sleep(self.settings.interval)

    async def check(self) -> HealthReport:
        """One round: run the checks, act on what they find."""
        report = await self._monitor.report(advance=True)
        held: dict[str, list[str]] = {}
        for lease in await self._hub.leases.list():
            if lease.holder is not None:
                held.setdefault(lease.holder, []).append(lease.resource)
        self._held = held
        await self._stalled(report)
        await self._backlog(report)
        await self._database(report)
        return report

    async def _stalled(self, report: HealthReport) -> None:
        now = report.at
        stalled = set(report.check("channels.stalled").items)
        marks = {
            m.member: (m.oldest, m.queued + m.inflight)
            for m in self._monitor.last_stats  # what the report was made from
            if m.oldest is not None
        }
        for member in stalled:
            # Stalled = no progress since the last round as well: the same oldest delivery
            # still waits, and no fewer deliveries wait than then.
            before, mark = self._marks.get(member), marks.get(member)
            if before is None or mark is None or mark[0] != before[0] or mark[1] < before[1]:
                continue
            parked = self._hub.bus.park_stalled(member, now - self.settings.stalled_after)
            if parked:
                await self._journal.record(
                    "incident",
                    {
                        "failure": "member_stalled",
                        "member": member,
                        "detected_at": now,
                        "recovery": "parked in dead letters",
                        "parked": parked,
                        "recovered_at": self._hub.clock.time(),
                        "ok": True,
                    },
                )
        self._marks = marks

    async def _backlog(self, report: HealthReport) -> None:
        check = report.check("channels.backlog")
        if check.status != "ok":
            self._hub.ops.scaling.signal("backlog", members=check.items, depth=check.value)
        await self._condition("backlog", check.status != "ok", report.at, members=check.items)

    async def _database(self, report: HealthReport) -> None:
        s = self.settings
        write, disk = report.check("database.write"), report.check("database.disk")
        bad = [c for c in (write, disk) if c.status == "fail"]
        gate = self._hub.gate
        if bad and not gate.degraded:
            reason = "; ".join(f"{c.name}: {c.message}" for c in bad)
            self._set_degraded(reason, report.at)
            await self._journal.alert(
                "degraded",
                f"the hub is degraded, refusing {s.degrade_refuses} work and below: {reason}",
                refuses=str(s.degrade_refuses),
            )
        elif not bad and write.status == "ok" and gate.degraded:
            self._set_degraded(None, report.at)
        await self._condition("degraded", gate.degraded, report.at, reason=gate.reason)

    async def _condition(self, name: str, on: bool, now: float, **details: Any) -> None:
        """Record a condition's start and its end (with how long it lasted)."""
        since = self._open.get(name)
        if on and since is None:
            self._open[name] = now
            await self._journal.record(
                "incident", {"failure": name, "detected_at": now, "ok": False, **details}
            )
        elif not on and since is not None:
            del self._open[name]
            await self._journal.record(
                "incident",
                {
                    "failure": name,
                    "detected_at": since,
                    "recovered_at": now,
                    "took": round(now - since, 3),
                    "ok": True,
                },
            )

    def _set_degraded(self, reason: str | None, now: float) -> None:
        """Degrade (or restore) this node, and tell the others."""
        refuses = self.settings.degrade_refuses
        self._apply_degrade(reason, refuses, now)
        data = {"reason": reason, "refuses": str(refuses), "at": now}
        self._hub.bus.broadcast(_DEGRADE_TOPIC, msgspec.json.encode(data))

    def _on_degrade(self, data: bytes) -> None:
        body = msgspec.json.decode(data)
        self._apply_degrade(body["reason"], Priority(body["refuses"]), body["at"])

    def _apply_degrade(self, reason: str | None, refuses: Priority, now: float) -> None:
        if reason is None:
            self._hub.gate.restore()
            log.warning("the hub is no longer degraded")
        else:
            self._hub.gate.degrade(reason, refuses, now)
            log.error("the hub is degraded", extra={"reason": reason})

    # -- agents lost ----------------------------------------------------------------------------

    async def _watch(self, events: EventStream) -> None:
        async for event in events:
            if event.kind in ("offline", "deregistered"):
                self._spawn(self.agent_lost(event.agent_id, event.at))

    async def agent_lost(self, agent_id: str, detected_at: float) -> dict[str, Any]:
        """Follow the recovery of a lost agent's work: its tasks retried elsewhere, its leases
        released. What has not happened by ``recovery_timeout`` is redone once, and alerted."""
        hub = self._hub
        clock = hub.clock
        try:
            # Held now, or already taken back from it (the scheduler and the lease service
            # act on the same event, and may have been first).
            tasks = [
                t.id
                for t in await hub.tasks.list(state="active", limit=10_000)
                if t.holder == agent_id
                or any(
                    a.agent == agent_id
                    and a.outcome == "agent_lost"
                    and (a.ended_at or 0) >= detected_at - 1
                    for a in t.attempts
                )
            ]
            leases = [r.resource for r in await hub.leases.list() if r.holder == agent_id]
        except FleetchatError as exc:
            tasks, leases = [], []
            log.warning("agent loss: state unreadable", extra={"error": exc.code})
        held = {*leases, *self._held.get(agent_id, [])}
        last_heartbeat = None
        with contextlib.suppress(FleetchatError):  # a deregistered agent is gone
            last_heartbeat = hub.registry.get(agent_id).last_heartbeat
        record: dict[str, Any] = {
            "failure": "agent_lost",
            "agent": agent_id,
            "last_heartbeat": last_heartbeat,
            "detected_at": detected_at,
            "tasks": {},
        }
        began = clock.monotonic()
        deadline = began + self.settings.recovery_timeout
        pending_tasks, pending_leases = set(tasks), set(held)
        done_at = detected_at  # when the last piece of the recovery was seen done
        escalated = False
        while True:
            for task_id in list(pending_tasks):
                moved = await self._task_moved(task_id, agent_id)
                if moved is not None:
                    pending_tasks.discard(task_id)
                    done_at = clock.time()
                    record["tasks"][task_id] = {**moved, "after": round(done_at - detected_at, 3)}
            released = set(self._released.pop(agent_id, []))  # by whichever node did it
            for name in pending_leases - released:
                with contextlib.suppress(FleetchatError):
                    if (await hub.leases.get(name)).holder != agent_id:
                        released.add(name)
            if released & pending_leases or released - held:
                done_at = clock.time()
            held |= released
            pending_leases -= released
            settled = not (pending_tasks or pending_leases)
            # A short grace after the end: releases reported by other nodes arrive late.
            if settled and clock.monotonic() - began >= _GRACE:
                break
            if not settled and clock.monotonic() > deadline:
                if escalated:
                    break
                escalated = True
                await self._redo(agent_id, pending_tasks, pending_leases)
                deadline = clock.monotonic() + self.settings.recovery_timeout
            await clock.sleep(_FOLLOW)
        record.update(
            leases=sorted(held),
            recovered_at=done_at,
            took=round(done_at - detected_at, 3),
            ok=not (pending_tasks or pending_leases),
            escalated=escalated,
        )
        if pending_tasks or pending_leases:
            record["unrecovered"] = {
                "tasks": sorted(pending_tasks),
                "leases": sorted(pending_leases),
            }
            await self._journal.alert(
                "recovery_failed",
                f"agent {agent_id} lost; not recovered after {record['took']} s",
                agent=agent_id,
                **record["unrecovered"],
            )
        await self._journal.record("incident", record)
        return record

    async def _task_moved(self, task_id: str, agent_id: str) -> dict[str, Any] | None:
        """Where the lost agent's task is now, once it has left the agent (None: not yet)."""
        task = await self._hub.tasks.find(task_id)
        if task is None:
            return {"state": "gone"}
        if task.holder == agent_id and not task.terminal:
            return None
        return {"state": task.state, "holder": task.holder}

    async def _redo(self, agent_id: str, tasks: set[str], leases: set[str]) -> None:
        """A recovery overran its time: alert, and do it again."""
        await self._journal.alert(
            "recovery_slow",
            f"agent {agent_id} lost {self.settings.recovery_timeout:g} s ago and its work is "
            f"still held ({len(tasks)} task(s), {len(leases)} lease(s)); recovering again",
            agent=agent_id,
        )
        for task_id in tasks:
            with contextlib.suppress(FleetchatError):
                await self._hub.scheduler.agent_lost(task_id, agent_id)
        if leases:
            with contextlib.suppress(FleetchatError):
                await self._hub.leases.release_all(agent_id)
