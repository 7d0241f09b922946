"""Routes deliveries to handlers on a bounded pool of workers, once per message id."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from fleetchat import protocol as p
from fleetchat.client.delivery import ACK, DedupeCache, Item, Nack, Outcome
from fleetchat.client.stream import MessageStream
from fleetchat.client.tracing import AgentTracing
from fleetchat.models import Message

__all__ = ["AgentStats", "Dispatcher", "Link", "MessageHandler", "RequestHandler"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[Message], Awaitable[None]]
RequestHandler = Callable[[Message], Awaitable[Any]]


class Link(Protocol):
    """Where settled deliveries go: the agent's current connection, if it is the same one."""

    def is_current(self, generation: int) -> bool: ...

    def ack(self, generation: int, tag: int, *, by_tag: bool) -> None: ...

    def send_later(self, generation: int, frame: p.Nack | p.Reply) -> None: ...


@dataclass
class AgentStats:
    """Counters of one Agent, since it was created."""

    received: int = 0
    """Deliveries received, duplicates included."""
    handled: int = 0
    """Handler runs that returned normally (requests included)."""
    failed: int = 0
    """Handler runs that raised (the delivery was nacked)."""
    duplicates: int = 0
    """Redeliveries of messages already handled or being handled: acked, not handled again."""
    reconnects: int = 0
    """Connections re-established after a drop."""


@dataclass(frozen=True, slots=True)
class _Route:
    fn: Callable[[Message], Awaitable[Any]]
    channel: str | None
    kind: str | None
    sender: str | None = None

    def matches(self, m: Message) -> bool:
        return (
            (self.kind is None or m.kind == self.kind)
            and (self.sender is None or m.sender == self.sender)
            and (self.channel is None or fnmatch.fnmatchcase(m.channel, self.channel))
        )


class Dispatcher:
    """Everything between a ``deliver`` frame and the ack: dedupe, routing, workers."""

    def __init__(self, link: Link, *, concurrency: int, dedupe_size: int) -> None:
        self._link = link
        self.concurrency = concurrency
        self.handlers: list[_Route] = []
        self.request_handlers: list[_Route] = []
        self._streams: list[MessageStream] = []
        self.done = DedupeCache(dedupe_size)
        self._inflight: dict[str, Item] = {}
        self._queue: asyncio.Queue[tuple[Item, list[_Route]]] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self.stats = AgentStats()
        self.tracing = AgentTracing()
        """Replaced by the agent's own; handlers run in ``handle`` spans while it traces."""

    # -- registration ---------------------------------------------------------------------

    def add_handler(
        self, fn: MessageHandler, channel: str | None, kind: str | None, sender: str | None = None
    ) -> None:
        self.handlers.append(_Route(fn, channel, kind, sender))

    def add_request_handler(self, fn: RequestHandler, channel: str | None) -> None:
        self.request_handlers.append(_Route(fn, channel, "request"))

    def open_stream(self, channel: str | None, kind: str | None) -> MessageStream:
        stream = MessageStream(self, channel, kind)
        self._streams.append(stream)
        return stream

    def remove_stream(self, stream: MessageStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    # -- workers --------------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.concurrency - len(self._workers)):
            task = asyncio.ensure_future(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def stop(self) -> None:
        """Cancel the workers and end every stream; unsettled deliveries come again later."""
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()

    async def drain(self) -> None:
        """Take no new deliveries, drop the queued ones (the hub sends them again), and wait
        for the handlers that are running."""
        self.draining = True
        while not self._queue.empty():
            item, _ = self._queue.get_nowait()
            self._inflight.pop(item.message.id, None)
        await self._idle.wait()

    # -- deliveries -----------------------------------------------------------------------

    def on_deliver(self, generation: int, frame: p.Deliver) -> None:
        """Dispatch the deliveries of one frame (called by the connection's reader)."""
        attempts = frame.attempts
        for i, m in enumerate(frame.messages):
            tag = frame.first_tag + i
            self.stats.received += 1
            if self.draining:
                continue  # left unacked: the hub gives it back when we disconnect
            if m.seq and m.id in self.done:
                self.stats.duplicates += 1
                self._link.ack(generation, tag, by_tag=True)
                continue
            item = self._inflight.get(m.id) if m.seq else None
            if item is not None:
                self.stats.duplicates += 1
                item.waiters.append((generation, tag))
                continue
            item = Item(m, attempts[i] if attempts else 1, [(generation, tag)])
            if m.seq:
                self._inflight[m.id] = item
            self._route(item)

    def _route(self, item: Item) -> None:
        m = item.message
        if m.kind == "request":
            routes = [r for r in self.request_handlers if r.matches(m)][:1]
        else:
            routes = [r for r in self.handlers if r.matches(m)]
        if routes:
            self._queue.put_nowait((item, routes))
            return
        for stream in self._streams:
            if m.kind != "request" and stream.matches(m):
                stream.offer(item)
                return
        log.debug("no handler for a %s on %s; acked", m.kind, m.channel)
        self.settle(item, ACK)

    async def _work(self) -> None:
        while True:
            item, routes = await self._queue.get()
            if not any(self._link.is_current(g) for g, _ in item.waiters):
                # Its connection is gone: the hub sends it again on the new one.
                self._forget(item)
                continue
            self._running += 1
            self._idle.clear()
            try:
                if self.tracing.tracer is None:
                    outcome = await self._run(item, routes)
                else:
                    outcome = await self.tracing.handle(
                        item.message, partial(self._run, item, routes)
                    )
            finally:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()
            self.settle(item, outcome)

    async def _run(self, item: Item, routes: list[_Route]) -> Outcome:
        m = item.message
        extra = {"channel": m.channel, "message_id": m.id}
        try:
            if m.kind == "request":
                body = await routes[0].fn(m)
                self.stats.handled += 1
                return Outcome("reply", body=body)
            for route in routes:
                await route.fn(m)
        except Nack as nack:
            self.stats.failed += 1
            return Outcome("nack", delay=nack.delay, dead_letter=nack.dead_letter)
        except Exception:
            self.stats.failed += 1
            log.exception("handler failed", extra=extra)
            # A failed request gets no reply: the requester sees request_timeout.
            return ACK if m.kind == "request" else Outcome("nack")
        self.stats.handled += 1
        return ACK

    def _forget(self, item: Item) -> None:
        if self._inflight.get(item.message.id) is item:
            del self._inflight[item.message.id]

    def settle(self, item: Item, outcome: Outcome) -> None:
        """Finish every delivery of ``item`` on the current connection with ``outcome``.

        Deliveries on an older connection are gone: the hub redelivers those, and the dedupe
        cache acks them without running the handler again.
        """
        self._forget(item)
        m = item.message
        if m.seq and outcome.kind != "nack":
            self.done.add(m.id)
        live = [(g, t) for g, t in item.waiters if self._link.is_current(g)]
        for i, (generation, tag) in enumerate(live):
            last = i == len(live) - 1
            if last and outcome.kind == "reply":
                reply = p.Reply(tag=tag, body=outcome.body, headers=outcome.headers or {})
                self._link.send_later(generation, reply)
                self._link.ack(generation, tag, by_tag=False)
            elif last and outcome.kind == "nack":
                self._link.send_later(
                    generation,
                    p.Nack(tag=tag, delay=outcome.delay, dead_letter=outcome.dead_letter),
                )
                self._link.ack(generation, tag, by_tag=False)
            else:
                # Earlier tags of a redelivered message already failed on the hub's side
                # (ack timeout): they only move the cumulative ack point.
                self._link.ack(generation, tag, by_tag=last and m.seq != 0)
