"""Keeping the registries of a hub's nodes in step.

Every node keeps the whole registry in memory (matching reads it on every call). The store
holds the records, so a node that starts loads them all; after that, changes travel over the
bus's broadcast: each change made on a node (register, update, online, offline, deregister)
goes to the others as the full record, and the heartbeats a node took are sent as one batch
per heartbeat interval (an agent seen anywhere is alive everywhere). On one node (the embedded
hub) the broadcast goes nowhere and this costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from fleetchat.backends.ports import Bus
from fleetchat.models import AgentInfo
from fleetchat.registry.agents import AgentRegistry
from fleetchat.types import Clock

__all__ = ["RegistrySync"]

log = logging.getLogger(__name__)

_CHANGE = "agents"
_BEATS = "beats"


class _Change(msgspec.Struct, array_like=True):
    kind: str
    agent: AgentInfo


_encode = msgspec.json.Encoder().encode
_decode_change = msgspec.json.Decoder(_Change).decode
_decode_beats = msgspec.json.Decoder(dict[str, float]).decode


class RegistrySync:
    """Wires a node's AgentRegistry to the other nodes through ``bus``."""

    def __init__(self, registry: AgentRegistry, bus: Bus, clock: Clock, interval: float) -> None:
        self._registry = registry
        self._bus = bus
        self._clock = clock
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        registry, bus = self._registry, self._bus
        registry.on_change = self._send_change
        registry.beats = {}
        bus.on_broadcast(_CHANGE, self._on_change)
        bus.on_broadcast(_BEATS, self._on_beats)
        self._task = asyncio.get_running_loop().create_task(self._send_beats(), name="beats")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _send_change(self, kind: str, agent: AgentInfo) -> None:
        self._bus.broadcast(_CHANGE, _encode(_Change(kind, agent)))

    def _on_change(self, data: bytes) -> None:
        change = _decode_change(data)
        self._registry.apply_remote(change.kind, change.agent)

    def _on_beats(self, data: bytes) -> None:
        self._registry.apply_beats(_decode_beats(data))

    async def _send_beats(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            beats = self._registry.beats
            if beats:
                self._registry.beats = {}
                try:
                    self._bus.broadcast(_BEATS, _encode(beats))
                except Exception:  # pragma: no cover - the loop must survive
                    log.exception("sending heartbeats to the other nodes failed")
