"""One error tree. Every error carries a stable ``code`` used on the wire.

Clients map a code back to the same class with :func:`error_from_code`, so
``except ChannelNotFoundError`` works the same in-process and over the network.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AgentNotFoundError",
    "BackendError",
    "BackendUnavailableError",
    "BackpressureError",
    "ChannelExistsError",
    "ChannelNotFoundError",
    "ClosedError",
    "ConfigError",
    "ConflictError",
    "DeadlockError",
    "DegradedError",
    "FencedError",
    "FleetchatError",
    "ForbiddenError",
    "HubUnavailableError",
    "InvalidDefinitionError",
    "InvalidIdError",
    "InvalidInputError",
    "LeaseTimeoutError",
    "MessageTooLargeError",
    "NotFoundError",
    "RateLimitedError",
    "RequestTimeoutError",
    "TaskNotFoundError",
    "TaskNotHeldError",
    "UnauthenticatedError",
    "UnsatisfiableError",
    "error_from_code",
]


class FleetchatError(Exception):
    """Base of every error fleetchat raises on purpose."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def wire_details(self) -> dict[str, Any]:
        """``details`` with every value JSON-safe (anything else as its ``str``)."""
        return {
            k: v if isinstance(v, str | int | float | bool | None) else str(v)
            for k, v in self.details.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """The error as a wire payload: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": self.wire_details()}


class InvalidInputError(FleetchatError, ValueError):
    """The request is malformed: wrong type, missing field, value out of range."""

    code = "invalid_input"

    def wire_details(self) -> dict[str, Any]:
        """``details``, keeping ``problems`` (a workflow definition's or an input's) as the
        list of ``{"path", "message", ...}`` dicts it is."""
        details = super().wire_details()
        problems = self.details.get("problems")
        if isinstance(problems, list):
            details["problems"] = problems
        return details


class InvalidIdError(InvalidInputError):
    """An agent id or channel name does not follow the naming rule."""

    code = "invalid_id"


class MessageTooLargeError(InvalidInputError):
    """A message body is larger than ``ChatSettings.max_body_bytes``."""

    code = "message_too_large"


class ConfigError(InvalidInputError):
    """A setting, URL or configuration file is invalid."""

    code = "invalid_config"


class InvalidDefinitionError(InvalidInputError):
    """A workflow definition is invalid; nothing was registered. ``details["problems"]`` lists
    every problem found, each ``{"path": JSON Pointer, "step": step id or None, "message"}``."""

    code = "invalid_definition"


class NotFoundError(FleetchatError, LookupError):
    """The named thing does not exist."""

    code = "not_found"


class ChannelNotFoundError(NotFoundError):
    code = "channel_not_found"


class AgentNotFoundError(NotFoundError):
    code = "agent_not_found"


class ConflictError(FleetchatError):
    """The request conflicts with the current state."""

    code = "conflict"


class ChannelExistsError(ConflictError):
    code = "channel_exists"


class UnauthenticatedError(FleetchatError):
    """No token, or a token the hub does not know."""

    code = "unauthenticated"


class HubUnavailableError(FleetchatError, ConnectionError):
    """The hub cannot be reached: connection refused, reset or timed out (client side)."""

    code = "hub_unavailable"


class RateLimitedError(FleetchatError):
    """Too many frames or requests in a short time; slow down."""

    code = "rate_limited"


class ForbiddenError(FleetchatError, PermissionError):
    """The caller may not do this (for example post in a read-only channel)."""

    code = "forbidden"


class BackpressureError(FleetchatError):
    """The hub cannot take more work right now; retry later. Nothing was written."""

    code = "backpressure"


class DegradedError(BackpressureError):
    """The hub is degraded (its database is slow or its disk nearly full) and refuses new work
    of this priority for now; higher priorities are still taken. Nothing was written.
    ``details["reason"]`` says why (docs/operations.md#degraded-mode)."""

    code = "degraded"


class RequestTimeoutError(FleetchatError, TimeoutError):
    """No reply arrived before the request's timeout."""

    code = "request_timeout"


class ClosedError(FleetchatError):
    """The hub or subscription is closed."""

    code = "closed"


class BackendError(FleetchatError):
    """A storage or messaging backend failed; the driver's error is the ``__cause__``."""

    code = "backend_error"


class BackendUnavailableError(BackendError, ConnectionError):
    """A backend server (NATS, PostgreSQL) cannot be reached; ``details`` name which and where.
    Nothing was written; the hub reconnects by itself, so a retry later may succeed."""

    code = "backend_unavailable"


class FencedError(ConflictError):
    """A write made under a leadership or lease that has since passed to someone else (its
    fencing epoch or token is stale); refused, nothing written."""

    code = "fenced"


class DeadlockError(ConflictError):
    """A lease wait closed a cycle of agents waiting on each other's resources; the wait of
    lowest priority in the cycle fails with this, so the others can go on. ``details`` name
    the resource and the cycle. The agent should release what it holds and try again."""

    code = "deadlock"


class LeaseTimeoutError(FleetchatError, TimeoutError):
    """A lease was not granted within the acquire's timeout (someone else held it, or others
    were ahead in the queue); the wait was withdrawn, nothing is held."""

    code = "lease_timeout"


class TaskNotFoundError(NotFoundError):
    """No task with that id."""

    code = "task_not_found"


class TaskNotHeldError(ConflictError):
    """A task action (accept, progress, result) from an agent that does not hold the task, or
    for an attempt that is over; nothing changed."""

    code = "task_not_held"


class UnsatisfiableError(InvalidInputError):
    """No registered agent could ever take the task: its capabilities are unknown, or nobody
    has them strongly enough (``details``: ``unknown``, the capabilities nobody has)."""

    code = "unsatisfiable"


def _all_subclasses(cls: type[FleetchatError]) -> list[type[FleetchatError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_from_code(
    code: str, message: str, details: dict[str, Any] | None = None
) -> FleetchatError:
    """Rebuild the error class that owns ``code`` (FleetchatError for unknown codes)."""
    by_code = {c.code: c for c in _all_subclasses(FleetchatError)}
    cls = by_code.get(code, FleetchatError)
    return cls(message, **(details or {}))
