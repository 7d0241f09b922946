"""LocalBus: the embedded Bus. In-process fan-out over a durable ChannelLog.

A publish is appended to the channel's log and, once committed, pushed into each member's
queue (a direct push while the member keeps up; when its queue is full the member "lags" and the
rest is paged in from the log as it acks). Consumers fetch batches of one priority; a batch's
ack timer fails what is still open, which is retried with backoff and finally dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from functools import partial
from typing import Any

import msgspec

from fleetchat.backends.local_member import Batch, Cursor, MemberState
from fleetchat.backends.memory import MemoryLog
from fleetchat.backends.ports import ChannelLog, CursorRecord, DeliveryObserver
from fleetchat.config import ChatSettings, StorageSettings
from fleetchat.errors import (
    BackpressureError,
    ChannelExistsError,
    ChannelNotFoundError,
    ClosedError,
    FleetchatError,
)
from fleetchat.models import Channel, DeadLetter, FailReason, Message
from fleetchat.types import PRIORITIES, PRIORITY_RANK, Clock, new_id

__all__ = ["DLQ_CHANNEL", "HUB_SENDER", "Batch", "LocalBus"]

log = logging.getLogger(__name__)

DLQ_CHANNEL = "$dlq"
HUB_SENDER = "$hub"
_READ_PAGE = 512


class _ChannelState:
    __slots__ = ("committed", "log", "member_list", "members", "next_seq", "spec", "swept_seq")

    def __init__(self, spec: Channel, log: ChannelLog | MemoryLog) -> None:
        self.spec = spec
        self.log = log
        self.committed = spec.last_seq
        self.next_seq = spec.last_seq + 1
        self.swept_seq = 0
        self.members: dict[str, Cursor] = {}
        self.member_list: list[tuple[MemberState, Cursor]] = []

    def rebuild(self, members: dict[str, MemberState]) -> None:
        self.member_list = [(members[m], c) for m, c in self.members.items()]


class LocalBus:
    """The in-process Bus over a ChannelLog (memory or SQLite) plus a MemoryLog for ephemerals."""

    def __init__(
        self,
        log: ChannelLog,
        *,
        clock: Clock,
        observer: DeliveryObserver,
        settings: ChatSettings | None = None,
        storage: StorageSettings | None = None,
    ) -> None:
        self.settings = settings or ChatSettings()
        self.storage = storage or StorageSettings()
        self._log = log
        self._eph = MemoryLog(self.settings.ephemeral_retention_count)
        self._clock = clock
        self._observer = observer
        self._channels: dict[str, _ChannelState] = {}
        self._members: dict[str, MemberState] = {}
        self._dirty: list[Cursor] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._log.on_commit = self._on_commit
        self._eph.on_commit = self._on_commit
        await self._log.start()
        for spec in self._log.load_channels():
            if spec.ephemeral:
                spec.last_seq = 0
                await self._eph.save_channel(spec)
            self._channels[spec.name] = _ChannelState(
                spec, self._eph if spec.ephemeral else self._log
            )
        records = {(c.member, c.channel): c for c in self._log.load_cursors()}
        for channel, member_id in self._log.load_members():
            st = self._channels.get(channel)
            if st is None:
                continue
            member = self._member(member_id)
            rec = records.get((member_id, channel))
            durable = not st.spec.ephemeral
            cur = Cursor(
                member_id,
                channel,
                rec.floor if rec and durable else st.committed,
                durable,
                self._dirty,
            )
            if rec and durable:
                cur.above.update(rec.above)
                member.retries.update(rec.retries)
                if cur.floor < st.committed:
                    member.lagging.add(channel)
            st.members[member_id] = cur
            member.cursors[channel] = cur
        for st in self._channels.values():
            st.rebuild(self._members)
        if DLQ_CHANNEL not in self._channels:
            now = self._clock.time()
            await self.create_channel(
                Channel(
                    name=DLQ_CHANNEL,
                    type="system",
                    announce=False,
                    writers=[],
                    created_at=now,
                    last_activity_at=now,
                )
            )
        self._spawn(self._maintain())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flush_cursors()
        for member in self._members.values():
            for batch in member.batches:
                if batch.timer is not None:
                    batch.timer.cancel()
            for fut in list(member.waiters) + member.room_waiters:
                if not fut.done():
                    fut.set_exception(ClosedError("the hub is closed"))
        await self._log.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bus task failed", exc_info=task.exception())

    # -- channels and members -------------------------------------------------------------

    def channels(self) -> list[Channel]:
        return [st.spec for st in self._channels.values()]

    def channel(self, name: str) -> Channel | None:
        st = self._channels.get(name)
        return st.spec if st else None

    def _state(self, name: str) -> _ChannelState:
        st = self._channels.get(name)
        if st is None:
            raise ChannelNotFoundError(f"no channel {name!r}", channel=name)
        return st

    def members(self, channel: str) -> list[str]:
        return list(self._state(channel).members)

    def is_member(self, channel: str, member: str) -> bool:
        return member in self._state(channel).members

    def memberships(self, member: str) -> list[str]:
        state = self._members.get(member)
        return list(state.cursors) if state else []

    def _member(self, member_id: str) -> MemberState:
        member = self._members.get(member_id)
        if member is None:
            member = self._members[member_id] = MemberState(
                member_id, self.settings.member_queue_limit
            )
        return member

    async def create_channel(self, channel: Channel) -> Channel:
        if channel.name in self._channels:
            raise ChannelExistsError(f"channel {channel.name!r} exists", channel=channel.name)
        store = self._eph if channel.ephemeral else self._log
        st = self._channels[channel.name] = _ChannelState(channel, store)
        try:
            if channel.ephemeral:
                await self._eph.save_channel(channel)
            await self._log.save_channel(channel)
        except BaseException:
            del self._channels[channel.name]
            raise
        return st.spec

    async def delete_channel(self, name: str) -> None:
        st = self._state(name)
        del self._channels[name]
        for member_id in st.members:
            member = self._members[member_id]
            member.cursors.pop(name, None)
            member.lagging.discard(name)
            member.purge(name)
        if st.spec.ephemeral:
            await self._eph.delete_channel(name)
        await self._log.delete_channel(name)

    async def add_member(self, channel: str, member_id: str) -> bool:
        """Make ``member_id`` a member from the next message on. False if it already was."""
        st = self._state(channel)
        if member_id in st.members:
            return False
        member = self._member(member_id)
        durable = not st.spec.ephemeral
        cur = Cursor(member_id, channel, st.next_seq - 1, durable, self._dirty)
        st.members[member_id] = cur
        st.member_list.append((member, cur))
        member.cursors[channel] = cur
        try:
            await self._log.add_member(
                channel, member_id, CursorRecord(member_id, channel, cur.floor)
            )
        except BaseException:
            self._drop_member(st, member, channel)
            raise
        return True

    async def remove_member(self, channel: str, member_id: str) -> bool:
        st = self._state(channel)
        member = self._members.get(member_id)
        if member_id not in st.members or member is None:
            return False
        self._drop_member(st, member, channel)
        await self._log.remove_member(channel, member_id)
        return True

    def _drop_member(self, st: _ChannelState, member: MemberState, channel: str) -> None:
        cur = st.members.pop(member.id, None)
        if cur is not None:
            st.member_list.remove((member, cur))
        member.cursors.pop(channel, None)
        member.lagging.discard(channel)
        member.purge(channel)

    # -- publish and fan-out --------------------------------------------------------------

    async def publish(self, messages: list[Message], timeout: float) -> list[Message]:
        """Assign seqs, commit, fan out. Returns once committed (durable) or queued (ephemeral)."""
        if self._closed:
            raise ClosedError("the hub is closed")
        durable: list[Message] = []
        ephemeral: list[Message] = []
        for m in messages:
            st = self._state(m.channel)
            if st.spec.overflow == "block":
                await self._wait_for_room(st, m.sender, timeout)
            m.seq = st.next_seq
            st.next_seq += 1
            (ephemeral if st.spec.ephemeral else durable).append(m)
        if ephemeral:
            self._eph.append_now(ephemeral)
        if durable:
            try:
                await self._log.append(durable, timeout)
            except FleetchatError:
                # Nothing was written (no room, or the commit failed): give back the seqs if
                # nothing was assigned after them; otherwise the gap is skipped by readers.
                # A cancelled caller gives back nothing: its rows are queued and will commit.
                for m in reversed(durable):
                    state = self._channels.get(m.channel)
                    if state is not None and state.next_seq == m.seq + 1:
                        state.next_seq = m.seq
                raise
        return messages

    async def _wait_for_room(self, st: _ChannelState, sender: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._clock.monotonic() + timeout
        while True:
            full = [m for m, _ in st.member_list if m.id != sender and m.room <= 0]
            if not full:
                return
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise BackpressureError(
                    f"member {full[0].id!r} of {st.spec.name!r} has a full queue",
                    channel=st.spec.name,
                    member=full[0].id,
                )
            fut: asyncio.Future[None] = loop.create_future()
            full[0].room_waiters.append(fut)
            timer = self._clock.call_later(remaining, partial(_resolve, fut))
            try:
                await fut
            finally:
                timer.cancel()

    def _on_commit(self, messages: list[Message]) -> None:
        channels = self._channels
        for m in messages:
            st = channels.get(m.channel)
            if st is None:
                continue
            seq = m.seq
            st.committed = seq
            spec = st.spec
            spec.last_seq = seq
            spec.last_activity_at = m.created_at
            rank = PRIORITY_RANK[m.priority]
            prev = seq - 1
            sender = m.sender
            for member, cur in st.member_list:
                if cur.fetched != prev:
                    continue  # lagging: the refill pages it in from the log
                if member.id == sender:
                    cur.fetched = seq
                    if cur.durable:
                        cur.settle(seq)
                elif member.queued + member.inflight + member.delayed >= member.limit:
                    member.lagging.add(m.channel)
                else:
                    cur.fetched = seq
                    member.lanes[rank].append(m)
                    member.queued += 1
                    if member.waiters:
                        member.wake()
        self._observer.on_published(messages)

    def send_transient(self, message: Message, members: Sequence[str]) -> int:
        """Queue a request or reply (never stored, never retried) to ``members``."""
        rank = PRIORITY_RANK[message.priority]
        sent = 0
        for member_id in members:
            if member_id == message.sender:
                continue
            self._member(member_id).push(rank, message)
            sent += 1
        return sent

    # -- consuming ------------------------------------------------------------------------

    async def fetch(
        self, member_id: str, consumer: int, max_items: int, timeout: float | None
    ) -> Batch | None:
        """Next batch for ``member_id``, waiting up to ``timeout`` seconds (None: forever)."""
        member = self._member(member_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        while True:
            if self._closed:
                raise ClosedError("the hub is closed")
            if member.lagging:
                self._refill(member)
            if member.queued:
                batch = self._make_batch(member, consumer, max_items)
                if batch is not None:
                    return batch
                continue
            remaining = None if deadline is None else deadline - self._clock.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            fut: asyncio.Future[None] = loop.create_future()
            member.waiters.append(fut)
            member.consumer_waits[consumer] = fut
            timer = (
                None
                if remaining is None
                else self._clock.call_later(remaining, partial(_resolve, fut))
            )
            try:
                await fut
            finally:
                member.consumer_waits.pop(consumer, None)
                if timer is not None:
                    timer.cancel()

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
            member.batches.add(batch)
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
        batch.member.batches.discard(batch)

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
        for m in reversed(msgs):
            cur = member.cursors.get(m.channel)
            if cur is None or (cur.durable and cur.is_settled(m.seq)):
                continue  # left the channel, or settled meanwhile
            member.lanes[PRIORITY_RANK[m.priority]].appendleft(m)
            member.queued += 1
        member.wake()

    def settle_through(self, member_id: str, channel: str, seq: int) -> int:
        """The member says it processed everything of ``channel`` up to ``seq``: settle those
        (a client-held cursor, sent on reconnect). Returns how many were newly settled."""
        member = self._members.get(member_id)
        st = self._channels.get(channel)
        cur = member.cursors.get(channel) if member else None
        if member is None or st is None or cur is None or not cur.durable:
            return 0
        upto = min(seq, st.committed)
        settled = 0
        for s in range(cur.floor + 1, upto + 1):
            if not cur.is_settled(s):
                cur.settle(s)
                settled += 1
        if settled:
            for lane in member.lanes:
                keep = [m for m in lane if m.channel != channel or m.seq > upto]
                member.queued -= len(lane) - len(keep)
                lane.clear()
                lane.extend(keep)
            cur.fetched = max(cur.fetched, upto)
        return settled

    def detach(self, member_id: str, consumer: int) -> None:
        """A consumer went away: its open deliveries go back to the queue, attempts unchanged."""
        member = self._members.get(member_id)
        if member is None:
            return
        waiting = member.consumer_waits.pop(consumer, None)
        if waiting is not None and not waiting.done():
            waiting.set_exception(ClosedError("the subscription is closed"))
        returned: list[Message] = []
        for batch in [b for b in member.batches if b.consumer == consumer]:
            returned.extend(m for m, o in zip(batch.items, batch.open, strict=True) if o)
            batch.open = [False] * len(batch.items)
            member.inflight -= batch.pending
            batch.pending = 0
            self._finish(batch)
        # Back in the order they were committed, ahead of everything still queued.
        returned.sort(key=lambda m: (m.created_at, m.seq))
        self._requeue(member, returned, False)

    def _after_room(self, member: MemberState) -> None:
        if member.lagging:
            self._refill(member)
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
        now = self._clock.time()
        body = DeadLetter(
            member=member.id, message=m, reason=reason, attempts=attempts, dead_at=now
        )
        letter = Message(
            id=new_id(),
            channel=DLQ_CHANNEL,
            sender=HUB_SENDER,
            kind="system",
            body=msgspec.to_builtins(body),
            priority=m.priority,
            created_at=now,
        )
        self._spawn(self.publish([letter], self.settings.publish_timeout))

    def _refill(self, member: MemberState) -> None:
        """Page a lagging member's backlog in from the logs, as far as its room allows."""
        for name in list(member.lagging):
            st = self._channels.get(name)
            cur = member.cursors.get(name)
            if st is None or cur is None:
                member.lagging.discard(name)
                continue
            while cur.fetched < st.committed:
                room = member.room
                if room <= 0:
                    return
                msgs = st.log.read(name, cur.fetched, min(room, _READ_PAGE))
                if not msgs:
                    self._skip(member, cur, st.committed)
                    break
                for m in msgs:
                    if m.seq > st.committed:
                        break
                    if m.seq > cur.fetched + 1:
                        self._skip(member, cur, m.seq - 1)
                    cur.fetched = m.seq
                    if cur.durable and cur.is_settled(m.seq):
                        continue
                    if m.sender == member.id:
                        if cur.durable:
                            cur.settle(m.seq)
                        continue
                    member.push(PRIORITY_RANK[m.priority], m)
            member.lagging.discard(name)

    def _skip(self, member: MemberState, cur: Cursor, upto: int) -> None:
        """Seqs up to ``upto`` are gone from the log (retention): count them and move on."""
        lost = sum(1 for s in range(cur.fetched + 1, upto + 1) if not cur.is_settled(s))
        for s in range(cur.fetched + 1, upto + 1):
            if cur.durable:
                cur.settle(s)
        cur.fetched = max(cur.fetched, upto)
        if lost:
            self._observer.on_dropped(member.id, cur.channel, lost)

    # -- history and maintenance ----------------------------------------------------------

    def history(
        self,
        channel: str,
        *,
        start_seq: int | None = None,
        end_seq: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[Message]:
        st = self._state(channel)
        return st.log.history(
            channel, start_seq=start_seq, end_seq=end_seq, since=since, until=until, limit=limit
        )

    async def purge(self, channel: str) -> int:
        """Delete every message of ``channel`` (its seq numbers go on from where they were)."""
        st = self._state(channel)
        return await st.log.trim(channel, keep=0, older_than=None)

    def _flush_cursors(self) -> None:
        dirty, self._dirty[:] = list(self._dirty), []
        records = []
        for cur in dirty:
            cur.dirty = False
            member = self._members.get(cur.member)
            if member is None or member.cursors.get(cur.channel) is not cur:
                continue
            retries = {k: v for k, v in member.retries.items()} if member.retries else {}
            records.append(cur.record(retries))
        if records:
            self._log.save_cursors(records)

    async def sweep(self) -> None:
        """Apply every channel's retention (count and age) once."""
        now = self._clock.time()
        for st in list(self._channels.values()):
            spec = st.spec
            keep = spec.retention_count or (
                self.settings.ephemeral_retention_count
                if spec.ephemeral
                else self.settings.retention_count
            )
            age = spec.retention_age or self.settings.retention_age
            if st.committed - st.swept_seq <= keep and age is None:
                continue
            st.swept_seq = st.committed
            await st.log.trim(spec.name, keep=keep, older_than=None if age is None else now - age)

    async def _maintain(self) -> None:
        last_sweep = self._clock.monotonic()
        while True:
            await self._clock.sleep(self.storage.cursor_flush_interval)
            try:
                self._flush_cursors()
                if self._clock.monotonic() - last_sweep >= self.storage.maintenance_interval:
                    last_sweep = self._clock.monotonic()
                    await self.sweep()
            except Exception:
                log.exception("bus maintenance failed; will retry")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
