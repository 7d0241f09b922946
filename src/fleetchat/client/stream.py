"""``agent.messages()``: deliveries as an async iterator, acked as you go."""

from __future__ import annotations

import asyncio
import fnmatch
from types import TracebackType
from typing import TYPE_CHECKING

from fleetchat.client.delivery import ACK, Item, Outcome
from fleetchat.models import Message

if TYPE_CHECKING:
    from fleetchat.client.dispatch import Dispatcher

__all__ = ["MessageStream"]


class MessageStream:
    """Messages (not requests) that no ``on_message`` handler took, in arrival order.

    Each message is acked when the next one is asked for, or when the stream closes. Inside
    ``async with``, an exception leaving the block nacks the current message instead::

        async with agent.messages(channel="cell-1") as stream:
            async for msg in stream:
                print(msg.body)
    """

    def __init__(self, dispatcher: Dispatcher, channel: str | None, kind: str | None) -> None:
        self._dispatcher = dispatcher
        self.channel = channel
        self.kind = kind
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._current: Item | None = None
        self._closed = False

    def matches(self, m: Message) -> bool:
        return (self.kind is None or m.kind == self.kind) and (
            self.channel is None or fnmatch.fnmatchcase(m.channel, self.channel)
        )

    def offer(self, item: Item) -> None:
        self._queue.put_nowait(item)

    def _settle_current(self, outcome: Outcome) -> None:
        item, self._current = self._current, None
        if item is not None:
            self._dispatcher.settle(item, outcome)

    async def next(self, timeout: float | None = None) -> Message:
        """The next message (acking the previous one).

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
            StopAsyncIteration: the stream or the agent is closed.
        """
        self._settle_current(ACK)
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if item is None:
            self._closed = True
            raise StopAsyncIteration
        self._current = item
        return item.message

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        return await self.next()

    def close(self, *, ok: bool = True) -> None:
        """Stop: ack (or with ``ok=False`` nack) the current message; give the queued ones back
        to the hub (nacked without delay, so they come again)."""
        if self._closed and self._current is None:
            return
        self._closed = True
        self._dispatcher.remove_stream(self)
        self._settle_current(ACK if ok else Outcome("nack"))
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._dispatcher.settle(item, Outcome("nack", delay=0.0))
        self._queue.put_nowait(None)

    def end(self) -> None:
        """The agent is closing: wake a waiting reader; unsettled messages come again later."""
        self._closed = True
        self._current = None
        self._queue.put_nowait(None)

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ok=exc_type is None or issubclass(exc_type, GeneratorExit))
