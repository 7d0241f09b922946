"""The asyncio tasks a service starts in the background and owns until it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

__all__ = ["Background"]


class Background:
    """A service's background tasks: each is kept referenced until it ends (the event loop
    holds only weak references), a failure is logged as ``"<what> failed"`` when a ``log`` is
    given (and ``quiet()`` is false), and :meth:`cancel` or :meth:`drain` ends them at stop."""

    def __init__(
        self,
        log: logging.Logger | None = None,
        what: str = "background work",
        *,
        quiet: Callable[[], bool] = lambda: False,
    ) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = log
        self._what = what
        self._quiet = quiet

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._log is None or task.cancelled() or task.exception() is None or self._quiet():
            return
        self._log.error("%s failed", self._what, exc_info=task.exception())

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel(self) -> None:
        """Cancel every task (but the one calling) and wait until each has ended."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def drain(self, timeout: float) -> None:
        """Let each task finish, waiting up to ``timeout`` seconds for each (then cancelled)."""
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout)
