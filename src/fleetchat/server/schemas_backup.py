"""Bodies of the backup routes of the REST API (shared by the server and the CLI)."""

from __future__ import annotations

import msgspec

from fleetchat.ops.backup import BackupInfo

__all__ = ["BackupInfo", "BackupList"]


class BackupList(msgspec.Struct, kw_only=True):
    """The snapshots in the hub's backup directory, oldest first."""

    directory: str
    backups: list[BackupInfo]
