"""fleetchat: a coordination hub for fleets of robots and AI agents.

Agents join channels (group chats) and coordinate there with prioritised, acknowledged
delivery, request/reply and a capability registry. Start with :class:`Hub`.
"""

from fleetchat.chat.metrics import MetricsSnapshot
from fleetchat.chat.receipts import ReceiptStream
from fleetchat.chat.subscription import Delivery, DeliveryBatch, Subscription
from fleetchat.config import (
    ChatSettings,
    HubSettings,
    QosSettings,
    RegistrySettings,
    ServerSettings,
    StorageSettings,
    load_settings,
)
from fleetchat.errors import (
    AgentNotFoundError,
    BackendError,
    BackpressureError,
    ChannelExistsError,
    ChannelNotFoundError,
    ClosedError,
    ConfigError,
    ConflictError,
    DeadlockError,
    FencedError,
    FleetchatError,
    ForbiddenError,
    InvalidIdError,
    InvalidInputError,
    LeaseTimeoutError,
    MessageTooLargeError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    UnauthenticatedError,
    error_from_code,
)
from fleetchat.hub import Hub
from fleetchat.models import AgentEvent, AgentInfo, Channel, DeadLetter, Message, Receipt
from fleetchat.registry.agents import AgentMatch
from fleetchat.types import Priority

__version__ = "0.1.0"

__all__ = [
    "AgentEvent",
    "AgentInfo",
    "AgentMatch",
    "AgentNotFoundError",
    "BackendError",
    "BackpressureError",
    "Channel",
    "ChannelExistsError",
    "ChannelNotFoundError",
    "ChatSettings",
    "ClosedError",
    "ConfigError",
    "ConflictError",
    "DeadLetter",
    "DeadlockError",
    "Delivery",
    "DeliveryBatch",
    "FencedError",
    "FleetchatError",
    "ForbiddenError",
    "Hub",
    "HubSettings",
    "InvalidIdError",
    "InvalidInputError",
    "LeaseTimeoutError",
    "Message",
    "MessageTooLargeError",
    "MetricsSnapshot",
    "NotFoundError",
    "Priority",
    "QosSettings",
    "RateLimitedError",
    "Receipt",
    "ReceiptStream",
    "RegistrySettings",
    "RequestTimeoutError",
    "ServerSettings",
    "StorageSettings",
    "Subscription",
    "UnauthenticatedError",
    "__version__",
    "error_from_code",
    "load_settings",
]
