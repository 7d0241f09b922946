"""The REST routes of channels and their messages: list, create, get, delete, history, publish,
members, join and leave."""

from __future__ import annotations

from fleetchat.models import Channel, Message
from fleetchat.server import schemas as s
from fleetchat.server.rest_route import Ctx, Param, Route

__all__ = ["CHANNEL_ROUTES"]


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


_SEQ_QUERY = (
    Param("start_seq", "integer", "first seq (inclusive)"),
    Param("end_seq", "integer", "last seq (inclusive)"),
    Param("since", "number", "earliest created_at, epoch seconds"),
    Param("until", "number", "latest created_at, epoch seconds"),
    Param("limit", "integer", "most messages returned (default and cap 1000)"),
    Param("tail", "boolean", "true for the newest limit messages that match (still oldest first)"),
)

CHANNEL_ROUTES: tuple[Route, ...] = (
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
)
