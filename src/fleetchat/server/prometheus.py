"""Prometheus metrics at ``/metrics`` (docs/observability.md). (Being written.)"""

from __future__ import annotations

from aiohttp import web

from fleetchat.hub import Hub

__all__ = ["install_metrics"]


def install_metrics(app: web.Application, hub: Hub) -> None:
    """Serve ``GET /metrics`` on ``app`` when ``telemetry.metrics`` is on."""
