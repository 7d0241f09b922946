"""Prometheus metrics at ``/metrics`` (docs/observability.md).

The metrics themselves are :class:`fleetchat.ops.metrics.HubMetrics`; this is the HTTP part.
``/metrics`` answers when ``telemetry.metrics`` is on (404 otherwise) and, like the REST API,
wants a token when the server has auth on (Prometheus sends it with ``authorization``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sized

from aiohttp import web

from fleetchat.errors import FleetchatError
from fleetchat.hub import Hub
from fleetchat.ops.metrics import HubMetrics
from fleetchat.server.auth import Authenticator
from fleetchat.server.rest import error_response
from fleetchat.server.rest_stats import METRICS_KEY

__all__ = ["install_metrics"]


def install_metrics(
    app: web.Application, hub: Hub, sessions: Mapping[str, Sized], auth: Authenticator
) -> HubMetrics:
    """Keep the server's :class:`HubMetrics` in ``app`` (``/v1/stats`` reads it) and serve
    ``GET /metrics`` when ``telemetry.metrics`` is on.

    Args:
        sessions: the server's agent id -> open sessions mapping, read at scrape time.
    """
    metrics = HubMetrics(hub, sessions)
    app[METRICS_KEY] = metrics

    async def close(app: web.Application) -> None:
        metrics.close()

    app.on_cleanup.append(close)
    if not hub.settings.telemetry.metrics:
        return metrics

    async def scrape(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        try:
            auth.identify(token)
            body, content_type = await metrics.render(request.headers.get("Accept", ""))
        except FleetchatError as exc:
            return error_response(exc)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/metrics", scrape)
    return metrics
