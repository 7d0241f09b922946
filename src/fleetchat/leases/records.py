"""The lease records of one hub node's view: compare-and-set updates, and waking waiters.

:class:`Records` applies a pure change of state.py to the stored record by compare-and-set,
retrying on a conflict (another coroutine or node changed it in between), and wakes the
waiters of the resource when a change matters to them: this node's at once, the other nodes'
through a bus broadcast on topic ``leases``. A broadcast is at most once; a waiter also reads
its record again at least every ``check_interval``, so a lost one only costs time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from fleetchat.errors import BackendError
from fleetchat.leases.state import Resource

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus, Store
    from fleetchat.types import Clock

__all__ = ["TOPIC", "Records"]

log = logging.getLogger(__name__)

TOPIC = "leases"
"""Bus broadcast topic: the name of a resource whose holder or queue changed."""
_MAX_TRIES = 200


class Records:
    """Resource records on ``store``; waiters sleeping on this node, by resource and ticket."""

    def __init__(self, store: Store, bus: Bus, clock: Clock) -> None:
        self.store = store
        self._bus = bus
        self._clock = clock
        self._wakers: dict[str, dict[str, asyncio.Future[None]]] = {}

    def start(self) -> None:
        self._bus.on_broadcast(TOPIC, lambda data: self.wake(data.decode()))

    def wake_all(self) -> None:
        for name in list(self._wakers):
            self.wake(name)

    async def update(self, name: str, change: Callable[[Resource], Resource]) -> Resource:
        """Apply ``change`` to the stored record by compare-and-set, retrying on conflict.
        Returns the record as stored (or as read, when ``change`` left it as it was); an error
        ``change`` raises propagates, with nothing written."""
        for attempt in range(_MAX_TRIES):
            old = await self.store.load_resource(name) or Resource(name=name)
            new = change(old)
            if new is old:
                return old
            if await self.store.save_resource(new, old.version):
                if _moved(old, new):
                    self.wake(name)
                    try:
                        self._bus.broadcast(TOPIC, name.encode())
                    except Exception:  # the periodic re-check covers a lost wake-up
                        log.warning("lease broadcast failed", extra={"resource": name})
                return msgspec.structs.replace(new, version=old.version + 1)
            # Spread out the retries of writers that collide again and again.
            await asyncio.sleep(random.uniform(0, min(0.0005 * attempt, 0.02)))
        raise BackendError(f"the lease record {name!r} kept changing under {_MAX_TRIES} updates")

    async def sleep(self, name: str, ticket: str, delay: float) -> None:
        """Sleep ``delay`` seconds (on the clock) or until ``name`` changes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wakers.setdefault(name, {})[ticket] = fut

        def ring() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self._clock.call_later(delay, ring)
        try:
            await fut
        finally:
            handle.cancel()
            wakers = self._wakers.get(name, {})
            if wakers.get(ticket) is fut:
                del wakers[ticket]
                if not wakers:
                    self._wakers.pop(name, None)

    def wake(self, name: str) -> None:
        for fut in self._wakers.get(name, {}).values():
            if not fut.done():
                fut.set_result(None)


def _moved(old: Resource, new: Resource) -> bool:
    """Whether a waiter can see a difference: a grant, a release, or a wait marked failed."""
    if (old.ticket, old.token) != (new.ticket, new.token):
        return True
    return sum(w.failed is not None for w in old.waiters) != sum(
        w.failed is not None for w in new.waiters
    )
