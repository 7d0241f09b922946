"""Request/reply: transient messages matched by correlation id, with a timeout."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, overload

from fleetchat.chat.publisher import build_message
from fleetchat.errors import (
    AgentNotFoundError,
    ChannelNotFoundError,
    InvalidInputError,
    RequestTimeoutError,
)
from fleetchat.models import Message
from fleetchat.types import Clock, Priority, check_channel_name

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus
    from fleetchat.chat.channels import ChannelRegistry
    from fleetchat.chat.metrics import DeliveryMetrics
    from fleetchat.config import ChatSettings

__all__ = ["RequestRouter"]


class _Pending:
    __slots__ = ("collect", "future", "replies")

    def __init__(self, future: asyncio.Future[None], collect: bool) -> None:
        self.future = future
        self.collect = collect
        self.replies: list[Message] = []


class RequestRouter:
    """Sends requests to members' queues and matches replies to the waiting requester."""

    def __init__(
        self,
        bus: Bus,
        channels: ChannelRegistry,
        clock: Clock,
        settings: ChatSettings,
        metrics: DeliveryMetrics,
    ) -> None:
        self._bus = bus
        self._channels = channels
        self._clock = clock
        self._settings = settings
        self._metrics = metrics
        self._pending: dict[str, _Pending] = {}
        # Replies to requests made here that are answered on another hub node come back here.
        bus.on_reply = self.deliver_reply

    def _resolve_target(self, target: str) -> str:
        check_channel_name(target, "target")
        if self._bus.channel(target) is not None:
            return target
        inbox = f"@{target}"
        if self._bus.channel(inbox) is not None:
            return inbox
        if target.startswith("@"):
            raise AgentNotFoundError(f"no agent inbox {target!r}", agent_id=target[1:])
        raise ChannelNotFoundError(f"no channel or agent {target!r}", channel=target)

    @overload
    async def request(
        self,
        target: str,
        body: Any,
        *,
        sender: str,
        timeout: float | None = ...,
        collect: Literal[False] = ...,
        priority: Priority | str = ...,
        headers: dict[str, str] | None = ...,
    ) -> Message: ...

    @overload
    async def request(
        self,
        target: str,
        body: Any,
        *,
        sender: str,
        timeout: float | None = ...,
        collect: Literal[True],
        priority: Priority | str = ...,
        headers: dict[str, str] | None = ...,
    ) -> list[Message]: ...

    async def request(
        self,
        target: str,
        body: Any,
        *,
        sender: str,
        timeout: float | None = None,
        collect: bool = False,
        priority: Priority | str = Priority.NORMAL,
        headers: dict[str, str] | None = None,
    ) -> Message | list[Message]:
        """Send a request to an agent (its id or ``@id``) or to every member of a channel.

        Returns the first reply, or with ``collect=True`` every reply that arrived before the
        timeout (possibly none). Requests are never stored.

        Raises:
            RequestTimeoutError: no reply within ``timeout`` (default 5 s); names the request id.
            ChannelNotFoundError / AgentNotFoundError: no such target.
        """
        timeout = self._settings.request_timeout if timeout is None else timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidInputError("timeout must be a positive number of seconds", field="timeout")
        channel = self._resolve_target(target)
        message = build_message(
            self._settings,
            self._clock,
            channel=channel,
            sender=sender,
            body=body,
            kind="request",
            priority=priority,
            expires_in=timeout,
            headers=headers,
        )
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), collect)
        self._pending[message.id] = pending
        self._metrics.requests += 1
        timer = self._clock.call_later(timeout, partial(_finish, pending.future))
        try:
            self._bus.send_transient(message, self._bus.members(channel))
            await pending.future
        finally:
            timer.cancel()
            self._pending.pop(message.id, None)
        if collect:
            return pending.replies
        if not pending.replies:
            self._metrics.request_timeouts += 1
            raise RequestTimeoutError(
                f"no reply to request {message.id} on {channel!r} within {timeout} s",
                request_id=message.id,
                target=target,
                timeout=timeout,
            )
        return pending.replies[0]

    async def reply(
        self,
        request: Message,
        body: Any,
        *,
        sender: str,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Answer ``request``. Returns False when nobody waits any more (a late reply: dropped
        and counted)."""
        if request.kind != "request":
            raise InvalidInputError("only requests can be replied to", field="kind")
        message = build_message(
            self._settings,
            self._clock,
            channel=request.channel,
            sender=sender,
            body=body,
            kind="reply",
            priority=request.priority,
            correlation_id=request.id,
            headers=headers,
        )
        if request.id not in self._pending and self._bus.route_reply(request, message):
            return True  # the request was made on another hub node: it answers there
        return self.deliver_reply(message)

    def deliver_reply(self, message: Message) -> bool:
        """Hand a reply to its waiting requester, matched by ``correlation_id``."""
        pending = self._pending.get(message.correlation_id or "")
        if pending is None or pending.future.done():
            self._metrics.late_replies += 1
            return False
        pending.replies.append(message)
        if not pending.collect:
            pending.future.set_result(None)
        return True

    def close(self) -> None:
        for pending in self._pending.values():
            _finish(pending.future)


def _finish(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
