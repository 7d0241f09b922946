"""The REST API under /v1: a table of routes (also the source of the OpenAPI document)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from aiohttp import web

from fleetchat.backends.local_bus import DLQ_CHANNEL, HUB_SENDER
from fleetchat.errors import (
    FleetchatError,
    ForbiddenError,
    InvalidInputError,
    MessageTooLargeError,
)
from fleetchat.hub import Hub
from fleetchat.models import AgentInfo, Channel, Message
from fleetchat.server import schemas as s
from fleetchat.server.auth import Authenticator
from fleetchat.types import new_id

__all__ = ["ROUTES", "STATUS_BY_CODE", "Route", "error_response", "install_routes"]

Access = Literal["read", "agent", "admin"]
Handler = Callable[["Ctx"], Awaitable[Any]]

STATUS_BY_CODE = {
    "invalid_input": 400,
    "invalid_id": 400,
    "message_too_large": 413,
    "invalid_config": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "channel_not_found": 404,
    "agent_not_found": 404,
    "conflict": 409,
    "channel_exists": 409,
    "rate_limited": 429,
    "backpressure": 503,
    "closed": 503,
    "backend_error": 503,
    "request_timeout": 504,
}

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Param:
    name: str
    type: Literal["string", "integer", "number", "boolean"]
    description: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    handler: Handler
    access: Access = "read"
    body: type | None = None
    response: type | None = None
    status: int = 200
    query: tuple[Param, ...] = field(default=())


@dataclass
class Ctx:
    """What a handler gets: the hub, the request, the parsed body, the caller's agent id."""

    hub: Hub
    request: web.Request
    body: Any
    caller: str | None
    admin: bool

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def query_int(self, name: str) -> int | None:
        value: int | None = _number(self.request.query.get(name), name, int)
        return value

    def query_float(self, name: str) -> float | None:
        value: float | None = _number(self.request.query.get(name), name, float)
        return value

    def query_bool(self, name: str) -> bool:
        """A boolean query parameter: true/false (also 1/0, yes/no); absent or empty: false."""
        raw = self.request.query.get(name, "").lower()
        if raw in ("", "false", "0", "no"):
            return False
        if raw in ("true", "1", "yes"):
            return True
        raise InvalidInputError(f"query parameter {name} must be true or false", field=name)

    def acting_as(self, agent_id: str | None) -> str:
        """The agent a write acts as: the caller's own id when authenticated."""
        if self.caller is not None:
            if agent_id not in (None, self.caller) and not self.admin:
                raise ForbiddenError(
                    f"this token belongs to {self.caller!r}; it cannot act as {agent_id!r}"
                )
            return agent_id or self.caller
        if agent_id is None:
            raise InvalidInputError(
                "name the agent (sender / agent_id): auth is off", field="sender"
            )
        return agent_id


def _number(raw: str | None, name: str, kind: type[int] | type[float]) -> Any:
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidInputError(f"query parameter {name} must be a number", field=name) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidInputError(f"query parameter {name} must be finite", field=name)
    return value


# -- handlers -----------------------------------------------------------------------------


async def list_channels(ctx: Ctx) -> s.ChannelList:
    system = ctx.request.query.get("include_system", "false").lower() in ("1", "true", "yes")
    return s.ChannelList(channels=ctx.hub.channels.list(include_system=system))


async def create_channel(ctx: Ctx) -> Channel:
    b: s.CreateChannel = ctx.body
    return await ctx.hub.channels.create(
        b.name,
        type=b.type,
        ephemeral=b.ephemeral,
        retention_count=b.retention_count,
        retention_age=b.retention_age,
        announce=b.announce,
        writers=b.writers,
        overflow=b.overflow,
    )


async def get_channel(ctx: Ctx) -> Channel:
    return ctx.hub.channels.get(ctx.path("name"))


async def delete_channel(ctx: Ctx) -> None:
    await ctx.hub.channels.delete(ctx.path("name"))


async def history(ctx: Ctx) -> s.MessageList:
    return s.MessageList(
        messages=await ctx.hub.channels.history(
            ctx.path("name"),
            start_seq=ctx.query_int("start_seq"),
            end_seq=ctx.query_int("end_seq"),
            since=ctx.query_float("since"),
            until=ctx.query_float("until"),
            limit=ctx.query_int("limit"),
            tail=ctx.query_bool("tail"),
        )
    )


async def publish(ctx: Ctx) -> Message:
    b: s.PublishBody = ctx.body
    return await ctx.hub.publish(
        ctx.path("name"),
        b.body,
        sender=ctx.acting_as(b.sender),
        priority=b.priority,
        kind=b.kind,
        expires_in=b.expires_in,
        headers=b.headers or None,
    )


async def members(ctx: Ctx) -> s.MemberList:
    return s.MemberList(members=ctx.hub.channels.members(ctx.path("name")))


async def join(ctx: Ctx) -> s.MemberList:
    b: s.Join = ctx.body
    name = ctx.path("name")
    await ctx.hub.channels.join(name, ctx.acting_as(b.agent_id))
    return s.MemberList(members=ctx.hub.channels.members(name))


async def leave(ctx: Ctx) -> s.MemberList:
    name = ctx.path("name")
    await ctx.hub.channels.leave(name, ctx.acting_as(ctx.path("agent_id")))
    return s.MemberList(members=ctx.hub.channels.members(name))


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


_SEQ_QUERY = (
    Param("start_seq", "integer", "first seq (inclusive)"),
    Param("end_seq", "integer", "last seq (inclusive)"),
    Param("since", "number", "earliest created_at, epoch seconds"),
    Param("until", "number", "latest created_at, epoch seconds"),
    Param("limit", "integer", "most messages returned (default and cap 1000)"),
    Param("tail", "boolean", "true for the newest limit messages that match (still oldest first)"),
)

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/channels",
        "List channels",
        list_channels,
        response=s.ChannelList,
        query=(Param("include_system", "string", "true to include $ system channels"),),
    ),
    Route(
        "POST",
        "/v1/channels",
        "Create a channel",
        create_channel,
        "agent",
        s.CreateChannel,
        Channel,
        201,
    ),
    Route("GET", "/v1/channels/{name}", "Get a channel", get_channel, response=Channel),
    Route(
        "DELETE",
        "/v1/channels/{name}",
        "Delete a channel and its history",
        delete_channel,
        "admin",
        status=204,
    ),
    Route(
        "GET",
        "/v1/channels/{name}/history",
        "Channel history by seq or time",
        history,
        response=s.MessageList,
        query=_SEQ_QUERY,
    ),
    Route(
        "POST",
        "/v1/channels/{name}/messages",
        "Publish a message",
        publish,
        "agent",
        s.PublishBody,
        Message,
        201,
    ),
    Route("GET", "/v1/channels/{name}/members", "List members", members, response=s.MemberList),
    Route(
        "POST", "/v1/channels/{name}/members", "Join a channel", join, "agent", s.Join, s.MemberList
    ),
    Route(
        "DELETE",
        "/v1/channels/{name}/members/{agent_id}",
        "Leave a channel",
        leave,
        "agent",
        response=s.MemberList,
    ),
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


def error_response(exc: FleetchatError) -> web.Response:
    body = s.ErrorBody(
        error=s.ErrorInfo(code=exc.code, message=exc.message, details=exc.wire_details())
    )
    return web.Response(
        body=_json.encode(body),
        status=STATUS_BY_CODE.get(exc.code, 500),
        content_type="application/json",
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _make_handler(
    route: Route, hub: Hub, auth: Authenticator
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    max_bytes = hub.settings.server.max_frame_bytes
    decoder: msgspec.json.Decoder[Any] | None = (
        msgspec.json.Decoder(route.body) if route.body is not None else None
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            token = _bearer(request)
            record = auth.check_admin(token) if route.access == "admin" else auth.identify(token)
            body = None
            if decoder is not None:
                try:
                    raw = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raw = None
                if raw is None or len(raw) > max_bytes:
                    raise MessageTooLargeError(
                        f"request body over {max_bytes} bytes", limit=max_bytes
                    )
                try:
                    body = decoder.decode(raw or b"{}")
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise InvalidInputError(f"bad request body: {exc}") from None
                except RecursionError:
                    raise InvalidInputError("bad request body: nested too deeply") from None
            ctx = Ctx(
                hub,
                request,
                body,
                record.agent_id if record else None,
                bool(record and record.admin),
            )
            result = await route.handler(ctx)
        except FleetchatError as exc:
            return error_response(exc)
        if result is None:
            return web.Response(status=route.status)
        return web.Response(
            body=_json.encode(result), status=route.status, content_type="application/json"
        )

    return handle


def install_routes(app: web.Application, hub: Hub, auth: Authenticator) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _make_handler(route, hub, auth))
