"""The outbound half of an agent session: deliveries fetched within the window, sent as
``deliver`` frames (several batches per frame, one socket write per loop turn), and the close of
a peer that stops reading."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSMsgType, web

from fleetchat import protocol as p
from fleetchat.errors import ClosedError
from fleetchat.models import Message

if TYPE_CHECKING:
    from fleetchat.backends.local_member import Batch
    from fleetchat.config import ServerSettings
    from fleetchat.hub import Hub
    from fleetchat.server.caches import MessageCache

__all__ = ["Outbound"]

log = logging.getLogger(__name__)

_FRAME_BUDGET = 1024 * 1024  # bytes of deliveries gathered into one frame


class Outbound:
    """Mixin of AgentSession: everything that goes from the hub to the agent."""

    ws: web.WebSocketResponse
    hub: Hub
    settings: ServerSettings
    cache: MessageCache
    transport: asyncio.BaseTransport | None
    agent_id: str
    consumer: int
    window: int
    next_tag: int
    outstanding: list[tuple[int, Batch]]
    requests: dict[int, Message]
    sender: asyncio.Task[None] | None
    closing: bool

    if TYPE_CHECKING:

        def _unacked(self) -> int: ...

        def _drop_settled(self) -> None: ...

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def _wake(self) -> None:
        """Deliveries are ready, or window room came back: start sending unless already at it.

        Called by the bus (see ``Bus.listen``: new messages, retries, and room freed by acks
        or ack timeouts). An idle connection holds no task: the sender runs only while there
        is something to send and room in the window to send it.
        """
        if self.sender is None and not self.closing and self._unacked() < self.window:
            self.sender = asyncio.get_running_loop().create_task(self._send_ready())

    async def _send_ready(self) -> None:
        bus = self.hub.bus
        agent, consumer = self.agent_id, self.consumer
        try:
            while not self.closing:
                room = self.window - self._unacked()
                batches: list[Batch] = []
                # Everything ready now goes out in this turn's write (frames split by _deliver).
                while room > 0:
                    batch = bus.poll(agent, consumer, min(room, 256))
                    if batch is None:
                        break
                    batches.append(batch)
                    room -= batch.pending
                if not batches:
                    return
                await self._deliver(batches)
                if not self.closing:
                    await self._check_slow()
        except ClosedError:
            self.closing = True
            await self.ws.close(code=p.CLOSE_SERVER_SHUTDOWN, message=b"hub closing")
        finally:
            self.sender = None

    async def _deliver(self, batches: list[Batch]) -> None:
        """Send ``batches`` as deliver frames with consecutive tags, one frame unless the
        messages exceed the frame budget (then several, each within it)."""
        get = self.cache.get
        budget = min(_FRAME_BUDGET, self.settings.max_frame_bytes // 2)
        tag = self.next_tag
        first_tag = tag
        parts: list[bytes] = []
        attempts: list[int] = []
        size = 0
        frames: list[bytes] = []
        for batch in batches:
            self.outstanding.append((tag, batch))
            items = batch.items
            datas = [get(m) for m in items]
            if batch.pending != len(items):  # transient items: requests to remember by tag
                for i, m in enumerate(items):
                    if m.kind == "request":
                        self.requests[tag + i] = m
                        if len(self.requests) > 10_000:  # forget the oldest
                            del self.requests[next(iter(self.requests))]
            batch_size = sum(map(len, datas))
            if size + batch_size <= budget:  # the common case: the whole batch fits
                parts.extend(datas)
                attempts.extend(batch.attempts)
                size += batch_size
                tag += len(items)
                continue
            for i, data in enumerate(datas):
                if parts and size + len(data) > budget:
                    frames.append(_deliver_frame(first_tag, parts, attempts))
                    first_tag, parts, attempts, size = tag, [], [], 0
                parts.append(data)
                attempts.append(batch.attempts[i])
                size += len(data)
                tag += 1
        if parts:
            frames.append(_deliver_frame(first_tag, parts, attempts))
        self.next_tag = tag
        tracer = self.hub.tracer
        if tracer is not None and tracer.trace_deliveries:
            for batch in batches:
                tracer.delivered(self.agent_id, batch.items, batch.attempts)
        for frame in frames:
            if self.ws.closed:
                return
            try:
                # A peer that stops reading makes the send wait for the socket to drain.
                async with asyncio.timeout(self.settings.slow_consumer_seconds):
                    await self.ws.send_frame(frame, WSMsgType.TEXT)
            except TimeoutError:
                await self._close_slow()
                return

    async def _check_slow(self) -> None:
        """Close the connection if its unsent data stays over the limit for too long."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport):
            return
        deadline = time.monotonic() + self.settings.slow_consumer_seconds
        while transport.get_write_buffer_size() > self.settings.slow_consumer_bytes:
            if time.monotonic() >= deadline:
                await self._close_slow()
                return
            await asyncio.sleep(0.05)

    async def _close_slow(self) -> None:
        log.warning("closing slow consumer", extra={"agent_id": self.agent_id})
        self.closing = True
        # The close frame may be stuck behind the unread data (and aiohttp's close waits for
        # the peer): send it in the background and drop the connection a second later, so the
        # session ends and its unacked deliveries go back to the queue.
        self._spawn(self.ws.close(code=p.CLOSE_SLOW_CONSUMER, message=b"slow consumer"))
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            asyncio.get_running_loop().call_later(1.0, transport.abort)


def _deliver_frame(first_tag: int, parts: list[bytes], attempts: list[int]) -> bytes:
    head = b'{"v":1,"type":"deliver","first_tag":%d,' % first_tag
    if any(a > 1 for a in attempts):
        head += b'"attempts":' + msgspec.json.encode(attempts) + b","
    return head + b'"messages":[' + b",".join(parts) + b"]}"
