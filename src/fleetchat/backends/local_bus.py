"""LocalBus: the embedded Bus. In-process fan-out over a durable ChannelLog.

A publish is appended to the channel's log and, once committed, pushed into each member's
queue (a direct push while the member keeps up; when its queue is full the member "lags" and the
rest is paged in from the log as it acks). Consumers fetch batches of one priority; a batch's
ack timer fails what is still open, which is retried with backoff and finally dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from fleetchat.backends.local_delivery import DLQ_CHANNEL, HUB_SENDER, Consuming, resolve
from fleetchat.backends.local_member import Batch, Cursor, MemberState
from fleetchat.backends.local_upkeep import Upkeep
from fleetchat.backends.memory import MemoryLog
from fleetchat.backends.ports import ChannelLog, CursorRecord, DeliveryObserver
from fleetchat.background import Background
from fleetchat.config import ChatSettings, StorageSettings
from fleetchat.errors import (
    BackpressureError,
    ChannelExistsError,
    ChannelNotFoundError,
    ClosedError,
    FleetchatError,
)
from fleetchat.models import Channel, Message
from fleetchat.types import PRIORITY_RANK, Clock

__all__ = ["DLQ_CHANNEL", "HUB_SENDER", "Batch", "LocalBus"]

log = logging.getLogger(__name__)


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


class LocalBus(Consuming, Upkeep):
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
        # ``log`` is the channel log here, not the logger.
        self._background = Background(logging.getLogger(__name__), "bus task")
        self._closed = False
        self.on_reply: Callable[[Message], bool] = lambda m: False

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
                cur.above.update(dict.fromkeys(rec.above))
                member.retries.update(rec.retries)
                if cur.floor < st.committed:
                    member.lagging[channel] = None
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
        await self._background.cancel()
        self._flush_cursors()
        for member in self._members.values():
            for batch in member.batches:
                if batch.timer is not None:
                    batch.timer.cancel()
            for fut in member.room_waiters:
                if not fut.done():
                    fut.set_exception(ClosedError("the hub is closed"))
            member.wake()  # consumers look, and find the hub closed
        await self._log.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._background.spawn(coro)

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
            member.lagging.pop(name, None)
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
        member.lagging.pop(channel, None)
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
            timer = self._clock.call_later(remaining, partial(resolve, fut))
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
                    member.lagging[m.channel] = None
                else:
                    cur.fetched = seq
                    member.lanes[rank].append(m)
                    member.queued += 1
                    if member.queued == 1 and member.listeners:
                        # Listeners hear when the queue stops being empty; later messages are
                        # taken by the same wake-up (a consumer polls until nothing is left).
                        member.wake()
        self._observer.on_published(messages)

    def route_reply(self, request: Message, reply: Message) -> bool:
        return False  # one process: every request was made here

    def broadcast(self, topic: str, data: bytes) -> None:
        return None  # one node: nobody else to tell

    def on_broadcast(self, topic: str, handler: Callable[[bytes], None]) -> None:
        return None

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
