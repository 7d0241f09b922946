"""The REST API under /v1: a table of routes (also the source of the OpenAPI document), and
how a request reaches its handler (auth, body decoding, errors as JSON).

The routes and their handlers are in :mod:`fleetchat.server.rest_channels` (channels and
messages) and :mod:`fleetchat.server.rest_agents` (agents, metrics, dead letters); what a route
is, in :mod:`fleetchat.server.rest_route`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from fleetchat.errors import FleetchatError, InvalidInputError, MessageTooLargeError
from fleetchat.hub import Hub
from fleetchat.server import schemas as s
from fleetchat.server.auth import Authenticator
from fleetchat.server.rest_agents import AGENT_ROUTES
from fleetchat.server.rest_backup import BACKUP_ROUTES
from fleetchat.server.rest_channels import CHANNEL_ROUTES
from fleetchat.server.rest_leases import LEASE_ROUTES
from fleetchat.server.rest_ops import OPS_ROUTES
from fleetchat.server.rest_route import Ctx as Ctx  # Ctx and Param: public here before the split
from fleetchat.server.rest_route import Param as Param
from fleetchat.server.rest_route import Route
from fleetchat.server.rest_scaling import SCALING_ROUTES
from fleetchat.server.rest_stats import STATS_ROUTES
from fleetchat.server.rest_tasks import TASK_ROUTES
from fleetchat.server.rest_workflows import WORKFLOW_ROUTES

__all__ = ["ROUTES", "STATUS_BY_CODE", "Route", "error_response", "install_routes"]

STATUS_BY_CODE = {
    "invalid_input": 400,
    "invalid_id": 400,
    "invalid_definition": 400,
    "message_too_large": 413,
    "invalid_config": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "channel_not_found": 404,
    "agent_not_found": 404,
    "task_not_found": 404,
    "unsatisfiable": 422,
    "conflict": 409,
    "channel_exists": 409,
    "fenced": 409,
    "deadlock": 409,
    "lease_timeout": 409,
    "task_not_held": 409,
    "rate_limited": 429,
    "backpressure": 503,
    "degraded": 503,
    "closed": 503,
    "backend_error": 503,
    "request_timeout": 504,
}

_json = msgspec.json.Encoder()

ROUTES: tuple[Route, ...] = (
    *CHANNEL_ROUTES,
    *AGENT_ROUTES,
    *LEASE_ROUTES,
    *TASK_ROUTES,
    *WORKFLOW_ROUTES,
    *OPS_ROUTES,
    *BACKUP_ROUTES,
    *SCALING_ROUTES,
    *STATS_ROUTES,
)
"""Every route, in the order of the OpenAPI document: channels and messages, then agents,
metrics and dead letters, leases, tasks, workflows, then operations (health, backups,
scaling)."""


def error_response(exc: FleetchatError) -> web.Response:
    body = s.ErrorBody(
        error=s.ErrorInfo(code=exc.code, message=exc.message, details=exc.wire_details())
    )
    return web.Response(
        body=_json.encode(body),
        status=STATUS_BY_CODE.get(exc.code, 500),
        content_type="application/json",
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _make_handler(
    route: Route, hub: Hub, auth: Authenticator
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    max_bytes = hub.settings.server.max_frame_bytes
    decoder: msgspec.json.Decoder[Any] | None = (
        msgspec.json.Decoder(route.body) if route.body is not None else None
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            token = _bearer(request)
            record = auth.check_admin(token) if route.access == "admin" else auth.identify(token)
            body = None
            if decoder is not None:
                try:
                    raw = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raw = None
                if raw is None or len(raw) > max_bytes:
                    raise MessageTooLargeError(
                        f"request body over {max_bytes} bytes", limit=max_bytes
                    )
                try:
                    body = decoder.decode(raw or b"{}")
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise InvalidInputError(f"bad request body: {exc}") from None
                except RecursionError:
                    raise InvalidInputError("bad request body: nested too deeply") from None
            ctx = Ctx(
                hub,
                request,
                body,
                record.agent_id if record else None,
                bool(record and record.admin),
            )
            result = await route.handler(ctx)
        except FleetchatError as exc:
            return error_response(exc)
        if result is None:
            return web.Response(status=route.status)
        return web.Response(
            body=_json.encode(result), status=route.status, content_type="application/json"
        )

    return handle


def install_routes(app: web.Application, hub: Hub, auth: Authenticator) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _make_handler(route, hub, auth))
