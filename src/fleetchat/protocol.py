"""Wire protocol v1: every WebSocket frame, defined once for the server and the SDK.

Frames are JSON text messages ``{"v": 1, "type": <type>, ...}``. docs/protocol.md is the
reference for people writing agents in other languages; keep the two in step.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from fleetchat.models import Message
from fleetchat.types import Priority

__all__ = [
    "CLOSE_AUTH",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_REPLACED",
    "CLOSE_SERVER_SHUTDOWN",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_MANY_ERRORS",
    "VERSION",
    "Ack",
    "ClientFrame",
    "Deliver",
    "ErrorFrame",
    "Heartbeat",
    "Hello",
    "Nack",
    "Ok",
    "Publish",
    "Published",
    "Reply",
    "ReplyFrame",
    "Request",
    "Subscribe",
    "TaskReport",
    "Unsubscribe",
    "Welcome",
    "decode_client_frame",
    "encode",
]

VERSION: Final = 1

# WebSocket close codes (4000-4999 are for applications).
CLOSE_NORMAL: Final = 1000
CLOSE_SERVER_SHUTDOWN: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_AUTH: Final = 4001
"""hello missing, token missing or unknown, or the token belongs to another agent."""
CLOSE_TOO_MANY_ERRORS: Final = 4002
"""The client sent too many bad frames in a row (see ``max_bad_frames``)."""
CLOSE_SLOW_CONSUMER: Final = 4008
"""Outgoing data for the client stayed above the server's buffer limit too long."""
CLOSE_REPLACED: Final = 4009
"""Reserved: another connection took over this agent's session."""


class _Frame(msgspec.Struct, kw_only=True, tag_field="type", omit_defaults=True):
    v: int = VERSION
    """Protocol version; clients may leave it out (1 is assumed)."""


class _ServerFrame(msgspec.Struct, kw_only=True, tag_field="type"):
    v: int = VERSION


# -- client to server ---------------------------------------------------------------------


class Hello(_Frame, tag="hello"):
    """First frame of a session. ``token`` is required when the hub has auth on."""

    agent_id: str
    token: str | None = None
    capabilities: dict[str, float] | None = None
    """When given, the agent is registered (or updated) with these capabilities."""
    capacity: int = 1
    labels: dict[str, str] = {}
    resources: dict[str, Any] = {}
    window: int | None = None
    """Most deliveries the server sends before the client acks (flow control); none: the
    server's default (256)."""
    resume: dict[str, int] = {}
    """Channel -> seq the client has processed every message up to; the hub settles those."""


class Subscribe(_Frame, tag="subscribe"):
    id: str
    channels: list[str]


class Unsubscribe(_Frame, tag="unsubscribe"):
    id: str
    channel: str


class Publish(_Frame, tag="publish"):
    """``id`` is the client's message id: retrying a publish with the same id is idempotent."""

    id: str
    channel: str
    body: Any = None
    priority: Priority = Priority.NORMAL
    kind: str = "chat"
    expires_in: float | None = None
    headers: dict[str, str] = {}


class Ack(_Frame, tag="ack"):
    """Ack deliveries by tag: ``upto`` acks every tag up to and including it (cumulative)."""

    upto: int | None = None
    tags: list[int] = []


class Nack(_Frame, tag="nack"):
    tag: int
    delay: float | None = None
    dead_letter: bool = False


class Request(_Frame, tag="request"):
    id: str
    target: str
    body: Any = None
    timeout: float | None = None
    collect: bool = False
    priority: Priority = Priority.NORMAL


class Reply(_Frame, tag="reply"):
    """Answer the request delivered with ``tag``."""

    tag: int
    body: Any = None
    headers: dict[str, str] = {}
    """The reply message's headers, for example ``traceparent`` (docs/tracing.md)."""


class TaskReport(_Frame, tag="task"):
    """An agent's report on a task it was offered or holds (answered with ``ok`` or
    ``error``): ``accept``, ``reject`` (``error`` says why), ``start``, ``progress``
    (``progress`` 0..1; also a heartbeat), ``complete`` (``result``), ``fail`` (``error``,
    ``retry``), or ``bid`` (``cost``, ``eta``) after a call for proposals."""

    id: str
    task: str
    action: Literal["accept", "reject", "start", "progress", "complete", "fail", "bid"]
    attempt: int | None = None
    result: Any = None
    error: str | None = None
    retry: bool = True
    progress: float | None = None
    cost: float | None = None
    eta: float | None = None
    traceparent: str | None = None
    """The agent's W3C trace context: a result continues this trace (docs/tracing.md)."""


class Heartbeat(_Frame, tag="heartbeat"):
    resources: dict[str, Any] | None = None


# -- server to client ---------------------------------------------------------------------


class Welcome(_ServerFrame, tag="welcome"):
    agent_id: str
    session: str
    server: str
    heartbeat_interval: float
    window: int
    max_frame_bytes: int


class Ok(_ServerFrame, tag="ok"):
    """Success of subscribe / unsubscribe, with the channels the agent is now a member of."""

    id: str
    channels: list[str] = []


class Published(_ServerFrame, tag="published"):
    id: str
    channel: str
    seq: int
    message_id: str
    duplicate: bool = False


class Deliver(_ServerFrame, tag="deliver"):
    """Deliveries with consecutive tags from ``first_tag``; ``attempts`` only when some > 1."""

    first_tag: int
    messages: list[Message]
    attempts: list[int] | None = None


class ReplyFrame(_ServerFrame, tag="reply"):
    """Answer to a client's request ``id``: one reply, or every reply when it asked to collect."""

    id: str
    replies: list[Message]


class ErrorFrame(_ServerFrame, tag="error"):
    code: str
    message: str
    id: str | None = None
    """The id of the frame that failed, when it had one."""
    details: dict[str, Any] = {}


encode = msgspec.json.Encoder().encode


ClientFrame = (
    Hello
    | Subscribe
    | Unsubscribe
    | Publish
    | Ack
    | Nack
    | Request
    | Reply
    | TaskReport
    | Heartbeat
)


_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """Parse one client frame. Raises ``msgspec.ValidationError`` / ``DecodeError``."""
    return _decoder.decode(data)
