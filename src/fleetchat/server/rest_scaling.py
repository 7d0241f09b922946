"""The REST routes of scaling (docs/operations.md). (Being written.)"""

from __future__ import annotations

from fleetchat.server.rest_route import Route

__all__ = ["SCALING_ROUTES"]

SCALING_ROUTES: tuple[Route, ...] = ()
