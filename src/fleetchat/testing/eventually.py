"""Wait for a condition instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["assert_eventually"]


async def assert_eventually(
    check: Callable[[], object] | Callable[[], Awaitable[object]],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str = "condition never became true",
) -> None:
    """Poll ``check`` until it returns truthy (or stops raising AssertionError).

    Raises:
        AssertionError: still false after ``timeout`` seconds (real time).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            if result:
                return
            last = None
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(message) from last
        await asyncio.sleep(interval)
