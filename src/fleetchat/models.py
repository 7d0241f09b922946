"""Records that cross module, storage and wire boundaries, as msgspec Structs."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from fleetchat.types import Priority

__all__ = [
    "AgentEvent",
    "AgentInfo",
    "AgentStatus",
    "Channel",
    "ChannelType",
    "DeadLetter",
    "Message",
    "MessageKind",
    "Receipt",
    "TokenRecord",
]

MessageKind = Literal["chat", "task", "result", "request", "reply", "system"]
ChannelType = Literal["task", "broadcast", "direct", "system", "chat"]
AgentStatus = Literal["available", "busy", "draining", "offline"]
ReceiptStatus = Literal["delivered", "dead_lettered", "expired"]
FailReason = Literal["ack_timeout", "nacked", "rejected", "stalled"]


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One message in a channel (or a transient request/reply, which has ``seq == 0``)."""

    id: str
    """Unique id; redeliveries keep it, so receivers dedupe by it."""
    channel: str
    seq: int = 0
    """Position in the channel's log, from 1; 0 for transient messages (requests, replies)."""
    sender: str
    kind: MessageKind = "chat"
    body: Any = None
    priority: Priority = Priority.NORMAL
    created_at: float = 0.0
    """Epoch seconds when the hub accepted it."""
    expires_at: float | None = None
    """Epoch seconds after which it is dropped instead of delivered; None never expires."""
    correlation_id: str | None = None
    """On a reply: the id of the request it answers."""
    headers: dict[str, str] = {}
    """Free-form metadata, for example W3C trace context (``traceparent``)."""


class Channel(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A group chat: its settings and counters. Members are listed separately."""

    name: str
    type: ChannelType = "chat"
    ephemeral: bool = False
    """Kept in memory only: fastest, lost with the process. For high-rate telemetry."""
    retention_count: int | None = None
    """Messages kept in history (None: the hub's default)."""
    retention_age: float | None = None
    """Seconds messages are kept in history (None: the hub's default, which is forever)."""
    announce: bool = True
    """Post "agent X joined/left" system messages. Switch off for large broadcast channels."""
    writers: list[str] | None = None
    """Agents allowed to post; None lets anyone post. The hub itself may always post."""
    overflow: Literal["spill", "block"] = "spill"
    """When a member's in-memory queue is full: ``spill`` keeps the backlog in the log and pages
    it in as the member catches up (nobody waits); ``block`` makes publishers wait for room, up
    to their timeout, then raises BackpressureError."""
    created_at: float = 0.0
    last_activity_at: float = 0.0
    last_seq: int = 0
    """Sequence number of the newest message."""


class DeadLetter(msgspec.Struct, kw_only=True):
    """Body of a message on the ``$dlq`` channel."""

    member: str
    message: Message
    reason: FailReason
    attempts: int
    dead_at: float


class Receipt(msgspec.Struct, kw_only=True):
    """What a sender learns about one delivery of its message to one member."""

    message_id: str
    channel: str
    seq: int
    member: str
    status: ReceiptStatus
    attempts: int
    at: float


class AgentInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A registered agent."""

    id: str
    capabilities: dict[str, float] = {}
    """Capability name -> proficiency in 0..1."""
    capacity: int = 1
    """Most tasks it runs at once."""
    performance: float = 1.0
    """Performance score in 0..1, used to break ties between equally capable agents."""
    labels: dict[str, str] = {}
    resources: dict[str, Any] = {}
    """Live state that heartbeats update, e.g. battery or position."""
    active_tasks: int = 0
    draining: bool = False
    online: bool = True
    registered_at: float = 0.0
    last_heartbeat: float = 0.0

    def load(self) -> float:
        """Active tasks over capacity."""
        return self.active_tasks / self.capacity if self.capacity > 0 else 1.0


class TokenRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An access token, stored as its SHA-256 hash only."""

    agent_id: str
    """The agent the token authenticates; it may act only as this agent."""
    sha256: str
    admin: bool = False
    """Admin tokens may also manage channels, dead letters and tokens over REST."""
    created_at: float = 0.0


class AgentEvent(msgspec.Struct, kw_only=True):
    """A change in the registry: registered, updated, online, offline, deregistered."""

    kind: Literal["registered", "updated", "online", "offline", "deregistered"]
    agent_id: str
    at: float
    agent: AgentInfo | None = None
