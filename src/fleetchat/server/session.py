"""One agent's WebSocket session: hello, then frames in, deliveries out.

Deliveries are fetched from the agent's queue in batches, up to the connection's window of
unacked deliveries, and sent as ``deliver`` frames with consecutive tags; everything fetched in
one event-loop turn goes out in one frame (one socket write). Messages are encoded once and the
bytes reused for every recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSMsgType, web

from fleetchat import protocol as p
from fleetchat.errors import (
    FleetchatError,
    InvalidInputError,
    RateLimitedError,
    UnauthenticatedError,
)
from fleetchat.models import Message
from fleetchat.server.caches import MessageCache, PublishLedger, RateBucket
from fleetchat.server.outbound import Outbound
from fleetchat.server.task_reports import report_task

if TYPE_CHECKING:
    from fleetchat.backends.local_member import Batch
    from fleetchat.config import ServerSettings
    from fleetchat.hub import Hub
    from fleetchat.server.auth import Authenticator

__all__ = ["AgentSession", "MessageCache", "PublishLedger"]

log = logging.getLogger(__name__)

_consumer_ids = itertools.count(1_000_000)
_encode_message = msgspec.json.Encoder().encode
_HELLO_TIMEOUT = 10.0


class AgentSession(Outbound):
    """Runs one WebSocket connection from hello to close."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hub: Hub,
        auth: Authenticator,
        settings: ServerSettings,
        cache: MessageCache,
        sessions: dict[str, list[AgentSession]],
        transport: asyncio.BaseTransport | None,
        ledger: PublishLedger,
    ) -> None:
        self.ledger = ledger
        self.ws = ws
        self.transport = transport
        self.hub = hub
        self.auth = auth
        self.settings = settings
        self.cache = cache
        self.sessions = sessions
        self.agent_id = ""
        self.consumer = next(_consumer_ids)
        self.window = settings.default_window
        self.next_tag = 1
        # Lists, not deques or Events: a session lives long and there are thousands of them
        # (an empty deque is 760 bytes); ``outstanding`` holds a handful of batches.
        self.outstanding: list[tuple[int, Batch]] = []
        self.requests: dict[int, Message] = {}  # delivered requests by tag, oldest first
        # Task sets are dicts (64 bytes empty, a set is 216): background frames (requests),
        # and publishes, which are not cancelled when the connection drops: once accepted
        # they commit, and the ledger must know it, so a retry elsewhere is not posted twice.
        self.tasks: dict[asyncio.Task[Any], None] = {}
        self.publishing: dict[asyncio.Task[Any], None] = {}
        self.sender: asyncio.Task[None] | None = None
        self.bad_frames = 0
        self.bucket = RateBucket(settings.frame_rate, settings.frame_burst)
        self.closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not await self._handshake():
                return
            self.sessions.setdefault(self.agent_id, []).append(self)
            self.hub.bus.listen(self.agent_id, self.consumer, self._wake)
            self._wake()  # whatever waited for the agent while it was away
            # The read loop is here, not in a method of its own: one coroutine frame less for
            # each of thousands of connections.
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not await self._receive(
                    msg.data
                ):
                    return
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        self.closing = True
        sender = self.sender
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        for task in list(self.tasks):
            task.cancel()
        if self.publishing:
            await asyncio.gather(*self.publishing, return_exceptions=True)
        if self.agent_id:
            self.hub.bus.detach(self.agent_id, self.consumer)
            mine = self.sessions.get(self.agent_id)
            if mine is not None:
                if self in mine:
                    mine.remove(self)
                if not mine:
                    del self.sessions[self.agent_id]
                    # A dropped connection is noticed at once, not after missed heartbeats.
                    self.hub.registry.mark_offline(self.agent_id)
        if not self.ws.closed:
            await self.ws.close()

    async def _send(self, frame: Any) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_frame(p.encode(frame), WSMsgType.TEXT)

    async def _error(self, exc: FleetchatError, frame_id: str | None = None) -> None:
        await self._send(
            p.ErrorFrame(
                code=exc.code, message=exc.message, id=frame_id, details=exc.wire_details()
            )
        )

    async def _handshake(self) -> bool:
        try:
            async with asyncio.timeout(_HELLO_TIMEOUT):
                msg = await self.ws.receive()
        except TimeoutError:
            await self.ws.close(code=p.CLOSE_AUTH, message=b"no hello")
            return False
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return False
        try:
            hello = p.decode_client_frame(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            await self._error(InvalidInputError(f"bad hello: {exc}"))
            await self.ws.close(code=p.CLOSE_AUTH, message=b"bad hello")
            return False
        if not isinstance(hello, p.Hello):
            await self._error(UnauthenticatedError("the first frame must be hello"))
            await self.ws.close(code=p.CLOSE_AUTH, message=b"hello first")
            return False
        try:
            await self._accept(hello)
        except FleetchatError as exc:
            await self._error(exc)
            code = p.CLOSE_AUTH if exc.code in ("unauthenticated", "forbidden") else p.CLOSE_POLICY
            await self.ws.close(code=code, message=exc.code.encode())
            return False
        return True

    async def _accept(self, hello: p.Hello) -> None:
        from fleetchat.types import check_agent_id

        check_agent_id(hello.agent_id)
        self.auth.check_acts_as(hello.token, hello.agent_id)
        self.agent_id = hello.agent_id
        window = self.settings.default_window if hello.window is None else hello.window
        if not 1 <= window <= self.settings.max_window:
            raise InvalidInputError(f"window must be 1..{self.settings.max_window}", field="window")
        self.window = window
        registry = self.hub.registry
        if hello.capabilities is not None:
            await registry.register(
                hello.agent_id,
                capabilities=hello.capabilities,
                capacity=hello.capacity,
                labels=hello.labels,
                resources=hello.resources,
            )
        elif hello.agent_id in registry:
            registry.heartbeat(hello.agent_id, resources=hello.resources or None)
        await self.hub.channels.ensure_inbox(hello.agent_id)
        for channel, seq in hello.resume.items():
            self.hub.bus.settle_through(hello.agent_id, channel, seq)
        await self._send(
            p.Welcome(
                agent_id=hello.agent_id,
                session=str(self.consumer),
                server="fleetchat",
                heartbeat_interval=self.hub.settings.registry.heartbeat_interval,
                window=self.window,
                max_frame_bytes=self.settings.max_frame_bytes,
            )
        )

    # -- inbound --------------------------------------------------------------------------

    async def _receive(self, data: bytes | str) -> bool:
        """Handle one frame from the agent; False once the connection is being closed."""
        try:
            if not self.bucket.take():
                raise RateLimitedError("too many frames; slow down")
            if len(data) > self.settings.max_frame_bytes:
                raise InvalidInputError(
                    f"frame of {len(data)} bytes; the limit is {self.settings.max_frame_bytes}",
                    field="frame",
                )
            try:
                frame = p.decode_client_frame(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise InvalidInputError(f"bad frame: {exc}") from None
            except RecursionError:
                raise InvalidInputError("bad frame: nested too deeply") from None
            if frame.v != p.VERSION:
                raise InvalidInputError(
                    f"protocol version {frame.v} is not supported; this hub speaks 1",
                    field="v",
                )
            await self._dispatch(frame)
            self.bad_frames = 0
        except FleetchatError as exc:
            self.bad_frames += 1
            await self._error(exc, _frame_id(data))
            if self.bad_frames >= self.settings.max_bad_frames:
                await self.ws.close(code=p.CLOSE_TOO_MANY_ERRORS, message=b"too many bad frames")
                return False
        return True

    async def _dispatch(self, frame: p.ClientFrame) -> None:
        if isinstance(frame, p.Ack):
            self._on_ack(frame)
        elif isinstance(frame, p.Publish):
            spec = self.hub.bus.channel(frame.channel)
            if spec is not None and spec.ephemeral:
                # Nothing to wait for (no commit): publish inline, no task.
                await self._publish(frame)
                return
            task = asyncio.ensure_future(self._publish(frame))
            self.publishing[task] = None
            task.add_done_callback(self.publishing.pop)
        elif isinstance(frame, p.Heartbeat):
            if self.agent_id in self.hub.registry:
                self.hub.registry.heartbeat(self.agent_id, resources=frame.resources)
        elif isinstance(frame, p.Subscribe):
            for name in frame.channels:
                await self.hub.channels.join(name, self.agent_id)
            await self._send(
                p.Ok(id=frame.id, channels=self.hub.channels.memberships(self.agent_id))
            )
        elif isinstance(frame, p.Unsubscribe):
            await self.hub.channels.leave(frame.channel, self.agent_id)
            await self._send(
                p.Ok(id=frame.id, channels=self.hub.channels.memberships(self.agent_id))
            )
        elif isinstance(frame, p.Nack):
            if frame.delay is not None and not 0 <= frame.delay <= 86_400:
                raise InvalidInputError("delay must be 0..86400 seconds", field="delay")
            batch, index = self._find(frame.tag)
            self.hub.bus.nack(batch, index, delay=frame.delay, dead_letter=frame.dead_letter)
            self._drop_settled()
        elif isinstance(frame, p.Request):
            self._spawn(self._request(frame))
        elif isinstance(frame, p.TaskReport):
            self._spawn(self._task_report(frame))
        elif isinstance(frame, p.Reply):
            request = self.requests.pop(frame.tag, None)
            if request is None:
                raise InvalidInputError(
                    f"no request was delivered with tag {frame.tag}", field="tag"
                )
            await self.hub.requests.reply(
                request, frame.body, sender=self.agent_id, headers=frame.headers or None
            )
        else:  # a second hello
            raise InvalidInputError("hello was already received", field="type")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks[task] = None
        task.add_done_callback(self.tasks.pop)

    async def _publish(self, frame: p.Publish) -> None:
        key = (self.agent_id, frame.channel, frame.id)
        ledger = self.ledger
        try:
            done = ledger.done(key)
            if done is None and (running := ledger.running(key)) is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    done = await asyncio.shield(running)
            if done is not None:  # a retry of a publish that already succeeded
                await self._send(msgspec.structs.replace(done, duplicate=True))
                return
            if not 1 <= len(frame.id) <= 64:
                raise InvalidInputError("publish id must be 1-64 characters", field="id")
            ledger.begin(key)
            result = None
            try:
                m = await self.hub.publish(
                    frame.channel,
                    frame.body,
                    sender=self.agent_id,
                    priority=frame.priority,
                    kind=frame.kind,
                    expires_in=frame.expires_in,
                    headers=frame.headers or None,
                )
                result = p.Published(id=frame.id, channel=m.channel, seq=m.seq, message_id=m.id)
            finally:
                ledger.finish(key, result)
            await self._send(result)
        except FleetchatError as exc:
            await self._error(exc, frame.id)

    async def _request(self, frame: p.Request) -> None:
        try:
            if frame.collect:
                replies = await self.hub.request(
                    frame.target,
                    frame.body,
                    sender=self.agent_id,
                    timeout=frame.timeout,
                    collect=True,
                    priority=frame.priority,
                )
            else:
                replies = [
                    await self.hub.request(
                        frame.target,
                        frame.body,
                        sender=self.agent_id,
                        timeout=frame.timeout,
                        priority=frame.priority,
                    )
                ]
            await self._send(p.ReplyFrame(id=frame.id, replies=replies))
        except FleetchatError as exc:
            await self._error(exc, frame.id)

    async def _task_report(self, frame: p.TaskReport) -> None:
        try:
            await report_task(self.hub.tasks, self.agent_id, frame)
            await self._send(p.Ok(id=frame.id))
        except FleetchatError as exc:
            await self._error(exc, frame.id)

    # -- acks -----------------------------------------------------------------------------

    def _on_ack(self, frame: p.Ack) -> None:
        bus = self.hub.bus
        if frame.upto is not None:
            upto = frame.upto
            out = self.outstanding
            while out:
                first, batch = out[0]
                last = first + len(batch.items) - 1
                if last <= upto:
                    bus.ack(batch)
                    del out[0]
                else:
                    for i in range(max(upto - first + 1, 0)):
                        bus.ack(batch, i)
                    break
        for tag in frame.tags:
            batch, index = self._find(tag)
            bus.ack(batch, index)
        self._drop_settled()
        self._wake()

    def _find(self, tag: int) -> tuple[Batch, int]:
        for first, batch in self.outstanding:
            if first <= tag < first + len(batch.items):
                return batch, tag - first
        raise InvalidInputError(f"no unacked delivery has tag {tag}", field="tag")

    def _drop_settled(self) -> None:
        out = self.outstanding
        while out and out[0][1].pending == 0:
            del out[0]

    def _unacked(self) -> int:
        return sum(batch.pending for _, batch in self.outstanding)


def _frame_id(data: Any) -> str | None:
    """The ``id`` of a frame that failed, if it can be read at all."""
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, TypeError, RecursionError):
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None
