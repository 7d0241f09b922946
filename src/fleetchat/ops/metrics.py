"""The hub's metrics in the Prometheus format, read from the hub's state at scrape time
(docs/observability.md has the table of every metric).

Nothing is counted on the hot path for them: the delivery counters and latency histogram are
the bus observer's (:class:`fleetchat.chat.metrics.DeliveryMetrics`), tasks by state and
workflow steps are kept by watchers (:mod:`fleetchat.ops.live_counts`), the rest (agents,
connections, leases, dead-letter backlog, scaling, leadership) is read when scraped. Each
:class:`HubMetrics` has its own ``CollectorRegistry``, so several hubs can share a process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from fleetchat import __version__
from fleetchat.backends.local_bus import DLQ_CHANNEL
from fleetchat.chat.metrics import Histogram
from fleetchat.ops.live_counts import StepCounts, TaskCounts
from fleetchat.types import PRIORITIES

if TYPE_CHECKING:
    from fleetchat.hub import Hub

__all__ = ["ALLOCATION_BUCKETS", "LATENCY_BUCKETS", "HubMetrics", "Sample"]

LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    *(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
"""Bucket bounds (seconds) of ``fleetchat_delivery_latency_seconds``."""
ALLOCATION_BUCKETS: tuple[float, ...] = (
    *(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005),
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
"""Bucket bounds (seconds) of ``fleetchat_task_allocation_seconds``."""
AGENT_STATUSES = ("available", "busy", "draining", "offline")


@dataclass(frozen=True, slots=True)
class Sample:
    """What one scrape reads from the store and the bus (the rest is read where it lives)."""

    lease_resources: int = 0
    """Resources ever leased."""
    leases_held: int = 0
    lease_waiters: int = 0
    dead_letter_backlog: int = 0
    """Dead letters kept in ``$dlq``."""


class HubMetrics:
    """The metrics of one hub as served by one HubServer.

    Args:
        hub: the started (or starting) hub.
        sessions: agent id -> its open WebSocket sessions (the server's live mapping).
    """

    def __init__(self, hub: Hub, sessions: Mapping[str, Sized]) -> None:
        self.hub = hub
        self._sessions = sessions
        self.tasks = TaskCounts(hub.tasks, hub.clock)
        self.steps = StepCounts(hub.workflows.engine)
        self.sample = Sample()
        """The last scrape's reads."""
        self._started = hub.clock.monotonic()
        self._reading = asyncio.Lock()  # one refresh at a time (the task seed is not reentrant)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(_HubCollector(self))

    def close(self) -> None:
        """Stop watching the hub's services."""
        self.tasks.close()
        self.steps.close()

    async def refresh(self) -> Sample:
        """Read what lives in the store and the bus; bring the task counts up to date."""
        async with self._reading:
            return await self._refresh()

    async def _refresh(self) -> Sample:
        hub = self.hub
        await self.tasks.refresh(hub.coordinator.is_leader)
        leases = await hub.leases.list()
        dlq = hub.bus.channel(DLQ_CHANNEL)
        backlog = 0
        if dlq is not None and dlq.last_seq:
            oldest = await hub.bus.history(DLQ_CHANNEL, limit=1)
            backlog = dlq.last_seq - oldest[0].seq + 1 if oldest else 0
        self.sample = Sample(
            lease_resources=len(leases),
            leases_held=sum(1 for s in leases if s.holder is not None),
            lease_waiters=sum(len(s.waiting) for s in leases),
            dead_letter_backlog=backlog,
        )
        return self.sample

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric, read now, in the format the ``Accept`` header asks for (the
        Prometheus text format by default, or OpenMetrics): (body, content type)."""
        await self.refresh()
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    # -- what both /metrics and /v1/stats read ----------------------------------------------

    def connections(self) -> tuple[int, int]:
        """(open WebSocket sessions, agents with at least one)."""
        sessions = list(self._sessions.values())
        return sum(len(s) for s in sessions), sum(1 for s in sessions if len(s))

    def agents_by_status(self) -> dict[str, int]:
        registry = self.hub.registry
        out = dict.fromkeys(AGENT_STATUSES, 0)
        for agent in registry.list():
            out[registry.status(agent)] += 1
        return out

    def scaling(self) -> tuple[dict[str, int], dict[str, int]]:
        """(scaling events by kind: out, in, restart, failed; desired instances by pool)."""
        scaler = self.hub.ops.scaling
        counts = _int_map(getattr(scaler, "counts", None))
        for kind in ("out", "in", "failed"):
            counts.setdefault(kind, 0)
        return counts, _int_map(getattr(scaler, "desired", None))

    def uptime(self) -> float:
        """Seconds since this server started serving the hub."""
        return max(self.hub.clock.monotonic() - self._started, 0.0)


def _int_map(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int | float)}


def histogram_family(
    name: str, doc: str, hist: Histogram, bounds: Sequence[float]
) -> HistogramMetricFamily:
    """``hist`` as a Prometheus histogram over ``bounds`` (cumulative buckets, +Inf, sum)."""
    counts = hist.cumulative(bounds)
    buckets = [(repr(float(b)), float(c)) for b, c in zip(bounds, counts, strict=False)]
    buckets.append(("+Inf", float(counts[-1])))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.total)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: Sequence[str],
    values: Mapping[Any, float],
) -> Metric:
    family = kind(name, doc, labels=list(labels))
    for key, value in values.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], float(value))
    return family


class _HubCollector:
    """Yields the ``fleetchat_*`` families from the hub's state and the last sample."""

    def __init__(self, metrics: HubMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._deliveries()
        yield from self._work()
        yield from self._fleet()

    def _deliveries(self) -> Iterator[Metric]:
        d = self._m.hub.metrics
        c, g = CounterMetricFamily, GaugeMetricFamily
        yield _labelled(
            c,
            "fleetchat_messages_published",
            "Messages committed to channels, by priority.",
            ["priority"],
            {str(p): d.published_by_priority.get(str(p), 0) for p in PRIORITIES},
        )
        yield _labelled(
            c,
            "fleetchat_deliveries_acked",
            "Deliveries acked by their member, by priority.",
            ["priority"],
            {str(p): d.delivered_by_priority.get(str(p), 0) for p in PRIORITIES},
        )
        yield _counter("fleetchat_delivery_retries", "Deliveries sent again.", d.retries)
        yield _counter("fleetchat_dead_letters", "Deliveries dead-lettered.", d.dead_lettered)
        yield _counter("fleetchat_deliveries_expired", "Deliveries expired.", d.expired)
        yield _counter(
            "fleetchat_deliveries_dropped", "Deliveries lost to channel retention.", d.dropped
        )
        yield _counter("fleetchat_requests", "Requests sent (request/reply).", d.requests)
        yield _counter(
            "fleetchat_request_timeouts", "Requests that got no reply in time.", d.request_timeouts
        )
        yield histogram_family(
            "fleetchat_delivery_latency_seconds",
            "Publish to ack, retries included.",
            d.latency,
            LATENCY_BUCKETS,
        )
        sample = self._m.sample
        yield g(
            "fleetchat_dead_letter_backlog",
            "Dead letters kept in $dlq.",
            sample.dead_letter_backlog,
        )
        yield g(
            "fleetchat_channels",
            "Channels, system channels included.",
            len(self._m.hub.bus.channels()),
        )

    def _work(self) -> Iterator[Metric]:
        m = self._m
        c, g = CounterMetricFamily, GaugeMetricFamily
        yield _labelled(
            g, "fleetchat_tasks", "Unfinished tasks by state.", ["state"], dict(m.tasks.active)
        )
        yield _labelled(
            c,
            "fleetchat_tasks_finished",
            "Tasks that reached a final state through this node, by state.",
            ["state"],
            dict(m.tasks.finished),
        )
        yield _counter(
            "fleetchat_tasks_submitted", "Tasks submitted through this node.", m.tasks.submitted
        )
        scheduler = m.hub.scheduler
        yield histogram_family(
            "fleetchat_task_allocation_seconds",
            "Time the scheduler took to choose an agent for a task (leader).",
            scheduler.decisions,
            ALLOCATION_BUCKETS,
        )
        yield _counter(
            "fleetchat_scheduler_passes", "Scheduler passes over the queue.", scheduler.passes
        )
        yield _labelled(
            c,
            "fleetchat_workflow_steps",
            "Workflow step events by step type and outcome (leader).",
            ["type", "outcome"],
            dict(m.steps.steps),
        )
        yield _labelled(
            c,
            "fleetchat_workflow_executions",
            "Workflow executions by outcome: started, completed, failed, cancelled, error.",
            ["outcome"],
            dict(m.steps.executions),
        )
        yield g(
            "fleetchat_workflow_executions_running",
            "Executions the engine runs here (leader).",
            len(m.hub.workflows.engine.running),
        )
        sample = m.sample
        yield g("fleetchat_leases_held", "Leases held now.", sample.leases_held)
        yield g("fleetchat_lease_waiters", "Acquires waiting for a lease.", sample.lease_waiters)
        yield g("fleetchat_lease_resources", "Resources ever leased.", sample.lease_resources)

    def _fleet(self) -> Iterator[Metric]:
        m = self._m
        hub = m.hub
        g = GaugeMetricFamily
        sessions, connected = m.connections()
        yield g("fleetchat_connections", "Open agent WebSocket sessions on this node.", sessions)
        yield g("fleetchat_agents_connected", "Agents with a session on this node.", connected)
        yield _labelled(
            g, "fleetchat_agents", "Registered agents by status.", ["status"], m.agents_by_status()
        )
        events, desired = m.scaling()
        yield _labelled(
            CounterMetricFamily,
            "fleetchat_scaling_events",
            "Autoscaler actions by direction: out, in, restart, failed.",
            ["direction"],
            events,
        )
        yield _labelled(
            g,
            "fleetchat_scaling_desired_instances",
            "Desired instances by pool.",
            ["pool"],
            desired,
        )
        coord = hub.coordinator
        yield g("fleetchat_leader", "1 on the leading node, else 0.", float(coord.is_leader))
        yield g("fleetchat_leader_epoch", "Leadership epoch this node knows.", coord.epoch)
        yield g(
            "fleetchat_degraded",
            "1 while the hub refuses low-priority work.",
            float(hub.gate.degraded),
        )
        info = g("fleetchat_node", "This node (value 1).", labels=["node", "version"])
        info.add_metric([coord.node_id, __version__], 1.0)
        yield info
