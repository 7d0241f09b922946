"""Small shared vocabulary: priorities, identifiers, the clock.

Everything else in fleetchat depends on this module; it depends on nothing of ours.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Protocol

from fleetchat.errors import InvalidIdError, InvalidInputError

__all__ = [
    "PRIORITY_RANK",
    "Clock",
    "Priority",
    "SystemClock",
    "TimerHandle",
    "check_agent_id",
    "check_channel_name",
    "new_id",
    "parse_priority",
]


class Priority(enum.StrEnum):
    """Delivery priority. A member's queue always hands out the highest level first."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


#: Index of each priority in a member's queue: 0 is served first.
PRIORITY_RANK: dict[str, int] = {"critical": 0, "high": 1, "normal": 2, "low": 3}
PRIORITIES: tuple[Priority, ...] = tuple(Priority)


def parse_priority(value: object) -> Priority:
    """Return the Priority for ``value`` or raise InvalidInputError."""
    if isinstance(value, Priority):
        return value
    if isinstance(value, str) and value in PRIORITY_RANK:
        return Priority(value)
    raise InvalidInputError(
        f"priority must be one of critical, high, normal, low, not {value!r}",
        field="priority",
    )


_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")
_CHANNEL_RE = re.compile(r"[$@]?[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")


def check_agent_id(value: object, field: str = "agent_id") -> str:
    """Validate an agent id: 1-128 of ``A-Z a-z 0-9 _ . : @ -``, starting alphanumeric."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidIdError(
            f"invalid {field} {value!r}: use 1-128 of A-Z a-z 0-9 _ . : @ -", field=field
        )
    return value


def check_channel_name(value: object, field: str = "channel") -> str:
    """Validate a channel name: like an agent id, optionally prefixed by ``$`` or ``@``."""
    if not isinstance(value, str) or not _CHANNEL_RE.match(value):
        raise InvalidIdError(
            f"invalid {field} {value!r}: use 1-128 of A-Z a-z 0-9 _ . : @ -", field=field
        )
    return value


_ID_PREFIX = os.urandom(4).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(5), "big"))


def new_id() -> str:
    """A new message id: 32 hex chars, time-ordered within a process.

    The ms timestamp, 32 random bits fixed per process, then a 48-bit counter (no system call
    per id, unlike ``os.urandom``; ids of one process never repeat).
    """
    return f"{int(time.time() * 1000):012x}{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


class TimerHandle(Protocol):
    """What ``Clock.call_later`` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where every timed part of fleetchat reads time and schedules callbacks.

    ``time()`` is wall-clock epoch seconds (for timestamps people read); ``monotonic()`` is for
    durations. Tests inject ``fleetchat.testing.FakeClock`` to run timeouts instantly.
    """

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle: ...

    async def sleep(self, delay: float) -> None: ...


class SystemClock:
    """The real clock, scheduling on the running event loop."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(delay, 0.0), callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)
