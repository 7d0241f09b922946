"""Waiting over REST for something to finish: read it again, less often each time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fleetchat.errors import RequestTimeoutError

__all__ = ["poll_until"]

T = TypeVar("T")

POLL_FIRST = 0.05
POLL_MAX = 1.0
"""Seconds between reads: from the first, doubled up to the most."""


async def poll_until(
    read: Callable[[], Awaitable[T]],
    finished: Callable[[T], bool],
    timeout: float | None,
    what: str,
    **details: Any,
) -> T:
    """``read()`` until ``finished`` says so, and return the last read; ``timeout`` None waits
    as long as it takes.

    Raises:
        RequestTimeoutError: not finished after ``timeout`` seconds (``what`` names it in the
            message; ``details`` and ``timeout`` are its details).
    """
    pause = POLL_FIRST
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = await read()
                if finished(value):
                    return value
                await asyncio.sleep(pause)
                pause = min(pause * 2, POLL_MAX)
    except TimeoutError:
        if timeout is None:  # pragma: no cover - only asyncio.timeout raises it here
            raise
        raise RequestTimeoutError(
            f"{what} did not finish within {timeout:g} s", **details, timeout=timeout
        ) from None
