"""Bodies of the REST API, as msgspec Structs (the OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from fleetchat.chat.metrics import MetricsSnapshot
from fleetchat.models import AgentInfo, Channel, ChannelType, DeadLetter, Message
from fleetchat.types import Priority

__all__ = [
    "AgentList",
    "ChannelList",
    "Count",
    "CreateChannel",
    "DeadLetterEntry",
    "DeadLetterList",
    "ErrorBody",
    "ErrorInfo",
    "Join",
    "MatchEntry",
    "MatchList",
    "MemberList",
    "MessageList",
    "MetricsSnapshot",
    "PublishBody",
    "Replay",
    "Search",
]


class CreateChannel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    type: ChannelType = "chat"
    ephemeral: bool = False
    retention_count: int | None = None
    retention_age: float | None = None
    announce: bool = True
    writers: list[str] | None = None
    overflow: Literal["spill", "block"] = "spill"


class PublishBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    body: Any = None
    sender: str | None = None
    """The posting agent. With auth on it is the token's agent (and may be left out)."""
    priority: Priority = Priority.NORMAL
    kind: Literal["chat", "task", "result", "request", "reply"] = "chat"
    expires_in: float | None = None
    headers: dict[str, str] = {}


class Join(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    agent_id: str


class Search(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    required: dict[str, float]
    """Capability -> weight."""
    min_confidence: float | None = None
    limit: int | None = None


class Replay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seqs: list[int] | None = None
    """Seqs in ``$dlq`` to replay; none means every dead letter kept."""


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorInfo


class ChannelList(msgspec.Struct, kw_only=True):
    channels: list[Channel]


class MessageList(msgspec.Struct, kw_only=True):
    messages: list[Message]


class MemberList(msgspec.Struct, kw_only=True):
    members: list[str]


class AgentList(msgspec.Struct, kw_only=True):
    agents: list[AgentInfo]


class MatchEntry(msgspec.Struct, kw_only=True):
    agent: AgentInfo
    score: float


class MatchList(msgspec.Struct, kw_only=True):
    matches: list[MatchEntry]


class DeadLetterEntry(msgspec.Struct, kw_only=True):
    seq: int
    """Its seq in the ``$dlq`` channel (what replay takes)."""
    letter: DeadLetter


class DeadLetterList(msgspec.Struct, kw_only=True):
    dead_letters: list[DeadLetterEntry]


class Count(msgspec.Struct, kw_only=True):
    count: int
