"""``hub.ops``: the operations of a hub, composed. Every node answers health questions; the
loops that act (failure detection, backups, autoscaling) run on the leading node only."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fleetchat.ops.backup import BackupService
from fleetchat.ops.detector import FailureDetector
from fleetchat.ops.health import HealthMonitor
from fleetchat.ops.journal import OpsJournal
from fleetchat.ops.reload import Reconfigurer
from fleetchat.ops.scaling import Autoscaler

if TYPE_CHECKING:
    from fleetchat.config import HubSettings
    from fleetchat.hub import Hub

__all__ = ["Operations"]

log = logging.getLogger(__name__)


class Operations:
    """Health, failure detection, backups, autoscaling; see docs/operations.md.

    Attributes:
        journal: the records on ``$ops`` and alerts on ``$alerts``.
        health: the health checks (every node).
        detector: failure detection and recovery (the leader).
        config: live configuration: reload the settings file, or change settings.
        backups: snapshots and restores (:mod:`fleetchat.ops.backup`).
        scaling: the autoscaler (:mod:`fleetchat.ops.scaling`).
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        settings = hub.settings
        self.journal = OpsJournal(hub.bus, hub.clock, settings.chat.publish_timeout)
        self.health = HealthMonitor(hub, settings.health)
        self.detector = FailureDetector(hub, self.health, self.journal)
        self.config = Reconfigurer(hub)
        self.backups = BackupService(hub, settings.backup)
        self.scaling = Autoscaler(hub, settings.scaling)
        self._leading = False
        self._open = False

    async def start(self, leading: bool) -> None:
        await self.journal.start()
        self._open = True
        await self.backups.start()
        await self.scaling.start()
        self.lead(leading)

    def lead(self, leading: bool) -> None:
        """This node became (or stopped being) the leader: start (or stop) the loops."""
        self._leading = leading
        if self._open:
            self.detector.lead(leading)
            self.backups.lead(leading)
            self.scaling.lead(leading)

    async def close(self) -> None:
        self._open = False
        await self.detector.stop()
        await self.scaling.close()
        await self.backups.close()

    def reconfigure(self, settings: HubSettings) -> None:
        """New settings, already validated, taking effect now."""
        self.journal.publish_timeout = settings.chat.publish_timeout
        self.health.settings = settings.health
        self.backups.reconfigure(settings.backup)
        self.scaling.reconfigure(settings.scaling)
