"""The consuming half of the NatsBus: a member's deliveries on the node that holds it.

A member is *attached* to a node while a consumer of it (an agent's connection, an embedded
subscription) is there. The node then listens on the member's inbox subjects (a copy stored
in ``<P>_INBOX`` also reaches core subscribers: that is the wake-up), pulls the member's four
lane consumers highest lane first into the same bounded, priority-ordered ``MemberState`` the
embedded bus uses, and hands out batches. Acks go to JetStream; a failed attempt is a NAK with
the backoff as its delay; the attempt count is JetStream's ``num_delivered``, so it survives
the node. When the last consumer leaves, everything held is handed back at once (NAK without
delay), so another node can take the member over without waiting for the ack timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_member import Batch, MemberState
from fleetchat.backends.nats_layout import LANES
from fleetchat.models import Message
from fleetchat.types import PRIORITIES, PRIORITY_RANK

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from fleetchat.backends.nats_bus import NatsBus

__all__ = ["NatsBatch", "NatsMember"]

log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder(Message).decode
_PULL_TIMEOUT = 2.0
ALL_LANES = tuple(range(LANES))  # a no-wait pull answers at once; this only guards a lost answer


class NatsBatch(Batch):
    """A Batch whose durable items carry the JetStream message to ack (None: not stored)."""

    __slots__ = ("msgs",)

    msgs: list[Msg | None]


class NatsMember:
    """One attached member: its queue, the JetStream messages it holds, its pulls."""

    def __init__(self, bus: NatsBus, member_id: str) -> None:
        self.bus = bus
        self.id = member_id
        self.state = MemberState(member_id, bus.settings.member_queue_limit)
        self.held: dict[str, Msg] = {}  # message id -> the JetStream delivery to ack
        self.attempts: dict[str, int] = {}
        self.resume: dict[str, int] = {}  # channel -> seq settled by the agent (hello resume)
        self.consumers: set[int] = set()
        self.subs: list[Subscription] = []
        self.ready = False
        self.pulling = False
        self.again = False
        self.timers: list[asyncio.TimerHandle] = []
        self.wanted: set[int] = set()  # lanes that may hold deliveries not pulled yet
        self.asked = [0] * LANES  # times each lane was asked for: see _pull
        self.unseen = [0] * LANES  # copies signalled and not pulled yet (at most), per lane
        self.tries = [0] * LANES  # short pulls in a row with copies still unseen
        lay = bus.layout
        self._next = [
            lay.next_subject(lay.inbox_stream, lay.lane_consumer(member_id, rank))
            for rank in range(LANES)
        ]
        self._lane_done: asyncio.Future[None] | None = None
        self._lane_want = 0
        self._lane_got = 0
        self._inbox = ""

    # -- attach and release ----------------------------------------------------------------

    async def attach(self) -> None:
        bus = self.bus
        nc, lay = bus.nc, bus.layout
        for rank in range(LANES):
            await bus.ensure_lane_consumer(self.id, rank)
        self._inbox = nc.new_inbox()
        self.subs = [
            await nc.subscribe(self._inbox, cb=self._on_pulled),
            await nc.subscribe(lay.inbox_lanes(self.id), cb=self._on_signal),
            await nc.subscribe(lay.transient(self.id), cb=self._on_transient),
        ]
        self.ready = True
        self.pull_soon()
        bus.spawn(self._watch_orphans())

    async def _watch_orphans(self) -> None:
        """Deliveries a node that went away left unacked come back when their ack timeout
        runs out, with no message on the wake-up subject: while JetStream counts more of this
        member's deliveries unacked than this node holds, look again now and then."""
        bus = self.bus
        js = bus.nc.jetstream()
        stream = bus.layout.inbox_stream
        names = [bus.layout.lane_consumer(self.id, rank) for rank in range(LANES)]
        interval = min(q.ack_timeout for q in bus.settings.qos.values()) / 4
        try:
            while self.ready:
                infos = [await js.consumer_info(stream, name) for name in names]
                if sum(i.num_ack_pending for i in infos) <= len(self.held):
                    return
                await asyncio.sleep(min(interval, 1.0))
                self.pull_soon()
        except Exception:
            log.debug("watching for orphaned deliveries stopped", exc_info=True)

    async def release(self) -> None:
        """The last consumer left: hand back what is held, stop listening."""
        self.ready = False
        for timer in self.timers:
            timer.cancel()
        for batch in list(self.state.batches):
            if batch.timer is not None:
                batch.timer.cancel()
        held, self.held = self.held, {}
        for msg in held.values():
            self.bus.reply_soon(msg.reply, b"-NAK")
        for sub in self.subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone; nothing to undo
                log.debug("unsubscribe failed", exc_info=True)
        self.subs = []

    # -- pulling ---------------------------------------------------------------------------

    def pull_soon(self, lanes: Iterable[int] = ALL_LANES) -> None:
        """Pull ``lanes`` (all by default) soon; a lane stays wanted until a pull of it came
        back short (everything it had is here) or there was no room to take more."""
        if not self.ready:
            return
        for rank in lanes:
            self.wanted.add(rank)
            self.asked[rank] += 1
        if not self.wanted:
            return
        if self.pulling:
            self.again = True
            return
        self.pulling = True
        self.bus.spawn(self._pull())

    async def _pull(self) -> None:
        try:
            while self.ready:
                self.again = False
                for rank in sorted(self.wanted):  # highest priority first
                    room = self.state.room
                    if room <= 0:
                        break  # the rest stays wanted: pulled when acks make room
                    batch = min(room, 256)
                    asked = self.asked[rank]
                    got = await self._pull_lane(rank, batch)
                    self.unseen[rank] = max(self.unseen[rank] - got, 0)
                    # Came back short: the lane is drained, unless it was asked for again
                    # meanwhile (a copy stored after the server answered).
                    if got < batch and self.asked[rank] == asked:
                        self.wanted.discard(rank)
                        if self.unseen[rank]:
                            self._look_again(rank)
                        else:
                            self.tries[rank] = 0
                if self.state.queued and self.state.listeners:
                    self.state.wake()
                if not self.again:
                    return
        except Exception:
            log.exception("pulling deliveries failed", extra={"member": self.id})
        finally:
            self.pulling = False

    async def _pull_lane(self, rank: int, batch: int) -> int:
        """One no-wait pull of lane ``rank``; how many deliveries it brought."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lane_done, self._lane_want, self._lane_got = fut, batch, 0
        payload = b'{"batch":%d,"no_wait":true}' % batch
        await self.bus.nc.publish(self._next[rank], payload, reply=self._inbox)
        try:
            async with asyncio.timeout(_PULL_TIMEOUT):
                await fut
        except TimeoutError:
            log.debug("no answer to a pull", extra={"member": self.id, "lane": rank})
        finally:
            self._lane_done = None
        return self._lane_got

    def _look_again(self, rank: int) -> None:
        """More copies were signalled on this lane than its pulls brought: the wake-up (core
        NATS) can arrive before JetStream has stored the copy. Pull the lane again after 5, 20
        and 80 ms, then let the count go (a copy deduped by its message id is signalled but
        never stored)."""
        tries = self.tries[rank]
        if tries >= 3:
            self.unseen[rank] = self.tries[rank] = 0
            return
        self.tries[rank] = tries + 1
        again = partial(self.pull_soon, (rank,))
        self.timers.append(asyncio.get_running_loop().call_later(0.005 * 4**tries, again))

    async def _on_pulled(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and "Status" in headers:  # 404 no messages, 408 batch not filled: done
            self._finish_lane()
            return
        self._take(msg)
        self._lane_got += 1
        if self._lane_got >= self._lane_want:
            self._finish_lane()

    def _finish_lane(self) -> None:
        fut = self._lane_done
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _on_signal(self, msg: Msg) -> None:
        # A copy was stored in lane <rank> (the last subject token): pull that lane.
        rank = int(msg.subject[-1])
        self.unseen[rank] += 1
        self.pull_soon((rank,))

    async def _on_transient(self, msg: Msg) -> None:
        m = _decode(msg.data)
        self.state.push(PRIORITY_RANK[m.priority], m)

    def _take(self, msg: Msg) -> None:
        """A delivery pulled from JetStream: into the queue, or settled here and now."""
        bus = self.bus
        m = _decode(msg.data)
        attempt = msg.metadata.num_delivered
        qos = bus.settings.qos[m.priority]
        if not self.ready:
            bus.reply_soon(msg.reply, b"-NAK")
            return
        if m.id in self.held:  # redelivered while still queued here: keep the newer handle
            self.held[m.id] = msg
            return
        if not bus.is_member(m.channel, self.id) or m.seq <= self.resume.get(m.channel, 0):
            bus.reply_soon(msg.reply, b"+ACK")  # left the channel, or settled on resume
            return
        if m.expires_at is not None and m.expires_at <= bus.clock.time():
            bus.reply_soon(msg.reply, b"+ACK")
            bus.observer.on_expired(self.id, m)
            return
        if attempt > qos.max_attempts:
            # Its earlier attempts ran out on a node that went away: dead-letter it now.
            bus.dead_letter(self.id, m, attempt - 1, "ack_timeout")
            bus.reply_soon(msg.reply, b"+TERM")
            return
        self.held[m.id] = msg
        self.attempts[m.id] = attempt
        self.state.lanes[PRIORITY_RANK[m.priority]].append(m)
        self.state.queued += 1

    # -- handing out and settling ------------------------------------------------------------

    def make_batch(self, consumer: int, max_items: int) -> NatsBatch | None:
        state = self.state
        while state.queued:
            rank, items = state.take(max_items)
            now = self.bus.clock.time()
            live = []
            for m in items:
                if m.expires_at is not None and m.expires_at <= now:
                    self._settle(m, b"+ACK")
                    self.bus.observer.on_expired(self.id, m)
                else:
                    live.append(m)
            if not live:
                continue
            attempts = [self.attempts.get(m.id, 1) for m in live]
            qos = self.bus.settings.qos[PRIORITIES[rank]]
            batch = NatsBatch(state, consumer, live, attempts, qos)
            batch.msgs = [self.held.get(m.id) for m in live]
            if batch.pending:
                state.inflight += batch.pending
                state.batches[batch] = None
                batch.timer = self.bus.clock.call_later(
                    qos.ack_timeout, partial(self.fail, batch, None, "ack_timeout")
                )
            return batch
        return None

    def _settle(self, m: Message, reply: bytes) -> None:
        self.attempts.pop(m.id, None)
        msg = self.held.pop(m.id, None)
        if msg is not None:
            self.bus.reply_soon(msg.reply, reply)

    def ack(self, batch: NatsBatch, index: int | None) -> int:
        idxs = [i for i, o in enumerate(batch.open) if o and (index is None or i == index)]
        if not idxs:
            return 0
        acked = []
        for i in idxs:
            batch.open[i] = False
            m = batch.items[i]
            self._settle(m, b"+ACK")
            acked.append(m)
        self._done(batch, len(idxs))
        attempts = [batch.attempts[i] for i in idxs]
        self.bus.observer.on_acked(self.id, acked, attempts, self.bus.clock.time())
        return len(idxs)

    def fail(
        self,
        batch: NatsBatch,
        index: int | None,
        reason: Any,
        *,
        delay: float | None = None,
        dead: bool = False,
    ) -> int:
        """A failed attempt: retried after the backoff (a NAK with that delay), or, when the
        budget is spent or ``dead``, dead-lettered (TERM)."""
        if batch.timer is not None and index is None:
            batch.timer.cancel()
            batch.timer = None
        idxs = [i for i, o in enumerate(batch.open) if o and (index is None or i == index)]
        bus = self.bus
        for i in idxs:
            batch.open[i] = False
            m, attempt = batch.items[i], batch.attempts[i]
            qos = bus.settings.qos[m.priority]
            if dead or attempt >= qos.max_attempts:
                bus.dead_letter(self.id, m, attempt, reason)
                self._settle(m, b"+TERM")
                continue
            wait = qos.backoff(attempt) if delay is None else delay
            bus.observer.on_retry(self.id, m, attempt + 1, reason)
            msg = self.held.pop(m.id, None)
            if msg is not None:
                nak = json.dumps({"delay": int(wait * 1e9)}).encode()
                bus.reply_soon(msg.reply, b"-NAK " + nak)
                # A redelivery does not reach the wake-up subject: look again after the delay.
                again = partial(self.pull_soon, (PRIORITY_RANK[m.priority],))
                self.timers.append(bus.clock.call_later(wait + 0.01, again))  # type: ignore[arg-type]
            else:  # not stored (ephemeral): retried here
                self.attempts[m.id] = attempt + 1
                retry = partial(self.state.push, PRIORITY_RANK[m.priority], m)
                self.timers.append(bus.clock.call_later(wait, retry))  # type: ignore[arg-type]
        self._done(batch, len(idxs))
        return len(idxs)

    def _done(self, batch: NatsBatch, n: int) -> None:
        batch.pending -= n
        self.state.inflight -= n
        if batch.pending == 0:
            if batch.timer is not None:
                batch.timer.cancel()
                batch.timer = None
            self.state.batches.pop(batch, None)
        # Room again: lanes that had more than there was room for are pulled now.
        self.pull_soon(())

    def detach(self, consumer: int) -> None:
        """A consumer went away: its open deliveries go back to the front of the queue."""
        state = self.state
        state.listeners.pop(consumer, None)
        self.consumers.discard(consumer)
        back = state.withdraw(consumer)
        state.put_front(sorted(back, key=lambda m: (m.created_at, m.seq)))

    def settle_through(self, channel: str, seq: int) -> int:
        self.resume[channel] = max(self.resume.get(channel, 0), seq)
        settled = 0
        for lane in self.state.lanes:
            keep = []
            for m in lane:
                if m.channel == channel and 0 < m.seq <= seq:
                    self._settle(m, b"+ACK")
                    settled += 1
                else:
                    keep.append(m)
            lane[:] = keep
        self.state.queued -= settled
        return settled
