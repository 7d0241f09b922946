"""The REST routes of backup (docs/operations.md). (Being written.)"""

from __future__ import annotations

from fleetchat.server.rest_route import Route

__all__ = ["BACKUP_ROUTES"]

BACKUP_ROUTES: tuple[Route, ...] = ()
