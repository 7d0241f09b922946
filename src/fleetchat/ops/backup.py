"""Online snapshots of a hub's state and their restore (docs/operations.md#backups).

(Being written: the skeleton below is the interface ``Operations`` calls.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetchat.ops.settings import BackupSettings

if TYPE_CHECKING:
    from fleetchat.hub import Hub

__all__ = ["BackupService"]


class BackupService:
    """Takes a snapshot every ``interval`` on the leader; ``backup()`` takes one now."""

    def __init__(self, hub: Hub, settings: BackupSettings) -> None:
        self._hub = hub
        self.settings = settings

    async def start(self) -> None:
        """Called once the hub's services are open (every node)."""

    def lead(self, leading: bool) -> None:
        """Start (or stop) the periodic snapshots."""

    async def close(self) -> None:
        """Stop the loop; a snapshot being written is finished or removed."""

    def reconfigure(self, settings: BackupSettings) -> None:
        self.settings = settings
