"""The REST routes of leases: list, get, acquire (waiting), renew, release.

An acquire that has to wait holds its HTTP request open until granted or until its
``timeout``; a client that gives up earlier leaves its wait queued until that timeout (and a
lease granted to it then expires at its TTL), so clients should use timeouts they will wait.
"""

from __future__ import annotations

from fleetchat.server import schemas_leases as s
from fleetchat.server.rest_route import Ctx, Route

__all__ = ["LEASE_ROUTES"]


async def list_leases(ctx: Ctx) -> s.LeaseList:
    return s.LeaseList(leases=await ctx.hub.leases.list())


async def get_lease(ctx: Ctx) -> s.LeaseState:
    return await ctx.hub.leases.get(ctx.path("resource"))


async def acquire_lease(ctx: Ctx) -> s.Lease:
    b: s.AcquireBody = ctx.body
    return await ctx.hub.leases.acquire(
        ctx.path("resource"),
        ctx.acting_as(b.holder),
        ttl=b.ttl,
        timeout=b.timeout,
        priority=b.priority,
    )


async def renew_lease(ctx: Ctx) -> s.Lease:
    b: s.RenewBody = ctx.body
    return await ctx.hub.leases.renew(
        ctx.path("resource"), ctx.acting_as(b.holder), b.token, ttl=b.ttl
    )


async def release_lease(ctx: Ctx) -> None:
    b: s.ReleaseBody = ctx.body
    await ctx.hub.leases.release(ctx.path("resource"), ctx.acting_as(b.holder), b.token)


LEASE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/leases", "List leased resources", list_leases, response=s.LeaseList),
    Route(
        "GET", "/v1/leases/{resource}", "Get a resource's lease", get_lease, response=s.LeaseState
    ),
    Route(
        "POST",
        "/v1/leases/{resource}/acquire",
        "Acquire a lease (waits up to the timeout)",
        acquire_lease,
        "agent",
        s.AcquireBody,
        s.Lease,
    ),
    Route(
        "POST",
        "/v1/leases/{resource}/renew",
        "Renew a held lease",
        renew_lease,
        "agent",
        s.RenewBody,
        s.Lease,
    ),
    Route(
        "POST",
        "/v1/leases/{resource}/release",
        "Release a held lease",
        release_lease,
        "agent",
        s.ReleaseBody,
        status=204,
    ),
)
