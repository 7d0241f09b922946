"""The REST routes of agents (list, get, search), delivery metrics and dead letters (list,
replay, purge)."""

from __future__ import annotations

from fleetchat.backends.local_bus import DLQ_CHANNEL, HUB_SENDER
from fleetchat.errors import InvalidInputError
from fleetchat.hub import Hub
from fleetchat.models import AgentInfo, Message
from fleetchat.server import schemas as s
from fleetchat.server.rest_route import Ctx, Param, Route
from fleetchat.types import new_id

__all__ = ["AGENT_ROUTES"]


async def list_agents(ctx: Ctx) -> s.AgentList:
    status = ctx.request.query.get("status")
    if status not in (None, "available", "busy", "draining", "offline"):
        raise InvalidInputError(
            "status must be available, busy, draining or offline", field="status"
        )
    return s.AgentList(agents=ctx.hub.registry.list(status=status))  # type: ignore[arg-type]


async def get_agent(ctx: Ctx) -> AgentInfo:
    return ctx.hub.registry.get(ctx.path("agent_id"))


async def search_agents(ctx: Ctx) -> s.MatchList:
    b: s.Search = ctx.body
    found = ctx.hub.registry.find_best_agents(
        b.required, min_confidence=b.min_confidence, limit=b.limit
    )
    return s.MatchList(matches=[s.MatchEntry(agent=m.agent, score=m.score) for m in found])


async def metrics(ctx: Ctx) -> s.MetricsSnapshot:
    return ctx.hub.metrics.snapshot()


async def _dead_letters(hub: Hub, limit: int) -> list[s.DeadLetterEntry]:
    return [
        s.DeadLetterEntry(seq=seq, letter=letter)
        for seq, letter in await hub.dead_letter_entries(limit=limit)
    ]


async def list_dead_letters(ctx: Ctx) -> s.DeadLetterList:
    limit = ctx.query_int("limit")
    if limit is None:
        limit = 100
    if limit < 1:
        raise InvalidInputError("limit must be a positive integer", field="limit")
    return s.DeadLetterList(dead_letters=await _dead_letters(ctx.hub, min(limit, 1000)))


async def replay_dead_letters(ctx: Ctx) -> s.Count:
    """Send each chosen dead letter's message again, to the member that failed it."""
    b: s.Replay = ctx.body
    entries = await _dead_letters(ctx.hub, 1000)
    if b.seqs is not None:
        wanted = set(b.seqs)
        entries = [e for e in entries if e.seq in wanted]
    hub = ctx.hub
    copies = []
    for e in entries:
        inbox = await hub.channels.ensure_inbox(e.letter.member)
        original = e.letter.message
        copies.append(
            Message(
                id=new_id(),
                channel=inbox,
                sender=HUB_SENDER,
                kind=original.kind,
                body=original.body,
                priority=original.priority,
                created_at=hub.clock.time(),
                headers={
                    **original.headers,
                    "replay-of": original.id,
                    "replay-channel": original.channel,
                },
            )
        )
    if copies:
        await hub.bus.publish(copies, hub.settings.chat.publish_timeout)
    return s.Count(count=len(copies))


async def purge_dead_letters(ctx: Ctx) -> s.Count:
    return s.Count(count=await ctx.hub.bus.purge(DLQ_CHANNEL))


AGENT_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/agents",
        "List agents",
        list_agents,
        response=s.AgentList,
        query=(Param("status", "string", "available, busy, draining or offline"),),
    ),
    Route("GET", "/v1/agents/{agent_id}", "Get an agent", get_agent, response=AgentInfo),
    Route(
        "POST",
        "/v1/agents/search",
        "Find the best agents for required capabilities",
        search_agents,
        "read",
        s.Search,
        s.MatchList,
    ),
    Route("GET", "/v1/metrics/delivery", "Delivery metrics", metrics, response=s.MetricsSnapshot),
    Route(
        "GET",
        "/v1/dlq",
        "List dead letters",
        list_dead_letters,
        response=s.DeadLetterList,
        query=(Param("limit", "integer", "most entries, newest last (default 100, cap 1000)"),),
    ),
    Route(
        "POST",
        "/v1/dlq/replay",
        "Deliver dead letters again to their members",
        replay_dead_letters,
        "admin",
        s.Replay,
        s.Count,
    ),
    Route(
        "DELETE",
        "/v1/dlq",
        "Purge every dead letter",
        purge_dead_letters,
        "admin",
        response=s.Count,
    ),
)
