"""The fan-out of the NatsBus: channel messages copied into member inboxes, on the leader.

``NatsFanout`` is a mixin of :class:`fleetchat.backends.nats_bus.NatsBus`. One node (the
leader) reads ``<P>_CHAT`` in order through the durable consumer ``fanout`` and stores one copy
per member in ``<P>_INBOX`` (``Nats-Msg-Id`` = ``<message id>:<member>``, so a fan-out replayed
after a crash adds nothing), then acks. Copies keep the channel's order because one reader
writes them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.nats_layout import Layout
from fleetchat.models import Channel, Message
from fleetchat.types import PRIORITY_RANK

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

__all__ = ["NatsFanout"]

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(Message).decode
_FANOUT_BATCH = 256


class NatsFanout:
    """Runs the fan-out while this node leads."""

    layout: Layout
    closed: bool
    _channels: dict[str, Channel]
    _members: dict[str, set[str]]
    _fanout_sub: Any
    _fanout_done: asyncio.Future[None] | None
    _fanout_left: int

    if TYPE_CHECKING:

        @property
        def nc(self) -> NatsClient: ...

        def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    async def start_fanout(self) -> None:
        """Run the fan-out on this node (the leader's job; safe to run twice, see above).

        One pull request is kept open on the ``fanout`` consumer (up to 256 messages, expiring
        after 2 s, then renewed); each message is handled as it arrives, in order."""
        if self._fanout_sub is not None:
            return
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=self._on_fanout_message)
        self._fanout_sub = sub
        self.spawn(self._fanout_pulls(sub, inbox))

    async def stop_fanout(self) -> None:
        sub, self._fanout_sub = self._fanout_sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fanout_pulls(self, sub: Any, inbox: str) -> None:
        lay = self.layout
        subject = lay.next_subject(lay.chat_stream, lay.fanout_consumer)
        request = json.dumps({"batch": _FANOUT_BATCH, "expires": int(2e9)}).encode()
        loop = asyncio.get_running_loop()
        while not self.closed and self._fanout_sub is sub:
            self._fanout_done = loop.create_future()
            self._fanout_left = _FANOUT_BATCH
            try:
                await self.nc.publish(subject, request, reply=inbox)
                async with asyncio.timeout(3.0):
                    await self._fanout_done
            except TimeoutError:
                continue
            except Exception:
                if self.closed or self._fanout_sub is not sub:
                    return
                log.warning("fan-out pull failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)

    async def _on_fanout_message(self, msg: Msg) -> None:
        if msg.headers and "Status" in msg.headers:  # the pull expired or was cut short
            self._end_fanout_pull()
            return
        self._fanout_left -= 1
        if self._fanout_left <= 0:
            self._end_fanout_pull()
        try:
            copies = await self._fan_out_one(self.nc.jetstream(), msg)
        except Exception:
            log.warning("fan-out failed; the message will be redelivered", exc_info=True)
            return
        self.spawn(self._ack_when_stored(msg, copies))

    def _end_fanout_pull(self) -> None:
        done = self._fanout_done
        if done is not None and not done.done():
            done.set_result(None)

    async def _ack_when_stored(self, msg: Msg, copies: list[Any]) -> None:
        try:
            await asyncio.gather(*copies)
        except Exception:
            log.warning("a fan-out copy failed; will be redelivered", exc_info=True)
            return  # not acked: JetStream redelivers it after its ack wait
        await msg.ack()

    async def _fan_out_one(self, js: Any, msg: Msg) -> list[Any]:
        m = _decode_message(msg.data)
        m.seq = msg.metadata.sequence.stream
        spec = self._channels.get(m.channel)
        if spec is not None:
            spec.last_seq = max(spec.last_seq, m.seq)
        data = _encode(m)
        rank = PRIORITY_RANK[m.priority]
        futs = []
        for member in self._members.get(m.channel, ()):
            if member == m.sender:
                continue
            futs.append(
                await js.publish_async(
                    self.layout.inbox(member, rank),
                    data,
                    headers={"Nats-Msg-Id": f"{m.id}:{member}"},
                )
            )
        return futs
