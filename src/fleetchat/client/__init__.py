"""The Python SDK: :class:`Agent` (WebSocket: handlers, reconnect, dedupe) and
:class:`HubClient` (REST)."""

from fleetchat.client.agent import Agent
from fleetchat.client.delivery import Nack
from fleetchat.client.dispatch import AgentStats, MessageHandler, RequestHandler
from fleetchat.client.leases import HeldLease, LeaseClient
from fleetchat.client.rest import HubClient
from fleetchat.client.stream import MessageStream
from fleetchat.client.wire import DEFAULT_HUB, HubUnavailableError
from fleetchat.protocol import Published

__all__ = [
    "DEFAULT_HUB",
    "Agent",
    "AgentStats",
    "HeldLease",
    "HubClient",
    "HubUnavailableError",
    "LeaseClient",
    "MessageHandler",
    "MessageStream",
    "Nack",
    "Published",
    "RequestHandler",
]
