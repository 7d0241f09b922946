"""The REST routes of operations: health detail, the ops journal and alerts, live
configuration (docs/operations.md). (Being written.)"""

from __future__ import annotations

from fleetchat.server.rest_route import Route

__all__ = ["OPS_ROUTES"]

OPS_ROUTES: tuple[Route, ...] = ()
