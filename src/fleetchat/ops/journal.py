"""The operations journal: the hub's record of failures, recoveries, alerts, scaling events,
backups and configuration changes, kept as messages on two system channels.

- ``$ops``: every record, ``{"type": "incident" | "scaling" | "backup" | "config", ...}``;
- ``$alerts``: what needs a person: recoveries that failed or took too long, degradation.

They are ordinary durable channels, so the records survive restarts, are replicated in
distributed mode, and can be followed with ``fleetchat tail '$alerts'`` or an agent joining
the channel.
"""

from __future__ import annotations

import logging
from typing import Any

from fleetchat.backends.ports import Bus
from fleetchat.chat.channels import ensure_system_channel, hub_message
from fleetchat.errors import FleetchatError
from fleetchat.types import Clock, Priority

__all__ = ["ALERTS_CHANNEL", "OPS_CHANNEL", "OpsJournal"]

log = logging.getLogger(__name__)

OPS_CHANNEL = "$ops"
ALERTS_CHANNEL = "$alerts"


class OpsJournal:
    """Posts records on ``$ops`` and alerts on ``$alerts``; reads them back."""

    def __init__(self, bus: Bus, clock: Clock, publish_timeout: float) -> None:
        self._bus = bus
        self._clock = clock
        self.publish_timeout = publish_timeout

    async def start(self) -> None:
        for name in (OPS_CHANNEL, ALERTS_CHANNEL):
            await ensure_system_channel(self._bus, name, self._clock.time())

    async def record(self, kind: str, body: dict[str, Any]) -> None:
        """Post one record on ``$ops``; a failure to post is logged, never raised."""
        await self._post(OPS_CHANNEL, {"type": kind, **body}, Priority.NORMAL)

    async def alert(self, kind: str, message: str, **details: Any) -> None:
        """Post an alert on ``$alerts`` (high priority) and log it as an error."""
        log.error("alert: %s", message, extra={"alert": kind, **details})
        body = {"type": kind, "message": message, "at": self._clock.time(), **details}
        await self._post(ALERTS_CHANNEL, body, Priority.HIGH)

    async def _post(self, channel: str, body: dict[str, Any], priority: Priority) -> None:
        message = hub_message(channel, body, self._clock.time(), priority=priority)
        try:
            await self._bus.publish([message], self.publish_timeout)
        except FleetchatError as exc:
            log.warning("ops record not posted", extra={"channel": channel, "error": exc.code})

    async def read(
        self, channel: str = OPS_CHANNEL, *, kind: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` records (of type ``kind``), oldest first, each with its
        ``seq`` and ``at``."""
        if self._bus.channel(channel) is None:
            return []
        out: list[dict[str, Any]] = []
        end: int | None = None
        while len(out) < limit:
            page = await self._bus.history(channel, end_seq=end, limit=1000, tail=True)
            if not page:
                break
            for m in reversed(page):
                body = m.body if isinstance(m.body, dict) else {"value": m.body}
                if kind is None or body.get("type") == kind:
                    out.append({"seq": m.seq, "at": m.created_at, **body})
                    if len(out) == limit:
                        break
            end = page[0].seq - 1
            if len(page) < 1000 or end < 1:
                break
        out.reverse()
        return out
