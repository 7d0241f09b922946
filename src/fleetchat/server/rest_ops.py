"""The REST routes of operations: health detail, the ops journal and alerts, live
configuration, and live changes to an agent's capabilities (docs/operations.md).

``/healthz`` and ``/readyz`` (no auth, for load balancers and orchestrators) are served by
:class:`fleetchat.server.app.HubServer`.
"""

from __future__ import annotations

import msgspec

from fleetchat.models import AgentInfo
from fleetchat.ops.health import HealthReport
from fleetchat.ops.journal import ALERTS_CHANNEL, OPS_CHANNEL
from fleetchat.ops.reload import ReloadResult
from fleetchat.server.rest_route import Ctx, Param, Route
from fleetchat.server.schemas_ops import AgentPatch, ConfigPatch, OpsRecords, SettingsTree

__all__ = ["OPS_ROUTES"]

_MAX = 1000


def _limit(ctx: Ctx) -> int:
    limit = ctx.query_int("limit") or 100
    return max(1, min(limit, _MAX))


async def health(ctx: Ctx) -> HealthReport:
    return await ctx.hub.ops.health.report()


async def ops_records(ctx: Ctx) -> OpsRecords:
    kind = ctx.request.query.get("type") or None
    return OpsRecords(
        records=await ctx.hub.ops.journal.read(OPS_CHANNEL, kind=kind, limit=_limit(ctx))
    )


async def alerts(ctx: Ctx) -> OpsRecords:
    return OpsRecords(records=await ctx.hub.ops.journal.read(ALERTS_CHANNEL, limit=_limit(ctx)))


async def get_config(ctx: Ctx) -> SettingsTree:
    return SettingsTree(settings=ctx.hub.ops.config.current())


async def reload_config(ctx: Ctx) -> ReloadResult:
    return await ctx.hub.ops.config.reload()


async def patch_config(ctx: Ctx) -> ReloadResult:
    body: ConfigPatch = ctx.body
    return await ctx.hub.ops.config.change(body.changes)


async def patch_agent(ctx: Ctx) -> AgentInfo:
    body: AgentPatch = ctx.body
    hub = ctx.hub
    agent_id = ctx.path("agent_id")
    before = hub.registry.get(agent_id)
    after = await hub.registry.update(
        agent_id,
        capabilities=body.capabilities,
        capacity=body.capacity,
        performance=body.performance,
        labels=body.labels,
    )
    changes = [
        {"path": f"agents.{agent_id}.{name}", "old": getattr(before, name), "new": new}
        for name, new in msgspec.structs.asdict(body).items()
        if new is not None and getattr(before, name) != new
    ]
    if changes:
        await hub.ops.journal.record(
            "config", {"source": "api", "applied": changes, "restart_required": []}
        )
    return after


_LIMIT = Param("limit", "integer", "Most records returned, newest kept (default 100, max 1000).")

OPS_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/health", "Every health check of this node", health, response=HealthReport),
    Route(
        "GET",
        "/v1/ops/events",
        "Failures, recoveries, scaling events, backups and configuration changes",
        ops_records,
        response=OpsRecords,
        query=(
            Param("type", "string", "Only this type: incident, scaling, backup or config."),
            _LIMIT,
        ),
    ),
    Route(
        "GET",
        "/v1/alerts",
        "Alerts (recoveries that failed, degradation)",
        alerts,
        response=OpsRecords,
        query=(_LIMIT,),
    ),
    Route("GET", "/v1/config", "The running settings", get_config, "admin", response=SettingsTree),
    Route(
        "POST",
        "/v1/config/reload",
        "Reload the settings file without a restart",
        reload_config,
        "admin",
        response=ReloadResult,
    ),
    Route(
        "PATCH",
        "/v1/config",
        "Change settings live (all or nothing)",
        patch_config,
        "admin",
        ConfigPatch,
        ReloadResult,
    ),
    Route(
        "PATCH",
        "/v1/agents/{agent_id}",
        "Change an agent's capabilities, capacity, performance or labels live",
        patch_agent,
        "admin",
        AgentPatch,
        AgentInfo,
    ),
)
