"""Per-server and per-connection bookkeeping of the agent sessions."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import msgspec

from fleetchat import protocol as p
from fleetchat.models import Message

__all__ = ["MessageCache", "PublishLedger", "RateBucket"]

_encode_message = msgspec.json.Encoder().encode


class MessageCache:
    """Encoded message bytes by id, so a fan-out to N sessions encodes once."""

    def __init__(self, size: int = 65_536) -> None:
        self._size = size
        self._data: dict[str, bytes] = {}

    def get(self, m: Message) -> bytes:
        data = self._data.get(m.id)
        if data is None:
            if len(self._data) >= self._size:
                self._data.clear()
            data = self._data[m.id] = _encode_message(m)
        return data


class PublishLedger:
    """Recent publishes by (agent, channel, client id), so a retried publish is not posted twice,
    also when the retry comes over a new connection. Bounded: the oldest are forgotten."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._done: OrderedDict[tuple[str, str, str], p.Published] = OrderedDict()
        # Publishes in flight; the future is made only when a retry comes to wait for one.
        self._running: dict[tuple[str, str, str], asyncio.Future[p.Published] | None] = {}

    def done(self, key: tuple[str, str, str]) -> p.Published | None:
        return self._done.get(key)

    def running(self, key: tuple[str, str, str]) -> asyncio.Future[p.Published] | None:
        """A future for the publish of ``key`` if it is in flight, else None."""
        if key not in self._running:
            return None
        fut = self._running[key]
        if fut is None:
            fut = self._running[key] = asyncio.get_running_loop().create_future()
        return fut

    def begin(self, key: tuple[str, str, str]) -> None:
        self._running[key] = None

    def finish(self, key: tuple[str, str, str], result: p.Published | None) -> None:
        fut = self._running.pop(key, None)
        if result is not None:
            self._done[key] = result
            if len(self._done) > self._size:
                self._done.popitem(last=False)
        if fut is not None and not fut.done():
            if result is None:
                fut.cancel()
            else:
                fut.set_result(result)


class RateBucket:
    """Token bucket for the frame rate limit."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
