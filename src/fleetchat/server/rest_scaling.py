"""The REST routes of the autoscaler (docs/autoscaling.md): the pools' state, the scaling
events, and an operator's resize."""

from __future__ import annotations

import msgspec

from fleetchat.server import schemas_scaling as s
from fleetchat.server.rest_route import Ctx, Param, Route

__all__ = ["SCALING_ROUTES"]


async def scaling_status(ctx: Ctx) -> s.ScalingStatus:
    scaling = ctx.hub.ops.scaling
    return s.ScalingStatus(
        leader=ctx.hub.coordinator.is_leader,
        interval=scaling.settings.interval,
        rounds=scaling.rounds,
        counts=dict(scaling.counts),
        pools=scaling.status(),
    )


async def scaling_events(ctx: Ctx) -> s.ScalingEvents:
    limit = ctx.query_int("limit")
    records = await ctx.hub.ops.scaling.events(100 if limit is None else limit)
    return s.ScalingEvents(events=[msgspec.convert(r, s.ScalingEvent) for r in records])


async def scale_pool(ctx: Ctx) -> s.ScalingEvent:
    b: s.ScaleBody = ctx.body
    event = await ctx.hub.ops.scaling.scale(ctx.path("pool"), b.count)
    return msgspec.convert(event, s.ScalingEvent)


SCALING_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/scaling",
        "The autoscaler's pools: sizes, measures, last decision",
        scaling_status,
        response=s.ScalingStatus,
    ),
    Route(
        "GET",
        "/v1/scaling/events",
        "The newest scaling events, oldest first",
        scaling_events,
        response=s.ScalingEvents,
        query=(Param("limit", "integer", "How many (1..10000, default 100)."),),
    ),
    Route(
        "POST",
        "/v1/scaling/{pool}",
        "Resize a pool now (the cooldowns start over); on the leading node",
        scale_pool,
        "admin",
        s.ScaleBody,
        s.ScalingEvent,
    ),
)
