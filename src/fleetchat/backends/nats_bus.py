"""NatsBus: the distributed Bus, on NATS JetStream. Any number of hub nodes share one NATS.

- A durable publish is stored in ``<P>_CHAT`` with ``Nats-Msg-Id`` = the message id (a retry
  within two minutes is not stored twice); the stream sequence is the message's ``seq``, so seqs
  grow within a channel but are not consecutive (the stream holds every channel).
- Fan-out runs on one node (the leader, or the only node): it reads ``<P>_CHAT`` in order
  through the durable consumer ``fanout`` and stores one copy per member in ``<P>_INBOX``
  (``Nats-Msg-Id`` = ``<message id>:<member>``, so a fan-out replayed after a crash adds
  nothing), then acks. Copies keep the channel's order because one reader writes them in order.
- Deliveries: see ``nats_member.py``. Ephemeral channels and requests/replies use core NATS
  only and are never stored.
- Channels and memberships are KV entries every node watches, so ``channel()``, ``members()``
  and the other reads are answered from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_delivery import DLQ_CHANNEL, dead_letter_message
from fleetchat.backends.local_member import Batch, wait_for_batch
from fleetchat.backends.nats_channels import NatsChannels
from fleetchat.backends.nats_conn import connect_nats, server_features
from fleetchat.backends.nats_fanout import NatsFanout
from fleetchat.backends.nats_layout import Layout
from fleetchat.backends.nats_member import NatsBatch, NatsMember
from fleetchat.backends.ports import DeliveryObserver
from fleetchat.config import ChatSettings
from fleetchat.errors import (
    BackendUnavailableError,
    ChannelExistsError,
    ClosedError,
)
from fleetchat.models import Channel, Message
from fleetchat.types import PRIORITY_RANK, Clock, new_id

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

__all__ = ["NatsBus"]

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(Message).decode
_decode_channel = msgspec.json.Decoder(Channel).decode
_INBOX_MAX_AGE = 7 * 86_400.0  # a backstop: copies for members that never come back
_DUPLICATE_WINDOW = 120.0
# What a dead leader had taken but not fanned out is taken again after this long.
_FANOUT_ACK_WAIT = 5.0
_REPLY_HEADER = "fc-reply-to"  # on a request: the subject of the node waiting for its reply


class NatsBus(NatsChannels, NatsFanout):
    """The Bus on NATS JetStream. ``url`` may list several servers, comma-separated."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        observer: DeliveryObserver,
        settings: ChatSettings | None = None,
        prefix: str = "fc",
        fanout: bool = True,
    ) -> None:
        self.url = url
        self.settings = settings or ChatSettings()
        self.clock = clock
        self.observer = observer
        self.layout = Layout(prefix)
        self.closed = False
        self._fanout_wanted = fanout
        self._fanout_sub: Any = None
        self._fanout_done: asyncio.Future[None] | None = None
        self._fanout_left = 0
        self._nc: NatsClient | None = None
        self._channels: dict[str, Channel] = {}
        self._members: dict[str, set[str]] = {}
        self._memberships: dict[str, set[str]] = {}
        self._attached: dict[str, NatsMember] = {}
        # Resume marks (hello) for members not attached here yet: member -> channel -> seq.
        self._resume: dict[str, dict[str, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replies: list[tuple[str, bytes]] = []
        self._eph_seq = itertools.count(1)
        self._kv_channels: KeyValue | None = None
        self._kv_members: KeyValue | None = None
        self._watchers: list[Any] = []
        self.features: Any = None
        self.node_id = new_id()
        self._reply_subject = f"{self.layout.prefix}.rep.{self.node_id}"
        self.on_reply: Callable[[Message], bool] = lambda m: False
        self._broadcast_handlers: dict[str, Callable[[bytes], None]] = {}

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise ClosedError("the NATS bus is not started")
        return self._nc

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

        self._nc = await connect_nats(self.url, name="fleetchat-hub")
        self.features = server_features(self._nc)
        js = self._nc.jetstream()
        lay = self.layout
        s = self.settings
        try:
            await self._ensure_stream(
                StreamConfig(
                    name=lay.chat_stream,
                    subjects=[lay.chat_all],
                    max_msgs_per_subject=s.retention_count,
                    max_age=s.retention_age,
                    duplicate_window=_DUPLICATE_WINDOW,
                    allow_direct=True,
                )
            )
            await self._ensure_stream(
                StreamConfig(
                    name=lay.inbox_stream,
                    subjects=[lay.inbox_all],
                    retention=RetentionPolicy.WORK_QUEUE,
                    max_age=_INBOX_MAX_AGE,
                    duplicate_window=_DUPLICATE_WINDOW,
                )
            )
            await js.add_consumer(
                lay.chat_stream,
                ConsumerConfig(
                    durable_name=lay.fanout_consumer,
                    ack_policy="explicit",  # type: ignore[arg-type]
                    ack_wait=_FANOUT_ACK_WAIT,
                    max_ack_pending=10_000,
                    filter_subject=lay.chat_all,
                ),
            )
            self._kv_channels = await js.create_key_value(bucket=lay.channels_bucket, history=1)
            self._kv_members = await js.create_key_value(bucket=lay.members_bucket, history=1)
        except Exception as exc:
            await self._nc.close()
            raise BackendUnavailableError(
                f"NATS JetStream at {self.url} is not usable: {exc}", backend="nats"
            ) from exc
        await self._load_and_watch()
        await self._nc.subscribe(lay.ephemeral_all, cb=self._on_ephemeral)
        await self._nc.subscribe(self._reply_subject, cb=self._on_routed_reply)
        await self._nc.subscribe(f"{lay.prefix}.bc.*.*", cb=self._on_broadcast)
        if DLQ_CHANNEL not in self._channels:
            with contextlib.suppress(ChannelExistsError):
                await self.create_channel(Channel(name=DLQ_CHANNEL, type="system", announce=False))
        if self._fanout_wanted:
            await self.start_fanout()

    async def _ensure_stream(self, config: Any) -> None:
        js = self.nc.jetstream()
        try:
            await js.add_stream(config)
        except Exception:  # exists with another config: bring it up to date
            await js.update_stream(config)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for member in list(self._attached.values()):
            await member.release()
        self._attached.clear()
        for w in self._watchers:
            with contextlib.suppress(Exception):
                await w.stop()
        self._flush_replies()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def reply_soon(self, subject: str | None, payload: bytes) -> None:
        """Send an ack, nak or term; all of one loop turn go out together."""
        if not subject:
            return
        if not self._replies:
            asyncio.get_running_loop().call_soon(self._flush_replies)
        self._replies.append((subject, payload))

    def _flush_replies(self) -> None:
        replies, self._replies = self._replies, []
        if replies and self._nc is not None:
            self.spawn(self._send_replies(replies))

    async def _send_replies(self, replies: list[tuple[str, bytes]]) -> None:
        nc = self.nc
        for subject, payload in replies:
            await nc.publish(subject, payload)

    # -- publish and fan-out --------------------------------------------------------------

    async def publish(self, messages: list[Message], timeout: float) -> list[Message]:
        """Store durable messages (returns once JetStream confirmed them: committed), send
        ephemeral ones to every node."""
        if self.closed:
            raise ClosedError("the hub is closed")
        js = self.nc.jetstream()
        pending = []
        for m in messages:
            spec = self._spec(m.channel)
            if spec.ephemeral:
                m.seq = next(self._eph_seq)
                await self.nc.publish(self.layout.ephemeral(m.channel), _encode(m))
                continue
            pending.append(
                (
                    m,
                    await js.publish_async(
                        self.layout.chat(m.channel), _encode(m), headers={"Nats-Msg-Id": m.id}
                    ),
                )
            )
        try:
            async with asyncio.timeout(timeout):
                for m, fut in pending:
                    ack = await fut
                    m.seq = ack.seq
                    known = self._channels.get(m.channel)
                    if known is not None:
                        known.last_seq = max(known.last_seq, m.seq)
                        known.last_activity_at = m.created_at
        except TimeoutError:
            raise BackendUnavailableError(
                f"NATS JetStream did not confirm the publish within {timeout:g} s",
                backend="nats",
            ) from None
        self.observer.on_published(messages)
        return messages

    async def _on_ephemeral(self, msg: Msg) -> None:
        m = _decode_message(msg.data)
        rank = PRIORITY_RANK[m.priority]
        for member in self._members.get(m.channel, ()):
            nm = self._attached.get(member)
            if nm is not None and member != m.sender and nm.state.room > 0:
                nm.state.push(rank, m)

    def send_transient(self, message: Message, members: Sequence[str]) -> int:
        if message.kind == "request":  # so a reply made on another node finds its way back
            headers = {**message.headers, _REPLY_HEADER: self._reply_subject}
            message = msgspec.structs.replace(message, headers=headers)
        data = _encode(message)
        targets = [m for m in members if m != message.sender]
        for member in targets:
            self.reply_soon(self.layout.transient(member), data)
        return len(targets)

    def route_reply(self, request: Message, reply: Message) -> bool:
        subject = request.headers.get(_REPLY_HEADER)
        if not subject or subject == self._reply_subject:
            return False
        self.reply_soon(subject, _encode(reply))
        return True

    def broadcast(self, topic: str, data: bytes) -> None:
        self.reply_soon(f"{self.layout.prefix}.bc.{topic}.{self.node_id}", data)

    def on_broadcast(self, topic: str, handler: Callable[[bytes], None]) -> None:
        self._broadcast_handlers[topic] = handler

    async def _on_broadcast(self, msg: Msg) -> None:
        _, _, topic, node = msg.subject.rsplit(".", 3)
        handler = self._broadcast_handlers.get(topic)
        if node != self.node_id and handler is not None:
            try:
                handler(msg.data)
            except Exception:
                log.exception("broadcast handler failed", extra={"topic": topic})

    async def _on_routed_reply(self, msg: Msg) -> None:
        self.on_reply(_decode_message(msg.data))

    def dead_letter(self, member: str, m: Message, attempts: int, reason: Any) -> None:
        self.observer.on_dead_letter(member, m, attempts, reason)
        letter = dead_letter_message(member, m, attempts, reason, self.clock.time())
        self.spawn(self.publish([letter], self.settings.publish_timeout))

    # -- consuming ------------------------------------------------------------------------

    async def ensure_lane_consumer(self, member: str, rank: int) -> None:
        from nats.js.api import ConsumerConfig

        qos = self.settings.qos[list(self.settings.qos)[rank]]
        await self.nc.jetstream().add_consumer(
            self.layout.inbox_stream,
            ConsumerConfig(
                durable_name=self.layout.lane_consumer(member, rank),
                filter_subject=self.layout.inbox(member, rank),
                ack_policy="explicit",  # type: ignore[arg-type]
                ack_wait=qos.ack_timeout,
                max_ack_pending=self.settings.member_queue_limit,
            ),
        )

    def _attach(self, member_id: str, consumer: int) -> NatsMember:
        if self.closed:
            raise ClosedError("the hub is closed")
        nm = self._attached.get(member_id)
        if nm is None:
            nm = self._attached[member_id] = NatsMember(self, member_id)
            nm.resume.update(self._resume.pop(member_id, {}))
            self.spawn(self._attach_later(nm))
        nm.consumers.add(consumer)
        return nm

    async def _attach_later(self, nm: NatsMember) -> None:
        try:
            await nm.attach()
        except Exception:
            log.exception("attaching member failed", extra={"member": nm.id})

    def poll(self, member: str, consumer: int, max_items: int) -> NatsBatch | None:
        nm = self._attach(member, consumer)
        return nm.make_batch(consumer, max_items)

    def listen(self, member: str, consumer: int, callback: Callable[[], None] | None) -> None:
        nm = self._attach(member, consumer)
        if callback is None:
            nm.state.listeners.pop(consumer, None)
        else:
            nm.state.listeners[consumer] = callback

    async def fetch(
        self, member: str, consumer: int, max_items: int, timeout: float | None
    ) -> Batch | None:
        return await wait_for_batch(
            partial(self.poll, member, consumer, max_items),
            lambda: self._attached[member].state,
            consumer,
            timeout,
            self.clock,
        )

    def ack(self, batch: Any, index: int | None = None) -> int:
        nm = self._attached.get(batch.member.id)
        return 0 if nm is None else nm.ack(batch, index)

    def nack(
        self,
        batch: Any,
        index: int | None = None,
        *,
        delay: float | None = None,
        dead_letter: bool = False,
    ) -> int:
        nm = self._attached.get(batch.member.id)
        if nm is None:
            return 0
        reason = "rejected" if dead_letter else "nacked"
        return nm.fail(batch, index, reason, delay=delay, dead=dead_letter)

    def detach(self, member: str, consumer: int) -> None:
        nm = self._attached.get(member)
        if nm is None:
            return
        nm.detach(consumer)
        if not nm.consumers:
            del self._attached[member]
            self.spawn(nm.release())

    def settle_through(self, member: str, channel: str, seq: int) -> int:
        nm = self._attached.get(member)
        if nm is not None:
            return nm.settle_through(channel, seq)
        # Not attached here (yet): what it settled is skipped when its deliveries are pulled.
        marks = self._resume.setdefault(member, {})
        marks[channel] = max(marks.get(channel, 0), seq)
        return 0
