"""Channels (group chats): create, list, join, leave, history, direct inboxes."""

from __future__ import annotations

import builtins
import contextlib
from typing import TYPE_CHECKING, Literal

from fleetchat.errors import (
    ChannelExistsError,
    ChannelNotFoundError,
    ForbiddenError,
    InvalidInputError,
)
from fleetchat.models import Channel, ChannelType, Message, MessageKind
from fleetchat.types import Clock, Priority, check_agent_id, check_channel_name, new_id

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus
    from fleetchat.config import ChatSettings

__all__ = [
    "HUB_SENDER",
    "ChannelRegistry",
    "ensure_system_channel",
    "hub_message",
    "inbox_name",
]

HUB_SENDER = "$hub"


async def ensure_system_channel(bus: Bus, name: str, now: float) -> None:
    """Create the hub's own channel ``name`` (``$tasks``, ``$ops``...) unless it exists: durable,
    silent, no agent may post in it. Several nodes may try at once; one makes it."""
    if bus.channel(name) is None:
        spec = Channel(
            name=name,
            type="system",
            announce=False,
            writers=[],
            created_at=now,
            last_activity_at=now,
        )
        with contextlib.suppress(ChannelExistsError):  # another node made it first
            await bus.create_channel(spec)


def hub_message(
    channel: str,
    body: object,
    now: float,
    *,
    kind: MessageKind = "system",
    priority: Priority = Priority.NORMAL,
) -> Message:
    """A message from the hub itself: sender ``$hub``, which no agent can be (announcements,
    task notices and events, workflow events)."""
    return Message(
        id=new_id(),
        channel=channel,
        sender=HUB_SENDER,
        kind=kind,
        body=body,
        priority=priority,
        created_at=now,
    )


_TYPES = ("task", "broadcast", "direct", "system", "chat")


def inbox_name(agent_id: str) -> str:
    """The direct inbox channel of an agent: ``@<agent_id>``."""
    return f"@{agent_id}"


class ChannelRegistry:
    """Creates and inspects channels; joins and leaves members."""

    def __init__(self, bus: Bus, clock: Clock, settings: ChatSettings) -> None:
        self._bus = bus
        self._clock = clock
        self._settings = settings

    async def create(
        self,
        name: str,
        *,
        type: ChannelType = "chat",
        ephemeral: bool = False,
        retention_count: int | None = None,
        retention_age: float | None = None,
        announce: bool = True,
        writers: list[str] | None = None,
        overflow: Literal["spill", "block"] = "spill",
    ) -> Channel:
        """Create a channel.

        Raises:
            ChannelExistsError: a channel of that name exists.
            InvalidIdError: the name breaks the naming rule.
            ForbiddenError: names starting with ``$`` or ``@`` are the hub's.
        """
        check_channel_name(name)
        if name[0] in "$@":
            raise ForbiddenError(
                f"channel names starting with {name[0]!r} are reserved", channel=name
            )
        return await self._create(
            name,
            type=type,
            ephemeral=ephemeral,
            retention_count=retention_count,
            retention_age=retention_age,
            announce=announce,
            writers=writers,
            overflow=overflow,
        )

    async def _create(
        self,
        name: str,
        *,
        type: ChannelType,
        ephemeral: bool = False,
        retention_count: int | None = None,
        retention_age: float | None = None,
        announce: bool = True,
        writers: list[str] | None = None,
        overflow: Literal["spill", "block"] = "spill",
    ) -> Channel:
        if type not in _TYPES:
            raise InvalidInputError(
                f"channel type must be one of {', '.join(_TYPES)}", field="type"
            )
        if retention_count is not None and (
            not isinstance(retention_count, int) or retention_count < 1
        ):
            raise InvalidInputError(
                "retention_count must be a positive integer", field="retention_count"
            )
        if retention_age is not None and (
            not isinstance(retention_age, int | float) or retention_age <= 0
        ):
            raise InvalidInputError(
                "retention_age must be a positive number of seconds", field="retention_age"
            )
        if overflow not in ("spill", "block"):
            raise InvalidInputError("overflow must be spill or block", field="overflow")
        if writers is not None:
            writers = [check_agent_id(w, "writers") for w in writers]
        now = self._clock.time()
        channel = Channel(
            name=name,
            type=type,
            ephemeral=bool(ephemeral),
            retention_count=retention_count,
            retention_age=retention_age,
            announce=bool(announce),
            writers=writers,
            overflow=overflow,
            created_at=now,
            last_activity_at=now,
        )
        return await self._bus.create_channel(channel)

    def get(self, name: str) -> Channel:
        """The channel named ``name``.

        Raises:
            ChannelNotFoundError: there is none.
        """
        check_channel_name(name)
        channel = self._bus.channel(name)
        if channel is None:
            raise ChannelNotFoundError(f"no channel {name!r}", channel=name)
        return channel

    def list(self, *, include_system: bool = False) -> builtins.list[Channel]:
        """Every channel, sorted by name; ``$`` system channels only when asked."""
        channels = self._bus.channels()
        if not include_system:
            channels = [c for c in channels if not c.name.startswith("$")]
        return sorted(channels, key=lambda c: c.name)

    def members(self, name: str) -> builtins.list[str]:
        self.get(name)
        return sorted(self._bus.members(name))

    def memberships(self, agent_id: str) -> builtins.list[str]:
        """Channels ``agent_id`` is a member of."""
        check_agent_id(agent_id)
        return sorted(self._bus.memberships(agent_id))

    async def delete(self, name: str) -> None:
        """Delete a channel with its history and memberships."""
        self.get(name)
        if name.startswith("$"):
            raise ForbiddenError(f"{name!r} belongs to the hub", channel=name)
        await self._bus.delete_channel(name)

    async def ensure_inbox(self, agent_id: str) -> str:
        """Create ``@agent_id`` (if missing) with the agent as its only member."""
        name = inbox_name(check_agent_id(agent_id))
        if self._bus.channel(name) is None:
            with contextlib.suppress(ChannelExistsError):  # created concurrently
                await self._create(name, type="direct", announce=False)
        await self._bus.add_member(name, agent_id)
        return name

    async def join(self, name: str, agent_id: str) -> bool:
        """Make ``agent_id`` a member of ``name``, creating the channel if it is missing.

        Returns False if it was a member already. Posts "agent X joined" unless the channel's
        ``announce`` is off.
        """
        check_channel_name(name)
        check_agent_id(agent_id)
        if name.startswith("@") and name != inbox_name(agent_id):
            raise ForbiddenError("only its owner joins a direct inbox", channel=name)
        if self._bus.channel(name) is None:
            if name == inbox_name(agent_id):
                await self.ensure_inbox(agent_id)
                return True
            if name[0] in "$@":
                raise ChannelNotFoundError(f"no channel {name!r}", channel=name)
            with contextlib.suppress(ChannelExistsError):
                await self.create(name)
        if self._bus.is_member(name, agent_id):
            return False
        # Announced just before the membership starts, so the others see it and the newcomer
        # does not receive its own announcement.
        await self._announce(name, agent_id, "joined")
        return await self._bus.add_member(name, agent_id)

    async def leave(self, name: str, agent_id: str) -> bool:
        """Remove ``agent_id`` from ``name``; posts "agent X left". False if it was not a member."""
        self.get(name)
        if name.startswith("@"):
            raise ForbiddenError("an agent cannot leave its own inbox", channel=name)
        check_agent_id(agent_id)
        removed = await self._bus.remove_member(name, agent_id)
        if removed:
            await self._announce(name, agent_id, "left")
        return removed

    async def _announce(self, name: str, agent_id: str, event: str) -> None:
        channel = self._bus.channel(name)
        if channel is None or not channel.announce:
            return
        body = {"event": event, "agent": agent_id, "text": f"agent {agent_id} {event}"}
        await self._bus.publish(
            [hub_message(name, body, self._clock.time())], self._settings.publish_timeout
        )

    async def history(
        self,
        name: str,
        *,
        start_seq: int | None = None,
        end_seq: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        tail: bool = False,
    ) -> builtins.list[Message]:
        """Messages of ``name``, oldest first, by seq range and/or time range (epoch seconds).

        Ephemeral channels answer from memory; at most ``limit`` (default and cap:
        ``ChatSettings.history_limit``) messages: the oldest that match, or with ``tail=True``
        the newest that match (still oldest first), e.g. ``history(name, limit=20, tail=True)``
        for the last 20 messages.
        """
        self.get(name)
        cap = self._settings.history_limit
        if limit is None:
            limit = cap
        if not isinstance(limit, int) or limit < 1:
            raise InvalidInputError("limit must be a positive integer", field="limit")
        for field, value in (("start_seq", start_seq), ("end_seq", end_seq), ("limit", limit)):
            if value is not None and (not isinstance(value, int) or not 0 <= value < 2**63):
                raise InvalidInputError(f"{field} must be an integer in 0..2^63-1", field=field)
        if not isinstance(tail, bool):
            raise InvalidInputError("tail must be true or false", field="tail")
        return await self._bus.history(
            name,
            start_seq=start_seq,
            end_seq=end_seq,
            since=since,
            until=until,
            limit=min(limit, cap),
            tail=tail,
        )
