"""What a REST route is (:class:`Route`, :class:`Param`) and what its handler gets (:class:`Ctx`).

The route table itself is :data:`fleetchat.server.rest.ROUTES`, made of the channel routes
(:mod:`fleetchat.server.rest_channels`) and the agent, metrics and dead-letter routes
(:mod:`fleetchat.server.rest_agents`); the OpenAPI document is generated from it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from fleetchat.errors import ForbiddenError, InvalidInputError
from fleetchat.hub import Hub

__all__ = ["Access", "Ctx", "Handler", "Param", "Route"]

Access = Literal["read", "agent", "admin"]
Handler = Callable[["Ctx"], Awaitable[Any]]


@dataclass(frozen=True)
class Param:
    name: str
    type: Literal["string", "integer", "number", "boolean"]
    description: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    handler: Handler
    access: Access = "read"
    body: type | None = None
    response: type | None = None
    status: int = 200
    query: tuple[Param, ...] = field(default=())
    raw_body: str | None = None
    """For a route that reads its body itself (``body`` None): the name of the JSON Schema
    in the OpenAPI document's components that describes it (see ``RAW_BODIES``)."""


@dataclass
class Ctx:
    """What a handler gets: the hub, the request, the parsed body, the caller's agent id."""

    hub: Hub
    request: web.Request
    body: Any
    caller: str | None
    admin: bool

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def query_int(self, name: str) -> int | None:
        value: int | None = _number(self.request.query.get(name), name, int)
        return value

    def query_float(self, name: str) -> float | None:
        value: float | None = _number(self.request.query.get(name), name, float)
        return value

    def query_bool(self, name: str) -> bool:
        """A boolean query parameter: true/false (also 1/0, yes/no); absent or empty: false."""
        raw = self.request.query.get(name, "").lower()
        if raw in ("", "false", "0", "no"):
            return False
        if raw in ("true", "1", "yes"):
            return True
        raise InvalidInputError(f"query parameter {name} must be true or false", field=name)

    def acting_as(self, agent_id: str | None) -> str:
        """The agent a write acts as: the caller's own id when authenticated."""
        if self.caller is not None:
            if agent_id not in (None, self.caller) and not self.admin:
                raise ForbiddenError(
                    f"this token belongs to {self.caller!r}; it cannot act as {agent_id!r}"
                )
            return agent_id or self.caller
        if agent_id is None:
            raise InvalidInputError(
                "name the agent (sender / agent_id): auth is off", field="sender"
            )
        return agent_id


def _number(raw: str | None, name: str, kind: type[int] | type[float]) -> Any:
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidInputError(f"query parameter {name} must be a number", field=name) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidInputError(f"query parameter {name} must be finite", field=name)
    return value
