"""A member's delivery state inside the LocalBus: its priority queue, cursors and batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from fleetchat.backends.ports import CursorRecord
from fleetchat.errors import ClosedError
from fleetchat.models import Message
from fleetchat.types import PRIORITY_RANK

if TYPE_CHECKING:
    from fleetchat.config import QosSettings
    from fleetchat.types import Clock, TimerHandle

__all__ = ["Batch", "Cursor", "MemberState", "resolve", "wait_for_batch"]


class Cursor:
    """A member's progress in one channel.

    ``fetched`` is the newest seq already taken from the log into the member's queue (or skipped
    as its own message); when it lags the channel's last seq, the rest is paged in from the log.
    ``floor`` and ``above`` record what is settled (acked, dead-lettered, expired), which is what
    survives a restart.

    Sets of this module are dicts with None values: there is a cursor per membership and a
    member per agent, thousands of each, and an empty dict is 64 bytes where a set is 216.
    """

    __slots__ = (
        "_dirty_list",
        "above",
        "channel",
        "dirty",
        "durable",
        "fetched",
        "floor",
        "member",
    )

    def __init__(
        self, member: str, channel: str, floor: int, durable: bool, dirty_list: list[Cursor]
    ) -> None:
        self.member = member
        self.channel = channel
        self.floor = floor
        self.fetched = floor
        self.above: dict[int, None] = {}
        self.durable = durable
        self.dirty = False
        self._dirty_list = dirty_list

    def settle(self, seq: int) -> None:
        if seq == self.floor + 1:
            floor = seq
            above = self.above
            while floor + 1 in above:
                floor += 1
                del above[floor]
            self.floor = floor
        elif seq > self.floor:
            self.above[seq] = None
        self.touch()

    def touch(self) -> None:
        """Mark the cursor for the next save (settled seqs or retry counts changed)."""
        if not self.dirty:
            self.dirty = True
            self._dirty_list.append(self)

    def is_settled(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.above

    def record(self, retries: dict[str, int]) -> CursorRecord:
        return CursorRecord(
            self.member, self.channel, self.floor, sorted(self.above), dict(retries)
        )


class Batch:
    """Deliveries handed to one consumer at once, all of one priority.

    The consumer acks or nacks items by index; the batch's ack timer fails what is still open.
    """

    __slots__ = (
        "attempts",
        "consumer",
        "items",
        "member",
        "open",
        "pending",
        "qos",
        "timer",
    )

    def __init__(
        self,
        member: MemberState,
        consumer: int,
        items: list[Message],
        attempts: list[int],
        qos: QosSettings,
    ) -> None:
        self.member = member
        self.consumer = consumer
        self.items = items
        self.attempts = attempts
        self.qos = qos
        # Transient items (seq 0: requests, replies) are never acked or retried.
        self.open = [m.seq != 0 for m in items]
        self.pending = sum(self.open)
        self.timer: TimerHandle | None = None


class MemberState:
    """One member's queue: four FIFO lanes, one per priority, bounded by ``limit``."""

    __slots__ = (
        "batches",
        "cursors",
        "delayed",
        "id",
        "inflight",
        "lagging",
        "lanes",
        "limit",
        "listeners",
        "queued",
        "retries",
        "room_waiters",
    )

    def __init__(self, member_id: str, limit: int) -> None:
        self.id = member_id
        self.limit = limit
        # Plain lists, not deques: an empty deque costs 760 bytes, a list 56, and lanes are
        # short (bounded by ``limit``), so taking from the front by slicing is cheap.
        self.lanes: tuple[list[Message], ...] = ([], [], [], [])
        self.queued = 0
        self.inflight = 0
        self.delayed = 0
        self.cursors: dict[str, Cursor] = {}
        self.batches: dict[Batch, None] = {}
        self.retries: dict[str, int] = {}
        self.lagging: dict[str, None] = {}
        # Consumers to call when deliveries are ready, by consumer id (see LocalBus.listen).
        self.listeners: dict[int, Callable[[], None]] = {}
        self.room_waiters: list[asyncio.Future[None]] = []

    @property
    def room(self) -> int:
        return self.limit - self.queued - self.inflight - self.delayed

    def push(self, rank: int, message: Message) -> None:
        self.lanes[rank].append(message)
        self.queued += 1
        self.wake()

    def wake(self) -> None:
        """Tell the listening consumers that deliveries are ready; each takes what it can."""
        for listener in list(self.listeners.values()):
            listener()

    def wake_room(self) -> None:
        if self.room_waiters:
            waiters, self.room_waiters = self.room_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def withdraw(self, consumer: int) -> list[Message]:
        """Close ``consumer``'s batches; the items it left open (not acked or failed)."""
        back: list[Message] = []
        for batch in [b for b in self.batches if b.consumer == consumer]:
            back.extend(m for m, o in zip(batch.items, batch.open, strict=True) if o)
            batch.open = [False] * len(batch.items)
            self.inflight -= batch.pending
            batch.pending = 0
            if batch.timer is not None:
                batch.timer.cancel()
                batch.timer = None
            del self.batches[batch]
        return back

    def put_front(self, messages: list[Message]) -> None:
        """Queue ``messages`` ahead of what is queued, each in its lane, in the given order."""
        fronts: tuple[list[Message], ...] = ([], [], [], [])
        for m in messages:
            fronts[PRIORITY_RANK[m.priority]].append(m)
        for lane, front in zip(self.lanes, fronts, strict=True):
            if front:
                lane[0:0] = front
                self.queued += len(front)

    def take(self, max_items: int) -> tuple[int, list[Message]]:
        """Pop up to ``max_items`` from the highest non-empty lane: (rank, messages)."""
        for rank, lane in enumerate(self.lanes):
            if lane:
                n = min(max_items, len(lane))
                items = lane[:n]
                del lane[:n]
                self.queued -= n
                return rank, items
        return 0, []

    def purge(self, channel: str) -> int:
        """Drop queued messages of ``channel`` (after leaving it); returns how many."""
        dropped = 0
        for lane in self.lanes:
            keep = [m for m in lane if m.channel != channel]
            dropped += len(lane) - len(keep)
            lane.clear()
            lane.extend(keep)
        self.queued -= dropped
        return dropped


def resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_for_batch(
    poll: Callable[[], Batch | None],
    member: Callable[[], MemberState],
    consumer: int,
    timeout: float | None,
    clock: Clock,
) -> Batch | None:
    """``poll()`` until it gives a batch or ``timeout`` seconds pass (None: forever), waiting in
    between as ``consumer``'s listener on ``member()``.

    Raises:
        ClosedError: the consumer was detached while it waited (or ``poll`` raises it).
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else clock.monotonic() + timeout
    while True:
        batch = poll()
        if batch is not None:
            return batch
        remaining = None if deadline is None else deadline - clock.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        listeners = member().listeners
        fut: asyncio.Future[None] = loop.create_future()
        listener = listeners[consumer] = partial(resolve, fut)
        timer = None if remaining is None else clock.call_later(remaining, listener)
        try:
            await fut
        finally:
            detached = listeners.get(consumer) is not listener
            if not detached:
                del listeners[consumer]
            if timer is not None:
                timer.cancel()
        if detached:
            raise ClosedError("the subscription is closed")
