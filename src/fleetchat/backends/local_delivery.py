"""The consuming half of a bus: fetch, ack, nack, retries and dead letters, on member state.

``Consuming`` is a mixin of :class:`fleetchat.backends.local_bus.LocalBus` and
:class:`fleetchat.backends.nats_bus.NatsBus`: both keep each member's queue and cursors in a
:class:`MemberState`; how a lagging member's backlog is brought in (``_refill``) is theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_member import Batch, MemberState, resolve, wait_for_batch
from fleetchat.backends.ports import MemberStats
from fleetchat.config import ChatSettings
from fleetchat.errors import ClosedError
from fleetchat.models import DeadLetter, FailReason, Message
from fleetchat.types import PRIORITIES, Clock, new_id

if TYPE_CHECKING:
    from fleetchat.backends.ports import DeliveryObserver
    from fleetchat.models import Channel

__all__ = ["DLQ_CHANNEL", "HUB_SENDER", "Consuming", "dead_letter_message", "resolve"]

log = logging.getLogger(__name__)

DLQ_CHANNEL = "$dlq"
HUB_SENDER = "$hub"


class Consuming:
    """Handing deliveries to consumers and settling them."""

    settings: ChatSettings
    _clock: Clock
    _observer: DeliveryObserver
    _members: dict[str, MemberState]
    _closed: bool

    if TYPE_CHECKING:

        def _member(self, member_id: str) -> MemberState: ...

        def channel(self, name: str) -> Channel | None: ...

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        async def publish(self, messages: list[Message], timeout: float) -> list[Message]: ...

        def _refill(self, member: MemberState) -> None:
            """Bring a lagging member's backlog into its queue, as far as its room allows."""

    async def fetch(
        self, member_id: str, consumer: int, max_items: int, timeout: float | None
    ) -> Batch | None:
        """Next batch for ``member_id``, waiting up to ``timeout`` seconds (None: forever)."""
        member = self._member(member_id)
        return await wait_for_batch(
            partial(self.poll, member_id, consumer, max_items),
            lambda: member,
            consumer,
            timeout,
            self._clock,
        )

    def poll(self, member_id: str, consumer: int, max_items: int) -> Batch | None:
        """The next batch for ``member_id`` if one is ready now, without waiting."""
        if self._closed:
            raise ClosedError("the hub is closed")
        member = self._member(member_id)
        if member.lagging:
            self._refill(member)
        while member.queued:
            batch = self._make_batch(member, consumer, max_items)
            if batch is not None:
                return batch
        return None

    def listen(self, member_id: str, consumer: int, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (on the loop, synchronously) whenever deliveries for ``member_id``
        become ready, until ``callback`` is None or the consumer is detached. The callback then
        takes them with ``poll``; a consumer that waits this way holds no task while idle."""
        listeners = self._member(member_id).listeners
        if callback is None:
            listeners.pop(consumer, None)
        else:
            listeners[consumer] = callback

    def _make_batch(self, member: MemberState, consumer: int, max_items: int) -> Batch | None:
        rank, items = member.take(max_items)
        now = self._clock.time()
        live = [m for m in items if m.expires_at is None or m.expires_at > now]
        if len(live) != len(items):
            for m in items:
                if m.expires_at is not None and m.expires_at <= now and m.seq:
                    self._settle_dropped(member, m)
                    self._observer.on_expired(member.id, m)
            if not live:
                return None
        retries = member.retries
        attempts = [retries.get(m.id, 0) + 1 for m in live] if retries else [1] * len(live)
        qos = self.settings.qos[PRIORITIES[rank]]
        batch = Batch(member, consumer, live, attempts, qos)
        if batch.pending:
            member.inflight += batch.pending
            member.batches[batch] = None
            batch.timer = self._clock.call_later(
                qos.ack_timeout, partial(self._on_ack_timeout, batch)
            )
        return batch

    def ack(self, batch: Batch, index: int | None = None) -> int:
        """Ack one item (``index``) or every open item of ``batch``; returns how many."""
        if batch.pending == 0:
            return 0
        items = batch.items
        if index is None and batch.pending == len(items):
            # The common case: the whole batch at once. ``open`` is left as it is: a batch
            # with nothing pending is finished and never looked at again.
            idxs = None
            acked = items
            self._settle_all(batch.member, items)
        else:
            open_ = batch.open
            idxs = [i for i, o in enumerate(open_) if o] if index is None else [index]
            idxs = [i for i in idxs if open_[i]]
            acked = [items[i] for i in idxs]
            for i in idxs:
                open_[i] = False
            self._settle_all(batch.member, acked)
        member = batch.member
        n = len(acked)
        batch.pending -= n
        member.inflight -= n
        if batch.pending == 0:
            self._finish(batch)
        if n:
            attempts = batch.attempts if idxs is None else [batch.attempts[i] for i in idxs]
            self._observer.on_acked(member.id, acked, attempts, self._clock.time())
            self._after_room(member)
        return n

    @staticmethod
    def _settle_all(member: MemberState, messages: list[Message]) -> None:
        retries = member.retries
        if retries:
            for m in messages:
                retries.pop(m.id, None)
        cursors = member.cursors
        first = messages[0].channel if messages else None
        if first is not None and messages[-1].channel == first:
            # One channel (the usual batch): nothing to do unless its cursor is durable.
            only = cursors.get(first)
            if (only is None or not only.durable) and all(m.channel == first for m in messages):
                return
        channel = None
        cur = None
        for m in messages:
            if m.channel != channel:
                channel = m.channel
                cur = cursors.get(channel)
                if cur is not None and not cur.durable:
                    cur = None
            if cur is not None:
                cur.settle(m.seq)

    def nack(
        self,
        batch: Batch,
        index: int | None = None,
        *,
        delay: float | None = None,
        dead_letter: bool = False,
    ) -> int:
        """Fail one or every open item now: retried after ``delay`` (default: the backoff)."""
        idxs = [i for i, o in enumerate(batch.open) if o and (index is None or i == index)]
        self._fail(
            batch, idxs, "rejected" if dead_letter else "nacked", delay=delay, dead=dead_letter
        )
        return len(idxs)

    def _finish(self, batch: Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        batch.member.batches.pop(batch, None)

    def _on_ack_timeout(self, batch: Batch) -> None:
        batch.timer = None
        if batch.pending and not self._closed:
            self._fail(batch, [i for i, o in enumerate(batch.open) if o], "ack_timeout")

    def _fail(
        self,
        batch: Batch,
        idxs: list[int],
        reason: FailReason,
        *,
        delay: float | None = None,
        dead: bool = False,
    ) -> None:
        member = batch.member
        qos = batch.qos
        later: dict[float, list[Message]] = {}
        for i in idxs:
            batch.open[i] = False
            m = batch.items[i]
            attempt = batch.attempts[i]
            if dead or attempt >= qos.max_attempts:
                if m.channel == DLQ_CHANNEL:
                    # A dead letter that cannot be delivered is not dead-lettered again.
                    log.warning("dropping undeliverable dead letter", extra={"member": member.id})
                    self._settle_dropped(member, m)
                else:
                    self._dead_letter(member, m, attempt, reason)
                continue
            member.retries[m.id] = attempt
            cur = member.cursors.get(m.channel)
            if cur is not None and cur.durable:
                cur.touch()  # so the attempt count survives a restart
            self._observer.on_retry(member.id, m, attempt + 1, reason)
            later.setdefault(qos.backoff(attempt) if delay is None else delay, []).append(m)
        batch.pending -= len(idxs)
        member.inflight -= len(idxs)
        if batch.pending == 0:
            self._finish(batch)
        for wait, msgs in later.items():
            member.delayed += len(msgs)
            self._clock.call_later(wait, partial(self._requeue, member, msgs, True))
        self._after_room(member)

    def _requeue(self, member: MemberState, msgs: list[Message], delayed: bool) -> None:
        if delayed:
            member.delayed -= len(msgs)
        if self._closed:
            return
        cursors = member.cursors
        member.put_front(
            [
                m
                for m in msgs
                if (cur := cursors.get(m.channel)) is not None  # not left the channel
                and not (cur.durable and cur.is_settled(m.seq))  # nor settled meanwhile
            ]
        )
        member.wake()

    def detach(self, member_id: str, consumer: int) -> None:
        """A consumer went away: its open deliveries go back to the queue, attempts unchanged."""
        member = self._members.get(member_id)
        if member is None:
            return
        listener = member.listeners.pop(consumer, None)
        if listener is not None:
            listener()  # a fetch waiting for this consumer looks again, and finds it detached
        returned = member.withdraw(consumer)
        # Back in the order they were committed, ahead of everything still queued.
        returned.sort(key=lambda m: (m.created_at, m.seq))
        self._requeue(member, returned, False)

    # -- health (docs/operations.md) ----------------------------------------------------------

    def member_stats(self) -> list[MemberStats]:
        """The delivery queue of every member served here: what waits, what is out, how old
        the oldest is, and how much is still in the log beyond what was paged in."""
        out = []
        for member in self._members.values():
            oldest = min(
                (lane[0].created_at for lane in member.lanes if lane),
                default=None,
            )
            for batch in member.batches:
                for m, still_open in zip(batch.items, batch.open, strict=True):
                    if still_open and (oldest is None or m.created_at < oldest):
                        oldest = m.created_at
            backlog = 0
            for name in member.lagging:
                channel = self.channel(name)
                cursor = member.cursors.get(name)
                if channel is not None and cursor is not None:
                    backlog += max(channel.last_seq - cursor.fetched, 0)
            out.append(
                MemberStats(
                    member=member.id,
                    queued=member.queued + member.delayed,
                    inflight=member.inflight,
                    backlog=backlog,
                    oldest=oldest,
                    consumers=len(member.listeners) + len({b.consumer for b in member.batches}),
                )
            )
        return out

    def park_stalled(self, member_id: str, older_than: float) -> int:
        """Dead-letter (reason ``stalled``) the queued deliveries of ``member_id`` committed
        before ``older_than``; what is in flight keeps its ack timeout. Returns how many."""
        member = self._members.get(member_id)
        if member is None:
            return 0
        parked = 0
        for lane in member.lanes:
            old = [m for m in lane if m.created_at < older_than]
            if not old:
                continue
            lane[:] = [m for m in lane if m.created_at >= older_than]
            member.queued -= len(old)
            for m in old:
                if m.seq:
                    self._dead_letter(member, m, member.retries.get(m.id, 0), "stalled")
                    parked += 1
        if parked:
            self._after_room(member)
        return parked

    def _after_room(self, member: MemberState) -> None:
        if member.lagging:
            self._refill(member)
        if member.queued and member.listeners:
            member.wake()  # a consumer whose window was full may take more now
        if member.room_waiters:
            member.wake_room()

    def _settle_dropped(self, member: MemberState, m: Message) -> None:
        member.retries.pop(m.id, None)
        cur = member.cursors.get(m.channel)
        if cur is not None and cur.durable and m.seq:
            cur.settle(m.seq)

    def _dead_letter(
        self, member: MemberState, m: Message, attempts: int, reason: FailReason
    ) -> None:
        self._settle_dropped(member, m)
        if self._closed:
            return
        self._observer.on_dead_letter(member.id, m, attempts, reason)
        letter = dead_letter_message(member.id, m, attempts, reason, self._clock.time())
        self._spawn(self.publish([letter], self.settings.publish_timeout))


def dead_letter_message(
    member: str, m: Message, attempts: int, reason: FailReason, now: float
) -> Message:
    """The ``$dlq`` message recording that ``member`` gave up on ``m`` (every bus writes it)."""
    body = DeadLetter(member=member, message=m, reason=reason, attempts=attempts, dead_at=now)
    return Message(
        id=new_id(),
        channel=DLQ_CHANNEL,
        sender=HUB_SENDER,
        kind="system",
        body=msgspec.to_builtins(body),
        priority=m.priority,
        created_at=now,
    )
