"""The embedded Coordinator: one process is the whole hub, so it is always the leader.

Leadership has epoch 1 from ``start`` to ``close``. Presence keys and locks live in dicts and
expire on the injected clock's monotonic time, so tests drive them with a FakeClock. Lock
tokens grow across all locks, like the NATS revisions they stand in for.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetchat.errors import ClosedError, FencedError, InvalidInputError
from fleetchat.types import Clock, SystemClock

if TYPE_CHECKING:
    from fleetchat.backends.ports import Coordinator

__all__ = ["LocalCoordinator"]

log = logging.getLogger(__name__)

_EPOCH = 1


class LocalCoordinator:
    """Implements :class:`fleetchat.backends.ports.Coordinator` for one process.

    Args:
        node_id: this node's id; ``"local"``.
        presence_ttl: seconds a presence key lasts without a new put; 3.0.
        clock: where time comes from; the system clock.
    """

    def __init__(
        self, node_id: str = "local", *, presence_ttl: float = 3.0, clock: Clock | None = None
    ) -> None:
        self.node_id = node_id
        self.presence_ttl = presence_ttl
        self._clock: Clock = clock or SystemClock()
        self._running = False
        self._closed = False
        self._callbacks: list[Callable[[bool, int], None]] = []
        self._presence: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires)
        self._locks: dict[str, tuple[str, int, float]] = {}  # name -> (owner, token, expires)
        self._tokens = itertools.count(1)

    async def start(self) -> None:
        if self._running:
            return
        if self._closed:
            raise ClosedError("this coordinator is closed")
        self._running = True
        self._fire(True)

    async def close(self) -> None:
        if self._closed:
            return
        was_running, self._running, self._closed = self._running, False, True
        if was_running:
            self._fire(False)

    async def __aenter__(self) -> LocalCoordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- leadership ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._running

    @property
    def epoch(self) -> int:
        return _EPOCH if self._running else 0

    def on_leadership(self, callback: Callable[[bool, int], None]) -> None:
        self._callbacks.append(callback)

    async def leader(self) -> tuple[str, int] | None:
        return (self.node_id, _EPOCH) if self._running else None

    async def check_epoch(self, epoch: int) -> None:
        if not self._running or epoch != _EPOCH:
            raise FencedError(
                f"leadership epoch {epoch} is stale; the current one is {self.epoch}",
                epoch=epoch,
                current_epoch=self.epoch,
            )

    def _fire(self, leading: bool) -> None:
        for callback in list(self._callbacks):
            try:
                callback(leading, _EPOCH)
            except Exception:
                log.exception("coordinator %s: leadership callback failed", self.node_id)

    # -- presence --------------------------------------------------------------------------

    async def put_presence(self, key: str, value: bytes) -> None:
        self._need()
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"a key must be a non-empty string, not {key!r}", field="key")
        self._presence[key] = (value, self._clock.monotonic() + self.presence_ttl)

    async def presence(self) -> dict[str, bytes]:
        self._need()
        now = self._clock.monotonic()
        lapsed = [k for k, (_, expires) in self._presence.items() if expires <= now]
        for key in lapsed:
            del self._presence[key]
        return {k: value for k, (value, _) in self._presence.items()}

    # -- locks -----------------------------------------------------------------------------

    async def acquire(self, name: str, owner: str, ttl: float) -> int | None:
        self._need()
        _check_ttl(ttl)
        held = self._locks.get(name)
        now = self._clock.monotonic()
        if held is not None and held[0] != owner and held[2] > now:
            return None
        token = next(self._tokens)
        self._locks[name] = (owner, token, now + ttl)
        return token

    async def renew(self, name: str, token: int, ttl: float) -> int:
        self._need()
        _check_ttl(ttl)
        held = self._locks.get(name)
        if held is None or held[1] != token:
            raise FencedError(
                f"lock {name!r}: token {token} is no longer current", lock=name, token=token
            )
        new = next(self._tokens)
        self._locks[name] = (held[0], new, self._clock.monotonic() + ttl)
        return new

    async def release(self, name: str, token: int) -> None:
        self._need()
        held = self._locks.get(name)
        if held is not None and held[1] == token:
            del self._locks[name]

    def _need(self) -> None:
        if not self._running:
            raise ClosedError(
                "the coordinator is closed" if self._closed else "the coordinator is not started"
            )


def _check_ttl(ttl: float) -> None:
    if not isinstance(ttl, int | float) or ttl <= 0:
        raise InvalidInputError(f"a lock TTL must be more than 0 s, not {ttl!r}", field="ttl")


if TYPE_CHECKING:

    def _conforms(c: LocalCoordinator) -> Coordinator:
        return c
