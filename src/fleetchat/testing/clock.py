"""A clock that moves only when told to, so timeouts, backoff and heartbeats test instantly."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["FakeClock"]


class _Handle:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Implements :class:`fleetchat.types.Clock`. Time starts at ``start`` and moves with
    :meth:`advance`, which runs every callback that falls due, in time order."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._start = start
        self._heap: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._start

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Handle:
        handle = _Handle(self._now + max(delay, 0.0), callback)
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
        return handle

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.call_later(delay, wake)
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running due callbacks and letting tasks react."""
        target = self._now + seconds
        await _settle()
        while self._heap and self._heap[0][0] <= target:
            when, _, handle = heapq.heappop(self._heap)
            self._now = max(self._now, when)
            if not handle.cancelled:
                handle.callback()
            await _settle()
        self._now = target
        await _settle()

    @property
    def pending(self) -> int:
        """Timers not yet due (cancelled ones included until they fall due)."""
        return len(self._heap)


async def _settle() -> None:
    # Let woken tasks run (and the tasks they wake) before time moves again.
    for _ in range(20):
        await asyncio.sleep(0)
