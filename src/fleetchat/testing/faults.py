"""Fault injection for tests: a Store wrapper that makes writes slow or failing.

    hub = Hub(settings)
    faults = FaultyStore.install(hub)      # before hub.start()
    faults.write_delay = 2.0               # every write now takes 2 s more
    faults.fail_writes = True              # ... or raises BackendError

It wraps the hub's real store: reads and writes still reach the real database, so nothing is
pretend but the delay or the error put in front of a write.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fleetchat.errors import BackendError

if TYPE_CHECKING:
    from fleetchat.hub import Hub

__all__ = ["FaultyStore"]

_WRITES = ("probe", "save_", "update_", "delete_")


class FaultyStore:
    """Delegates to ``inner``; writes (``probe``, ``save_*``, ``update_*``, ``delete_*``) are
    first delayed by ``write_delay`` seconds, then fail if ``fail_writes``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.write_delay = 0.0
        self.fail_writes = False
        self.writes = 0

    @classmethod
    def install(cls, hub: Hub) -> FaultyStore:
        """Wrap ``hub``'s store (every service of the hub then writes through the wrapper)."""
        faulty = cls(hub.store)
        hub.store = faulty
        owners: tuple[Any, ...] = (hub.registry, hub.tasks, hub.leases._records, hub.workflows)
        for owner in owners:
            for attr in ("_store", "store"):
                if getattr(owner, attr, None) is faulty.inner:
                    setattr(owner, attr, faulty)
        return faulty

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not name.startswith(_WRITES) or not asyncio.iscoroutinefunction(target):
            return target

        async def write(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.write_delay:
                await asyncio.sleep(self.write_delay)
            if self.fail_writes:
                raise BackendError(f"injected fault: {name} failed")
            return await target(*args, **kwargs)

        return write
