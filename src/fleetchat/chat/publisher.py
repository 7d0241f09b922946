"""Publishing: validation, access control, then the bus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.errors import ForbiddenError, InvalidInputError, MessageTooLargeError
from fleetchat.models import Channel, Message, MessageKind
from fleetchat.types import (
    Clock,
    Priority,
    check_agent_id,
    check_channel_name,
    new_id,
    parse_priority,
)

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus
    from fleetchat.chat.channels import ChannelRegistry
    from fleetchat.config import ChatSettings
    from fleetchat.ops.gate import AdmissionGate
    from fleetchat.ops.tracing import HubTracer

__all__ = ["Publisher", "build_message"]

_KINDS = ("chat", "task", "result", "request", "reply", "system")
_encode = msgspec.json.Encoder().encode


def build_message(
    settings: ChatSettings,
    clock: Clock,
    *,
    channel: str,
    sender: str,
    body: Any,
    kind: str = "chat",
    priority: Priority | str = Priority.NORMAL,
    expires_in: float | None = None,
    correlation_id: str | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> Message:
    """Validate everything a caller gave and build the Message (seq still 0).

    Raises:
        InvalidInputError: a field has the wrong type or value.
        MessageTooLargeError: the JSON-encoded body exceeds ``max_body_bytes``.
    """
    check_agent_id(sender, "sender")
    if kind not in _KINDS or kind == "system":
        raise InvalidInputError(f"kind must be one of {', '.join(_KINDS[:-1])}", field="kind")
    prio = parse_priority(priority)
    try:
        size = len(_encode(body))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(f"body is not JSON-encodable: {exc}", field="body") from None
    if size > settings.max_body_bytes:
        raise MessageTooLargeError(
            f"body is {size} bytes; the limit is {settings.max_body_bytes}",
            size=size,
            limit=settings.max_body_bytes,
        )
    if headers is not None and not (
        isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise InvalidInputError("headers must map strings to strings", field="headers")
    now = clock.time()
    expires_at = None
    if expires_in is not None:
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
            or expires_in <= 0
        ):
            raise InvalidInputError(
                "expires_in must be a positive number of seconds", field="expires_in"
            )
        expires_at = now + expires_in
    if message_id is not None and (
        not isinstance(message_id, str) or not 1 <= len(message_id) <= 64
    ):
        raise InvalidInputError("message id must be a string of 1-64 characters", field="id")
    kind_: MessageKind = kind  # type: ignore[assignment]
    return Message(
        id=message_id or new_id(),
        channel=channel,
        sender=sender,
        kind=kind_,
        body=body,
        priority=prio,
        created_at=now,
        expires_at=expires_at,
        correlation_id=correlation_id,
        headers=headers or {},
    )


def check_may_post(channel: Channel, sender: str) -> None:
    """Raise ForbiddenError unless ``sender`` may post in ``channel``."""
    if channel.writers is not None and sender not in channel.writers:
        raise ForbiddenError(f"{sender!r} may not post in {channel.name!r}", channel=channel.name)
    if channel.name.startswith("$"):
        raise ForbiddenError(f"{channel.name!r} belongs to the hub", channel=channel.name)


class Publisher:
    """``publish``: validate, check the channel's writers, commit, fan out."""

    def __init__(
        self,
        bus: Bus,
        channels: ChannelRegistry,
        clock: Clock,
        settings: ChatSettings,
        gate: AdmissionGate | None = None,
    ) -> None:
        self._bus = bus
        self._channels = channels
        self._clock = clock
        self._settings = settings
        self._gate = gate
        self.tracer: HubTracer | None = None
        """Set by the Hub when tracing is on: each publish is a ``publish`` span."""

    async def publish(
        self,
        channel: str,
        body: Any,
        *,
        sender: str,
        priority: Priority | str = Priority.NORMAL,
        kind: str = "chat",
        expires_in: float | None = None,
        headers: dict[str, str] | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Publish ``body`` to ``channel`` as ``sender``; returns the committed Message.

        Every member except the sender receives it. Returns once the message is committed
        (durable channels) or queued (ephemeral ones).

        Raises:
            ChannelNotFoundError, ForbiddenError, InvalidInputError, MessageTooLargeError,
            BackpressureError (nothing was written; DegradedError when the hub is degraded and
            refuses this priority), BackendError.
        """
        check_channel_name(channel)
        if kind in ("request", "reply"):
            raise InvalidInputError(
                "requests and replies are sent with request() and reply(), not published",
                field="kind",
            )
        message = build_message(
            self._settings,
            self._clock,
            channel=channel,
            sender=sender,
            body=body,
            kind=kind,
            priority=priority,
            expires_in=expires_in,
            headers=headers,
            correlation_id=correlation_id,
        )
        spec = self._channels.get(channel)
        check_may_post(spec, sender)
        if self._gate is not None:
            self._gate.check(message.priority)
        wait = self._settings.publish_timeout if timeout is None else timeout
        if self.tracer is not None:
            return await self.tracer.publish(self._bus, message, wait)
        (committed,) = await self._bus.publish([message], wait)
        return committed
