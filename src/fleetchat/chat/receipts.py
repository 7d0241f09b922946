"""Delivery receipts: a sender can follow what became of each delivery of its messages."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from fleetchat.errors import ClosedError
from fleetchat.models import Message, Receipt, ReceiptStatus

__all__ = ["ReceiptStream", "Receipts"]


class ReceiptStream:
    """An async iterator of Receipts for one sender. Bounded: the oldest are dropped when full.

    Use ``async with hub.receipts("planner") as receipts: async for r in receipts: ...``.
    """

    def __init__(self, owner: Receipts, sender: str, maxlen: int) -> None:
        self.sender = sender
        self._owner = owner
        self._items: deque[Receipt] = deque(maxlen=maxlen)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0

    def _put(self, receipt: Receipt) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(receipt)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> ReceiptStream:
        return self

    async def __anext__(self) -> Receipt:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()

    async def next(self, timeout: float) -> Receipt:
        """The next receipt; ``TimeoutError`` if none comes within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            try:
                return await self.__anext__()
            except StopAsyncIteration:
                raise ClosedError("the receipt stream is closed") from None

    def close(self) -> None:
        self._closed = True
        self._owner._remove(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aenter__(self) -> ReceiptStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Receipts:
    """Routes delivery outcomes to the receipt streams of their senders."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._streams: dict[str, list[ReceiptStream]] = {}
        self._maxlen = maxlen

    @property
    def active(self) -> bool:
        return bool(self._streams)

    def open(self, sender: str) -> ReceiptStream:
        stream = ReceiptStream(self, sender, self._maxlen)
        self._streams.setdefault(sender, []).append(stream)
        return stream

    def _remove(self, stream: ReceiptStream) -> None:
        streams = self._streams.get(stream.sender, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self._streams.pop(stream.sender, None)

    def close(self) -> None:
        for streams in list(self._streams.values()):
            for s in list(streams):
                s.close()

    def on_outcome(
        self,
        member: str,
        messages: Sequence[Message],
        status: ReceiptStatus,
        at: float,
        attempts: Sequence[int] | None = None,
    ) -> None:
        streams = self._streams
        for i, m in enumerate(messages):
            targets = streams.get(m.sender)
            if not targets:
                continue
            receipt = Receipt(
                message_id=m.id,
                channel=m.channel,
                seq=m.seq,
                member=member,
                status=status,
                attempts=attempts[i] if attempts else 1,
                at=at,
            )
            for s in targets:
                s._put(receipt)
