"""Subscriptions: an agent's stream of deliveries, with ack, nack and reply."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fleetchat.errors import ClosedError, InvalidInputError
from fleetchat.models import Message

if TYPE_CHECKING:
    from fleetchat.backends.local_member import Batch
    from fleetchat.backends.ports import Bus
    from fleetchat.chat.requests import RequestRouter

__all__ = ["Delivery", "DeliveryBatch", "Subscription"]

_consumer_ids = itertools.count(1)


class Delivery:
    """One message handed to one member. Ack it, or nack it to have it retried."""

    __slots__ = ("_batch", "_index", "_sub", "attempt", "message")

    def __init__(self, sub: Subscription, batch: Batch, index: int) -> None:
        self._sub = sub
        self._batch = batch
        self._index = index
        self.message: Message = batch.items[index]
        self.attempt: int = batch.attempts[index]
        """1 for the first delivery, 2 for the first retry, ..."""

    @property
    def body(self) -> Any:
        return self.message.body

    async def ack(self) -> None:
        """Settle it: it will not come again."""
        self._sub._bus.ack(self._batch, self._index)

    async def nack(self, *, delay: float | None = None, dead_letter: bool = False) -> None:
        """Fail this attempt: retried after ``delay`` (default: the backoff for its priority),
        or straight to the dead letters with ``dead_letter=True``."""
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise InvalidInputError("delay must be a non-negative number of seconds", field="delay")
        self._sub._bus.nack(self._batch, self._index, delay=delay, dead_letter=dead_letter)

    async def reply(self, body: Any, *, headers: dict[str, str] | None = None) -> bool:
        """Answer a request. Returns False if the requester stopped waiting (late reply)."""
        return await self._sub._requests.reply(
            self.message, body, sender=self._sub.agent_id, headers=headers
        )

    def __repr__(self) -> str:
        m = self.message
        return f"<Delivery {m.channel}#{m.seq} {m.priority} from {m.sender} attempt {self.attempt}>"


class DeliveryBatch:
    """Several deliveries of one priority, handed over at once (the fast path).

    ``await batch.ack()`` acks all of them in one go; iterate for single Delivery objects.
    """

    __slots__ = ("_batch", "_sub")

    def __init__(self, sub: Subscription, batch: Batch) -> None:
        self._sub = sub
        self._batch = batch

    @property
    def messages(self) -> list[Message]:
        return self._batch.items

    def __len__(self) -> int:
        return len(self._batch.items)

    def __iter__(self) -> Iterator[Delivery]:
        for i in range(len(self._batch.items)):
            yield Delivery(self._sub, self._batch, i)

    async def ack(self) -> int:
        """Ack every delivery still open; returns how many."""
        return self._sub._bus.ack(self._batch)

    async def nack(self, *, delay: float | None = None) -> int:
        """Fail every open delivery now; they are retried."""
        return self._sub._bus.nack(self._batch, delay=delay)


class Subscription:
    """Everything addressed to one agent: its channels and its inbox, highest priority first.

    Iterate with ``async for delivery in sub``, or take batches with ``fetch``. Several
    subscriptions of one agent share its queue (competing consumers). Closing one puts its
    unacked deliveries back in the queue, attempts unchanged.
    """

    def __init__(self, bus: Bus, requests: RequestRouter, agent_id: str, batch_size: int) -> None:
        self._bus = bus
        self._requests = requests
        self.agent_id = agent_id
        self._batch_size = batch_size
        self._consumer = next(_consumer_ids)
        self._buffer: deque[Delivery] = deque()
        self._closed = False
        # Tell the bus a consumer is here now: a distributed bus starts serving the agent on
        # this node (ephemeral messages reach only agents being served somewhere).
        bus.listen(agent_id, self._consumer, None)

    async def fetch(
        self, max_items: int | None = None, *, timeout: float | None = None
    ) -> DeliveryBatch | None:
        """The next batch (up to ``max_items``), or None if nothing came within ``timeout``."""
        if self._closed:
            raise ClosedError("the subscription is closed")
        size = self._batch_size if max_items is None else max_items
        if not isinstance(size, int) or size < 1:
            raise InvalidInputError("max_items must be a positive integer", field="max_items")
        batch = await self._bus.fetch(self.agent_id, self._consumer, size, timeout)
        return None if batch is None else DeliveryBatch(self, batch)

    async def next(self, timeout: float | None = None) -> Delivery:
        """The next delivery.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        while not self._buffer:
            batch = await self.fetch(timeout=timeout)
            if batch is None:
                raise TimeoutError(f"no delivery for {self.agent_id!r} within {timeout} s")
            self._buffer.extend(batch)
        return self._buffer.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        try:
            return await self.next()
        except ClosedError:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        """Stop consuming; unacked deliveries return to the agent's queue."""
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            self._bus.detach(self.agent_id, self._consumer)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
