"""The REST routes of backups (docs/backups.md): take a snapshot now, list the snapshots.

Both are for admins: a snapshot holds every message and token hash of the hub. The file is
written on the hub's machine, in its backup directory; restoring it is ``fleetchat restore``,
run where the file is, against a stopped hub.
"""

from __future__ import annotations

from fleetchat.server import schemas_backup as s
from fleetchat.server.rest_route import Ctx, Route

__all__ = ["BACKUP_ROUTES"]


async def take_backup(ctx: Ctx) -> s.BackupInfo:
    return await ctx.hub.ops.backups.backup()


async def list_backups(ctx: Ctx) -> s.BackupList:
    backups = ctx.hub.ops.backups
    return s.BackupList(directory=str(backups.location), backups=await backups.list())


BACKUP_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/backups",
        "Take a snapshot of the hub's state now (waits until it is written)",
        take_backup,
        "admin",
        response=s.BackupInfo,
        status=201,
    ),
    Route(
        "GET",
        "/v1/backups",
        "List the snapshots in the hub's backup directory",
        list_backups,
        "admin",
        response=s.BackupList,
    ),
)
