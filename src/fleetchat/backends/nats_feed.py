"""How a NATS hub node delivers: it reads the channel log once and serves its own members.

``NatsDelivery`` is a mixin of :class:`fleetchat.backends.nats_bus.NatsBus`.

- **The feed.** Each node reads ``<P>_CHAT`` in stream order through one ordered push consumer,
  from where the stream stood when the node started. A message goes straight into the queue of
  every member connected here whose cursor is up to date in that channel, as the embedded bus
  does after a commit. Nothing is copied per member: the cost of a delivery is in memory.
- **Page-in.** A member whose cursor is behind (it just connected, or its queue was full) has
  its backlog read from the stream with a short-lived consumer on the channel's subject, as far
  as its room allows, until it has caught up with the feed.
- **Cursors.** Acks, retries and dead letters are handled here (``Consuming``); what a member
  settled is saved to the KV bucket ``<p>_cursors``, one entry per member, every
  ``flush_interval`` and when it leaves the node. A node that takes a member over loads it and
  redelivers whatever was not saved as settled: at least once, never lost.
- **One node per member.** A node that gets a member's first consumer asks on ``<p>.own.<m>``
  whether another node has it; that node saves the member's cursors and lets go before this one
  loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_member import Cursor, MemberState
from fleetchat.backends.nats_layout import Layout, key_token
from fleetchat.backends.nats_member import GapCursor, NatsMemberState
from fleetchat.backends.ports import CursorRecord
from fleetchat.config import ChatSettings
from fleetchat.errors import ClosedError
from fleetchat.models import Channel, Message
from fleetchat.types import PRIORITY_RANK, Clock

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

__all__ = ["NatsDelivery"]

log = logging.getLogger(__name__)

_decode_message = msgspec.json.Decoder(Message).decode
_encode = msgspec.json.Encoder().encode
_decode_records = msgspec.json.Decoder(list[CursorRecord]).decode
_PAGE = 512
_CLAIM_TIMEOUT = 1.0  # how long a node taking a member over waits for the one that had it
_FEED_HEARTBEAT = 1.0  # a feed that hears nothing for two of these is recreated


class NatsDelivery:
    """The feed, page-in, cursors and member ownership of a NATS hub node."""

    settings: ChatSettings
    layout: Layout
    node_id: str
    flush_interval: float
    _clock: Clock
    _closed: bool
    _channels: dict[str, Channel]
    _memberships: dict[str, set[str]]
    _members: dict[str, MemberState]
    _dirty: list[Cursor]
    _kv_cursors: KeyValue | None
    _resume: dict[str, dict[str, int]]
    _join_floors: dict[tuple[str, str], int]  # (channel, member) -> the seq it joined after
    _moved: dict[str, dict[int, None]]

    if TYPE_CHECKING:

        @property
        def nc(self) -> NatsClient: ...

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        async def _read_after(
            self, channel: str, after: int, limit: int | None
        ) -> tuple[list[Message], bool]: ...

    def _init_delivery(self) -> None:
        self._feed_start = 0
        self._feed_pos = 0  # the newest stream seq the feed has handed out
        self._feed_last: dict[str, int] = {}  # channel -> its newest seq the feed has seen
        self._local: dict[str, list[tuple[NatsMemberState, GapCursor]]] = {}
        self._feed_sub: Any = None

    # -- the feed ---------------------------------------------------------------------------

    async def _start_feed(self) -> None:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = self.nc.jetstream()
        info = await js.stream_info(self.layout.chat_stream)
        self._feed_start = self._feed_pos = info.state.last_seq
        self._feed_sub = await js.subscribe(
            self.layout.chat_all,
            stream=self.layout.chat_stream,
            ordered_consumer=True,
            idle_heartbeat=_FEED_HEARTBEAT,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._feed_start + 1,
            ),
            cb=self._on_feed,
        )

    def _last_seen(self, channel: str) -> int:
        """The newest seq of ``channel`` the feed has seen (its start if none yet): a cursor
        that has read this far gets the channel's next messages straight from the feed."""
        return self._feed_last.get(channel, self._feed_start)

    async def _on_feed(self, msg: Msg) -> None:
        m = _decode_message(msg.data)
        seq = m.seq = msg.metadata.sequence.stream
        channel = m.channel
        prev = self._feed_last.get(channel, self._feed_start)
        self._feed_last[channel] = self._feed_pos = seq
        spec = self._channels.get(channel)
        if spec is not None:
            spec.last_seq = max(spec.last_seq, seq)
            spec.last_activity_at = m.created_at
        rank = PRIORITY_RANK[m.priority]
        for member, cur in self._local.get(channel, ()):
            if cur.fetched >= seq:
                continue  # paged in already
            if cur.fetched < prev or not member.ready:
                member.lagging[channel] = None  # behind: its page-in reads this too
            elif member.id == m.sender or cur.is_settled(seq):
                cur.take(seq, settled=True)
            elif member.queued + member.inflight + member.delayed >= member.limit:
                member.lagging[channel] = None
            else:
                cur.take(seq, settled=False)
                member.lanes[rank].append(m)
                member.queued += 1
                if member.queued == 1 and member.listeners:
                    member.wake()

    # -- page-in ----------------------------------------------------------------------------

    def _refill(self, member: MemberState) -> None:
        if isinstance(member, NatsMemberState) and member.ready and not member.paging:
            member.paging = True
            self._spawn(self._page_in(member))

    async def _page_in(self, member: NatsMemberState) -> None:
        """Read the backlog of ``member``'s lagging channels from the stream until each has
        caught up with the feed or the member's queue is full."""
        try:
            while member.lagging and member.room > 0 and member.ready and not self._closed:
                channel = next(iter(member.lagging))
                cur = member.gap_cursor(channel)
                if cur is None or not cur.durable:
                    member.lagging.pop(channel, None)
                    continue
                target = self._last_seen(channel)
                if cur.fetched >= target:
                    member.lagging.pop(channel, None)
                    continue
                msgs, drained = await self._read_after(
                    channel, cur.fetched, min(member.room, _PAGE)
                )
                if member.gap_cursor(channel) is not cur:
                    continue  # left the channel meanwhile
                for m in msgs:
                    if m.seq <= cur.fetched:
                        continue
                    if m.sender == member.id or cur.is_settled(m.seq):
                        cur.take(m.seq, settled=True)
                    else:
                        cur.take(m.seq, settled=False)
                        member.lanes[PRIORITY_RANK[m.priority]].append(m)
                        member.queued += 1
                if drained:
                    cur.skip_to(target)
                if member.queued and member.listeners:
                    member.wake()
        except Exception:
            if not self._closed:
                log.warning("page-in failed; retried on the next poll", exc_info=True)
        finally:
            member.paging = False

    # -- members connected here ------------------------------------------------------------

    def _member(self, member_id: str) -> NatsMemberState:
        if self._closed:
            raise ClosedError("the hub is closed")
        member = self._members.get(member_id)
        if isinstance(member, NatsMemberState):
            return member
        fresh = NatsMemberState(member_id, self.settings.member_queue_limit)
        self._members[member_id] = fresh
        self._spawn(self._attach(fresh))
        return fresh

    async def _attach(self, member: NatsMemberState) -> None:
        """Take ``member`` over from the node that had it, load its cursors, start delivering."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        nc = self.nc
        try:
            with contextlib.suppress(NoRespondersError, NatsTimeout):
                await nc.request(
                    self.layout.owner(member.id), self.node_id.encode(), timeout=_CLAIM_TIMEOUT
                )
            if self._members.get(member.id) is not member:
                return  # let go of meanwhile
            member.subs = [
                await nc.subscribe(
                    self.layout.transient(member.id),
                    cb=partial(self._on_transient, member),
                ),
                await nc.subscribe(
                    self.layout.owner(member.id), cb=partial(self._on_claim, member)
                ),
            ]
            records = await self._load_records(member.id)
        except Exception:
            log.exception("attaching a member failed", extra={"member": member.id})
            await self._forget(member)
            return
        if self._members.get(member.id) is not member:
            await self._unsubscribe(member)
            return
        marks = self._resume.pop(member.id, {})
        for channel in list(self._memberships.get(member.id, ())):
            self._add_cursor(member, channel, records.get(channel), marks.get(channel, 0))
        member.ready = True
        self._refill(member)
        if member.listeners:
            member.wake()

    async def _load_records(self, member_id: str) -> dict[str, CursorRecord]:
        assert self._kv_cursors is not None
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._kv_cursors.get(key_token(member_id))
        except KeyNotFoundError:
            return {}
        if entry.value is None:
            return {}
        return {r.channel: r for r in _decode_records(entry.value)}

    def _add_cursor(
        self,
        member: NatsMemberState,
        channel: str,
        record: CursorRecord | None,
        settled_through: int = 0,
    ) -> None:
        spec = self._channels.get(channel)
        if spec is None or channel in member.cursors:
            return
        durable = not spec.ephemeral
        floor = self._join_floors.get((channel, member.id), 0)
        cur = GapCursor(member.id, channel, floor, durable, self._dirty)
        if record is not None and durable and record.floor >= floor:
            cur.floor = cur.fetched = record.floor
            cur.above.update(dict.fromkeys(s for s in record.above if s > record.floor))
            member.retries.update(record.retries)
        if not durable:
            cur.fetched = cur.floor = self._feed_pos
        if settled_through:
            cur.skip_to(min(settled_through, self._feed_pos))
        member.cursors[channel] = cur
        self._local.setdefault(channel, []).append((member, cur))
        if durable and cur.fetched < self._last_seen(channel):
            member.lagging[channel] = None

    def _drop_cursor(self, member: NatsMemberState, channel: str) -> None:
        cur = member.cursors.pop(channel, None)
        member.lagging.pop(channel, None)
        member.purge(channel)
        local = self._local.get(channel)
        if local is not None and isinstance(cur, GapCursor):
            with contextlib.suppress(ValueError):
                local.remove((member, cur))
            if not local:
                del self._local[channel]

    def _membership_changed(self, channel: str, member_id: str, joined: bool) -> None:
        """A membership came or went (from the KV watch or this node)."""
        member = self._members.get(member_id)
        if not isinstance(member, NatsMemberState) or not member.ready:
            return
        if joined:
            self._add_cursor(member, channel, None)
            self._refill(member)
        else:
            self._drop_cursor(member, channel)

    # -- letting go ---------------------------------------------------------------------------

    async def _on_transient(self, member: NatsMemberState, msg: Msg) -> None:
        m = _decode_message(msg.data)
        member.push(PRIORITY_RANK[m.priority], m)

    async def _on_claim(self, member: NatsMemberState, msg: Msg) -> None:
        """``member`` is taken over (by another node, or by a new attach here after this one
        let go): save its cursors, let go, then say so. Its consumers here are closed."""
        if msg.data.decode() != self.node_id and member.consumers:
            self._moved.setdefault(member.id, {}).update(member.consumers)
        await self._release(member)
        with contextlib.suppress(Exception):
            await msg.respond(b"released")

    async def _release(self, member: NatsMemberState) -> None:
        """Stop serving ``member`` here: what it left open goes back to the log (its cursors
        keep it unsettled) and the cursors are saved for the node that serves it next."""
        if member.released is not None:
            await member.released
            return
        member.released = asyncio.get_running_loop().create_future()
        try:
            if self._members.get(member.id) is member:
                del self._members[member.id]
            member.ready = False
            for batch in list(member.batches):
                if batch.timer is not None:
                    batch.timer.cancel()
            member.batches.clear()
            for channel, cur in member.cursors.items():
                local = self._local.get(channel)
                if local is not None and isinstance(cur, GapCursor):
                    with contextlib.suppress(ValueError):
                        local.remove((member, cur))
                    if not local:
                        del self._local[channel]
            listeners = list(member.listeners.values())
            member.listeners.clear()
            for listener in listeners:
                listener()  # waiting fetches wake and find themselves detached
            await self._save(member)
            await self._unsubscribe(member)
            member.cursors.clear()
            member.lagging.clear()
        finally:
            member.released.set_result(None)

    async def _forget(self, member: NatsMemberState) -> None:
        if self._members.get(member.id) is member:
            del self._members[member.id]
        await self._unsubscribe(member)

    async def _unsubscribe(self, member: NatsMemberState) -> None:
        subs, member.subs = member.subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone; nothing to undo
                log.debug("unsubscribe failed", exc_info=True)

    # -- saving cursors -----------------------------------------------------------------------

    async def _save(self, member: MemberState) -> None:
        """Save every durable cursor of ``member`` (one KV entry)."""
        assert self._kv_cursors is not None
        retries = dict(member.retries)
        records = [cur.record(retries) for cur in member.cursors.values() if cur.durable]
        await self._kv_cursors.put(key_token(member.id), _encode(records))

    async def _flush_cursors(self) -> None:
        dirty, self._dirty[:] = list(self._dirty), []
        members: dict[str, MemberState] = {}
        for cur in dirty:
            cur.dirty = False
            member = self._members.get(cur.member)
            if member is not None and member.cursors.get(cur.channel) is cur:
                members[member.id] = member
        if members:
            await asyncio.gather(*(self._save(m) for m in members.values()))

    async def _flush_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.flush_interval)
            try:
                await self._flush_cursors()
            except Exception:
                if not self._closed:
                    log.warning("saving cursors failed; will retry", exc_info=True)

    def settle_through(self, member_id: str, channel: str, seq: int) -> int:
        """The member processed everything of ``channel`` up to ``seq`` (its resume mark)."""
        member = self._members.get(member_id)
        if not isinstance(member, NatsMemberState) or not member.ready:
            # Not connected here (yet): applied when its cursors are loaded.
            marks = self._resume.setdefault(member_id, {})
            marks[channel] = max(marks.get(channel, 0), seq)
            return 0
        cur = member.gap_cursor(channel)
        if cur is None or not cur.durable:
            return 0
        upto = min(seq, self._feed_pos)
        open_ = [s for s in cur.taken if s <= upto and not cur.is_settled(s)]
        for s in open_:
            cur.settle(s)
        for lane in member.lanes:
            keep = [m for m in lane if m.channel != channel or not 0 < m.seq <= upto]
            member.queued -= len(lane) - len(keep)
            lane[:] = keep
        cur.skip_to(upto)
        return len(open_)
