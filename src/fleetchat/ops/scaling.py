"""The autoscaler: metrics, policies, actuators (docs/autoscaling.md).

On the leading node, every ``scaling.interval`` (30 s; sooner after a :meth:`Autoscaler.signal`)
the autoscaler measures each pool (:mod:`fleetchat.ops.scaling_metrics`), decides its size
(:mod:`fleetchat.ops.scaling_policy`) and resizes it through its actuator
(:mod:`fleetchat.ops.actuators`). Every resize, restart of a worker that exited, and failure is
an event on ``$ops`` (``type: scaling``); a failure is also an alert on ``$alerts`` (the first
of a run of failures) and is retried at the next evaluation. An error inside a round is logged
and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.errors import ConflictError, FleetchatError, InvalidInputError, NotFoundError
from fleetchat.ops.actuators import Actuator, make_actuator
from fleetchat.ops.scaling_metrics import MetricsCollector, PoolMetrics
from fleetchat.ops.scaling_policy import Cooldowns, decide
from fleetchat.ops.settings import PoolSettings, ScalingSettings

if TYPE_CHECKING:
    from fleetchat.hub import Hub
    from fleetchat.types import TimerHandle

__all__ = ["Autoscaler", "PoolStatus"]

log = logging.getLogger(__name__)


class PoolStatus(msgspec.Struct, kw_only=True):
    """One pool as ``GET /v1/scaling`` and ``fleetchat scaling`` show it."""

    name: str
    actuator: str
    capability: str
    min: int
    max: int
    active: bool
    """The autoscaler sizes this pool on this node (it leads); else the rest is unknown here."""
    current: int | None = None
    """Instances the pool has as far as the actuator knows (None: unknown)."""
    desired: int | None = None
    """Instances the autoscaler wants."""
    reason: str = ""
    """The last evaluation's outcome."""
    cooldown_left: float = 0.0
    """Seconds before the cooldown lets the wanted change happen."""
    metrics: PoolMetrics | None = None
    """The last evaluation's measures."""
    error: str | None = None
    """The last resize's error, while it keeps failing."""
    pids: list[int] = []
    """A ``process`` pool's worker processes."""


@dataclass
class _Pool:
    settings: PoolSettings
    actuator: Actuator
    desired: int
    cooldowns: Cooldowns = field(default_factory=Cooldowns)
    metrics: PoolMetrics | None = None
    reason: str = "starting"
    cooldown_left: float = 0.0
    error: str | None = None

    def current(self) -> int | None:
        return self.actuator.size()


class Autoscaler:
    """Evaluates the policies every ``interval`` on the leader and resizes the pools.

    Attributes:
        counts: scaling events so far by outcome: ``out`` and ``in`` (resizes done),
            ``restart`` (workers that exited, replaced), ``failed`` (resizes that failed);
            for the metrics exporter.
        desired: the size each pool should have now, by pool name (leader only).
        rounds: evaluations done.
    """

    def __init__(self, hub: Hub, settings: ScalingSettings) -> None:
        self._hub = hub
        self.settings = settings
        self.counts: dict[str, int] = {"out": 0, "in": 0, "restart": 0, "failed": 0}
        self.desired: dict[str, int] = {}
        self.rounds = 0
        self._pools: dict[str, _Pool] = {}
        self._collector = MetricsCollector(hub)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._hint: TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None  # a loop letting go of its pools
        self._leading = False
        self._open = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Called once the hub's services are open (every node)."""
        self._open = True

    def lead(self, leading: bool) -> None:
        """Start (or stop) the loop; a node that stops leading stops its worker processes."""
        self._leading = leading
        if leading and self._open and self.settings.pools and self._task is None:
            self._task = asyncio.create_task(self._run(self._stopping), name="autoscaler")
        elif not leading and self._task is not None:
            self._task.cancel()  # its finally lets go of the pools
            self._stopping, self._task = self._task, None

    async def close(self) -> None:
        """Stop the loop and the pools' worker processes."""
        self._open = False
        for task in (self._task, self._stopping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._stopping = None
        await self._release()

    def reconfigure(self, settings: ScalingSettings) -> None:
        """New settings: pools added, changed or removed take effect at once."""
        self.settings = settings
        self.lead(self._leading)
        self._wake.set()

    def signal(self, reason: str, **details: object) -> None:
        """A hint (a backlog from failure detection, a worker that exited): evaluate after
        ``signal_delay`` (debounced), not at the next tick."""
        if self._task is None or self._hint is not None:
            return
        log.info("scaling hint", extra={"reason": reason, **details})
        self._hint = self._hub.clock.call_later(self.settings.signal_delay, self._hinted)

    def _hinted(self) -> None:
        self._hint = None
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:  # the last time this node led: its pools are let go first
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        try:
            while True:
                self._wake.clear()
                try:
                    await self.evaluate()
                except Exception:  # the loop survives its own errors
                    log.exception("autoscaler round failed")
                handle = self._hub.clock.call_later(self.settings.interval, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    handle.cancel()
        finally:
            await self._release()

    async def _release(self) -> None:
        """Let go of every pool (stop a ``process`` pool's workers)."""
        if self._hint is not None:
            self._hint.cancel()
            self._hint = None
        pools, self._pools = self._pools, {}
        self.desired.clear()
        for name, pool in pools.items():
            try:
                await pool.actuator.close()
            except Exception:
                log.exception("pool not released", extra={"pool": name})

    async def evaluate(self) -> list[dict[str, Any]]:
        """One round: measure, decide and resize every pool; returns the events recorded."""
        async with self._lock:
            await self._sync_pools()
            metrics = await self._collector.snapshot(
                {
                    n: (p.settings.capability, p.actuator.pids() if _local(p) else None)
                    for n, p in self._pools.items()
                }
            )
            events: list[dict[str, Any]] = []
            for name, pool in self._pools.items():
                try:
                    events += await self._evaluate_pool(name, pool, metrics[name])
                except Exception:
                    log.exception("pool evaluation failed", extra={"pool": name})
            self.rounds += 1
            return events

    async def _sync_pools(self) -> None:
        """Follow the settings: new pools get an actuator, changed ones a new one."""
        wanted = self.settings.pools
        kept: dict[str, tuple[int, Cooldowns]] = {}  # a changed pool keeps size and cooldowns
        for name in [n for n, p in self._pools.items() if wanted.get(n) != p.settings]:
            old = self._pools.pop(name)
            kept[name] = (old.desired, old.cooldowns)
            await old.actuator.close()
            self.desired.pop(name, None)
        for name, settings in wanted.items():
            if name not in self._pools:
                actuator = make_actuator(
                    name, settings, self._hub.clock, lambda: self.signal("worker exited")
                )
                last = kept.get(name)
                if last is None and actuator.size() is None:
                    last = await self._last_recorded(name)
                if last is None:  # a new process pool: 0 workers, then the policies' min
                    self._pools[name] = _Pool(settings, actuator, 0)
                else:
                    start = min(max(last[0], settings.min), settings.max)
                    self._pools[name] = _Pool(settings, actuator, start, last[1])
                self.desired[name] = self._pools[name].desired

    async def _last_recorded(self, name: str) -> tuple[int, Cooldowns]:
        """A remote pool's size and cooldowns from its last recorded resize (else its
        ``min``), so a new leader carries on from the old one."""
        settings = self.settings.pools[name]
        for event in reversed(await self._hub.ops.journal.read(kind="scaling", limit=500)):
            to, previous, at = event.get("to"), event.get("from"), event.get("at")
            if event.get("pool") == name and event.get("ok") and isinstance(to, int):
                at = float(at) if isinstance(at, int | float) else None
                grew = isinstance(previous, int) and to > previous
                cooldowns = Cooldowns(last_out=at if grew else None, last_change=at)
                return to, cooldowns
        return settings.min, Cooldowns()

    async def _evaluate_pool(
        self, name: str, pool: _Pool, metrics: PoolMetrics
    ) -> list[dict[str, Any]]:
        now = self._hub.clock.time()
        pool.metrics = metrics
        events = []
        exited = pool.actuator.exited()
        current = pool.current()
        if exited or current != pool.desired:
            # Put right what is off first: workers that exited, a resize that failed, or a
            # remote pool told its size once at start.
            reason = "restart: " + "; ".join(exited) if exited else _retry_reason(pool, current)
            events.append(await self._resize(name, pool, pool.desired, reason, "restart"))
            if not events[-1]["ok"]:
                return events
        decision = decide(metrics, pool.desired, pool.settings, self.settings, pool.cooldowns, now)
        pool.reason, pool.cooldown_left = decision.reason, decision.cooldown_left
        if decision.changes(pool.desired):
            kind = "out" if decision.desired > pool.desired else "in"
            events.append(await self._resize(name, pool, decision.desired, decision.reason, kind))
        return events

    async def _resize(
        self, name: str, pool: _Pool, to: int, reason: str, kind: str
    ) -> dict[str, Any]:
        """Resize through the actuator and record the event; a failure is alerted."""
        clock = self._hub.clock
        before = pool.current()
        previous = pool.desired if before is None else before
        started = clock.monotonic()
        error: str | None = None
        try:
            await pool.actuator.resize(to, previous, reason)
        except FleetchatError as exc:
            error = exc.message
        except Exception as exc:  # an actuator's own bug: recorded like a failure
            log.exception("actuator failed", extra={"pool": name})
            error = f"{type(exc).__name__}: {exc}"
        now = clock.time()
        event: dict[str, Any] = {
            "pool": name,
            "kind": kind,
            "from": previous,
            "to": to,
            "reason": reason,
            "metrics": msgspec.to_builtins(pool.metrics) if pool.metrics else None,
            "actuator": pool.settings.actuator,
            "ok": error is None,
            "error": error,
            "at": now,
            "took": round(clock.monotonic() - started, 4),
        }
        pool.desired = self.desired[name] = to
        if error is None:
            if to != previous:
                self.counts[_count_key(kind, to, previous)] += 1
            if kind in ("out", "in", "manual"):
                last_out = now if to > previous or kind == "manual" else pool.cooldowns.last_out
                pool.cooldowns = Cooldowns(last_out=last_out, last_change=now)
            pool.error = None
        else:
            self.counts["failed"] += 1
            first = pool.error is None
            pool.error = error
            if first:
                await self._hub.ops.journal.alert(
                    "scaling_failed",
                    f"pool {name} could not be resized {previous} -> {to}: {error}",
                    pool=name,
                    to=to,
                    error=error,
                )
        log.info(
            "scaling event",
            extra={"pool": name, "from": previous, "to": to, "ok": error is None},
        )
        await self._hub.ops.journal.record("scaling", event)
        return event

    # -- what the API shows and does -------------------------------------------------------------

    def status(self) -> list[PoolStatus]:
        """Every configured pool: sizes, the last measures and decision (leader only)."""
        out = []
        for name, settings in sorted(self.settings.pools.items()):
            pool = self._pools.get(name)
            base = PoolStatus(
                name=name,
                actuator=settings.actuator,
                capability=settings.capability,
                min=settings.min,
                max=settings.max,
                active=pool is not None,
            )
            if pool is not None:
                base = msgspec.structs.replace(
                    base,
                    current=pool.current(),
                    desired=pool.desired,
                    reason=pool.reason,
                    cooldown_left=round(pool.cooldown_left, 3),
                    metrics=pool.metrics,
                    error=pool.error,
                    pids=pool.actuator.pids(),
                )
            out.append(base)
        return out

    async def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` scaling events, oldest first (from ``$ops``)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidInputError("limit must be 1..10000", field="limit")
        return await self._hub.ops.journal.read(kind="scaling", limit=limit)

    async def scale(self, name: str, count: int) -> dict[str, Any]:
        """Resize pool ``name`` to ``count`` now (an operator's override). The cooldowns start
        over, so the policies leave it for at least ``cooldown_in`` (down) / ``cooldown_out``.

        Raises:
            NotFoundError: no such pool.
            InvalidInputError: ``count`` outside the pool's ``min``..``max``.
            ConflictError: the autoscaler does not run on this node (ask the leader).
        """
        settings = self.settings.pools.get(name)
        if settings is None:
            raise NotFoundError(f"no scaling pool {name!r}", pool=name)
        if isinstance(count, bool) or not settings.min <= count <= settings.max:
            raise InvalidInputError(
                f"count must be {settings.min}..{settings.max} for pool {name}", field="count"
            )
        if self._task is None:
            raise ConflictError("the autoscaler runs on the leading node; ask that one")
        async with self._lock:
            await self._sync_pools()
            return await self._resize(name, self._pools[name], count, "manual", "manual")


def _local(pool: _Pool) -> bool:
    return pool.settings.actuator == "process"


def _count_key(kind: str, to: int, previous: int) -> str:
    if kind in ("out", "in", "restart"):
        return kind
    return "out" if to > previous else "in"


def _retry_reason(pool: _Pool, current: int | None) -> str:
    if current is None:
        return f"start: the pool is told its size {pool.desired}"
    return f"retry: {current} instance(s), {pool.desired} wanted ({pool.reason})"
