"""How a NATS hub node delivers: it reads the channel log once and serves its own members.

``NatsDelivery`` is a mixin of :class:`fleetchat.backends.nats_bus.NatsBus`.

- **The feed.** Each node reads ``<P>_CHAT`` in stream order through one ordered push consumer,
  from where the stream stood when the node started. A message goes straight into the queue of
  every member connected here whose cursor is up to date in that channel, as the embedded bus
  does after a commit. Nothing is copied per member: the cost of a delivery is in memory.
- **Page-in.** A member whose cursor is behind (it just connected, or its queue was full) has
  its backlog read from the stream with a short-lived consumer on the channel's subject, as far
  as its room allows, until it has caught up with the feed.
- Acks, retries and dead letters are the embedded bus's own (``Consuming``); the members
  connected here, their cursors and their saves are ``nats_attach.py``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_member import MemberState
from fleetchat.backends.nats_layout import Layout
from fleetchat.backends.nats_member import GapCursor, NatsMemberState
from fleetchat.models import Channel, Message
from fleetchat.types import PRIORITY_RANK

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

__all__ = ["NatsDelivery"]

log = logging.getLogger(__name__)

_decode_message = msgspec.json.Decoder(Message).decode
_PAGE = 512
_FEED_HEARTBEAT = 1.0  # a feed that hears nothing for two of these is recreated


class NatsDelivery:
    """The feed, page-in, cursors and member ownership of a NATS hub node."""

    layout: Layout
    _closed: bool
    _channels: dict[str, Channel]
    _members: dict[str, MemberState]
    _resume: dict[str, dict[str, int]]

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
