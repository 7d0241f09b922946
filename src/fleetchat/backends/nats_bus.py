"""NatsBus: the distributed Bus, on NATS JetStream. Any number of hub nodes share one NATS.

- A durable publish is stored in ``<P>_CHAT`` with ``Nats-Msg-Id`` = the message id (a retry
  within two minutes is not stored twice); the stream sequence is the message's ``seq``, so seqs
  grow within a channel but are not consecutive (the stream holds every channel).
- Deliveries: every node reads ``<P>_CHAT`` and serves the members connected to it from their
  cursors (``nats_feed.py``); acks, retries and dead letters are the embedded bus's own
  (``Consuming``). Ephemeral channels and requests/replies use core NATS only, never stored.
- Channels and memberships are KV entries every node watches, so ``channel()``, ``members()``
  and the other reads are answered from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_delivery import DLQ_CHANNEL, Consuming
from fleetchat.backends.local_member import Batch, Cursor, MemberState
from fleetchat.backends.nats_attach import NatsAttach
from fleetchat.backends.nats_channels import NatsChannels
from fleetchat.backends.nats_conn import connect_nats, server_features
from fleetchat.backends.nats_feed import NatsDelivery
from fleetchat.backends.nats_layout import Layout
from fleetchat.backends.nats_member import NatsMemberState
from fleetchat.backends.ports import DeliveryObserver
from fleetchat.background import Background
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
_DUPLICATE_WINDOW = 120.0
_REPLY_HEADER = "fc-reply-to"  # on a request: the subject of the node waiting for its reply


class NatsBus(NatsChannels, NatsDelivery, NatsAttach, Consuming):
    """The Bus on NATS JetStream. ``url`` may list several servers, comma-separated.

    ``flush_interval``: seconds between saves of what members settled (a node that dies
    redelivers at most that long of acks, as the embedded bus does on a crash)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        observer: DeliveryObserver,
        settings: ChatSettings | None = None,
        prefix: str = "fc",
        flush_interval: float = 0.2,
    ) -> None:
        self.url = url
        self.settings = settings or ChatSettings()
        self.flush_interval = flush_interval
        self._clock = clock
        self._observer = observer
        self.layout = Layout(prefix)
        self._closed = False
        self._nc: NatsClient | None = None
        self._channels: dict[str, Channel] = {}
        self._channel_members: dict[str, set[str]] = {}
        self._memberships: dict[str, set[str]] = {}
        self._join_floors: dict[tuple[str, str], int] = {}
        self._revisions: dict[tuple[str, str], int] = {}
        self._members: dict[str, MemberState] = {}  # connected to this node
        self._dirty: list[Cursor] = []
        # Consumers of members another node took over: member -> consumer ids.
        self._moved: dict[str, dict[int, None]] = {}
        # Resume marks (hello) for members not connected here yet: member -> channel -> seq.
        self._resume: dict[str, dict[str, int]] = {}
        self._background = Background(log, "bus task", quiet=lambda: self._closed)
        self._replies: list[tuple[str, bytes]] = []
        self._eph_seq = itertools.count(1)
        self._kv_channels: KeyValue | None = None
        self._kv_members: KeyValue | None = None
        self._kv_cursors: KeyValue | None = None
        self._watchers: list[Any] = []
        self.features: Any = None
        self.node_id = new_id()
        self._reply_subject = f"{self.layout.prefix}.rep.{self.node_id}"
        self.on_reply: Callable[[Message], bool] = lambda m: False
        self._broadcast_handlers: dict[str, Callable[[bytes], None]] = {}
        self._init_delivery()

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise ClosedError("the NATS bus is not started")
        return self._nc

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        from nats.js.api import StreamConfig

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
            self._kv_channels = await js.create_key_value(bucket=lay.channels_bucket, history=1)
            self._kv_members = await js.create_key_value(bucket=lay.members_bucket, history=1)
            self._kv_cursors = await js.create_key_value(bucket=lay.cursors_bucket, history=1)
            await self._start_feed()
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
        self._spawn(self._flush_loop())

    async def _ensure_stream(self, config: Any) -> None:
        js = self.nc.jetstream()
        try:
            await js.add_stream(config)
        except Exception:  # exists with another config: bring it up to date
            await js.update_stream(config)

    async def close(self) -> None:
        if self._closed:
            return
        for member in [m for m in self._members.values() if isinstance(m, NatsMemberState)]:
            with contextlib.suppress(Exception):
                await self._release(member)
        self._closed = True
        for w in self._watchers:
            with contextlib.suppress(Exception):
                await w.stop()
        self._flush_replies()
        await self._background.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._background.spawn(coro)

    def reply_soon(self, subject: str | None, payload: bytes) -> None:
        """Send a core NATS message; all of one loop turn go out together."""
        if not subject:
            return
        if not self._replies:
            asyncio.get_running_loop().call_soon(self._flush_replies)
        self._replies.append((subject, payload))

    def _flush_replies(self) -> None:
        replies, self._replies = self._replies, []
        if replies and self._nc is not None:
            self._spawn(self._send_replies(replies))

    async def _send_replies(self, replies: list[tuple[str, bytes]]) -> None:
        nc = self.nc
        for subject, payload in replies:
            await nc.publish(subject, payload)

    # -- publish --------------------------------------------------------------------------

    async def publish(self, messages: list[Message], timeout: float) -> list[Message]:
        """Store durable messages (returns once JetStream confirmed them: committed), send
        ephemeral ones to every node."""
        if self._closed:
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
        self._observer.on_published(messages)
        return messages

    async def _on_ephemeral(self, msg: Msg) -> None:
        m = _decode_message(msg.data)
        rank = PRIORITY_RANK[m.priority]
        for member, _ in self._local.get(m.channel, ()):  # connected here, in the channel
            if member.ready and member.id != m.sender and member.room > 0:
                member.push(rank, m)

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

    # -- consumers --------------------------------------------------------------------------

    def _consumer(self, member_id: str, consumer: int) -> None:
        if consumer in self._moved.get(member_id, ()):
            raise ClosedError(f"agent {member_id!r} is connected to another hub node now")
        self._member(member_id).consumers[consumer] = None

    def poll(self, member_id: str, consumer: int, max_items: int) -> Batch | None:
        self._consumer(member_id, consumer)
        return super().poll(member_id, consumer, max_items)

    def listen(self, member_id: str, consumer: int, callback: Callable[[], None] | None) -> None:
        self._consumer(member_id, consumer)
        super().listen(member_id, consumer, callback)

    async def fetch(
        self, member_id: str, consumer: int, max_items: int, timeout: float | None
    ) -> Batch | None:
        self._consumer(member_id, consumer)
        return await super().fetch(member_id, consumer, max_items, timeout)

    def detach(self, member_id: str, consumer: int) -> None:
        """A consumer went away; when it was the member's last one here, the member is let go
        (its cursors saved) so that the node it connects to next serves it."""
        moved = self._moved.get(member_id)
        if moved is not None:
            moved.pop(consumer, None)
            if not moved:
                del self._moved[member_id]
        super().detach(member_id, consumer)
        member = self._members.get(member_id)
        if isinstance(member, NatsMemberState):
            member.consumers.pop(consumer, None)
            if not member.consumers:
                self._spawn(self._release(member))
