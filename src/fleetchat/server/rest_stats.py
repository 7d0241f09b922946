"""``GET /v1/stats``: one JSON summary of this node's view of the hub (``fleetchat stats``),
read from the same sources as ``/metrics`` (:class:`fleetchat.ops.metrics.HubMetrics`)."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from fleetchat import __version__
from fleetchat.ops.metrics import HubMetrics
from fleetchat.server import schemas_stats as s
from fleetchat.server.rest_route import Ctx, Route

__all__ = ["METRICS_KEY", "STATS_ROUTES", "summary"]

METRICS_KEY = web.AppKey("metrics", HubMetrics)
"""Where the server keeps its HubMetrics (set by ``install_metrics``)."""


async def summary(metrics: HubMetrics) -> s.StatsSummary:
    """Read everything now and summarise it."""
    sample = await metrics.refresh()
    hub = metrics.hub
    d = hub.metrics.snapshot()
    decisions = hub.scheduler.decisions
    coordinator = hub.coordinator
    steps = Counter[str]()
    for (_, outcome), n in metrics.steps.steps.items():
        steps[outcome] += n
    connections, connected = metrics.connections()
    events, desired = metrics.scaling()
    return s.StatsSummary(
        at=hub.clock.time(),
        node=s.NodeStats(
            node=coordinator.node_id,
            leader=coordinator.is_leader,
            epoch=coordinator.epoch,
            uptime_seconds=round(metrics.uptime(), 3),
            version=__version__,
            degraded=hub.gate.reason,
        ),
        deliveries=s.DeliveryStats(
            published=d.published,
            delivered=d.delivered,
            success_rate=d.success_rate,
            latency_p50_ms=d.latency_p50_ms,
            latency_p99_ms=d.latency_p99_ms,
            retries=d.retries,
            dead_lettered=d.dead_lettered,
            expired=d.expired,
            dropped=d.dropped,
            dead_letter_backlog=sample.dead_letter_backlog,
        ),
        tasks=s.TaskStats(
            active=dict(metrics.tasks.active),
            finished=dict(metrics.tasks.finished),
            submitted=metrics.tasks.submitted,
            allocations=decisions.count,
            allocation_p50_ms=decisions.quantile(0.5) * 1000,
            allocation_p99_ms=decisions.quantile(0.99) * 1000,
        ),
        workflows=s.WorkflowStats(
            running=len(hub.workflows.engine.running),
            executions=dict(metrics.steps.executions),
            steps=dict(steps),
        ),
        leases=s.LeaseStats(
            resources=sample.lease_resources,
            held=sample.leases_held,
            waiters=sample.lease_waiters,
        ),
        connections=connections,
        agents_connected=connected,
        agents=metrics.agents_by_status(),
        channels=len(hub.bus.channels()),
        scaling_events=events,
        scaling_desired=desired,
    )


async def stats(ctx: Ctx) -> s.StatsSummary:
    return await summary(ctx.request.app[METRICS_KEY])


STATS_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/stats", "A summary of the hub for people", stats, response=s.StatsSummary),
)
