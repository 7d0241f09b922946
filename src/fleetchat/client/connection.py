"""One WebSocket session with the hub: hello/welcome, frames in, coalesced acks out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
from aiohttp import WSMsgType

from fleetchat import protocol as p
from fleetchat.client.delivery import AckTracker
from fleetchat.client.wire import HubUnavailableError, ServerFrame, decode_server_frame
from fleetchat.errors import FleetchatError, UnauthenticatedError, error_from_code

__all__ = ["Connection"]

log = logging.getLogger(__name__)

FrameHandler = Callable[["Connection", ServerFrame], None]


class Connection:
    """A connected, welcomed session. Built by :meth:`open`; the Agent owns it.

    Attributes:
        generation: counts the agent's connections; tags are only valid in their generation.
        welcome: what the hub said at hello (heartbeat interval, window, limits).
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        welcome: p.Welcome,
        *,
        generation: int,
        on_frame: FrameHandler,
        heartbeat_interval: float,
        resources: Callable[[], dict[str, Any] | None],
    ) -> None:
        self.ws = ws
        self.welcome = welcome
        self.generation = generation
        self._on_frame = on_frame
        self._heartbeat_interval = heartbeat_interval
        self._resources = resources
        self.acks = AckTracker()
        self._outbox: list[p.Nack | p.Reply] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        hello: p.Hello,
        *,
        generation: int,
        timeout: float,
        on_frame: FrameHandler,
        heartbeat_interval: float | None,
        resources: Callable[[], dict[str, Any] | None],
    ) -> Connection:
        """Connect, say hello and wait for the welcome.

        Raises:
            HubUnavailableError: the hub cannot be reached or dropped the connection.
            FleetchatError: the hub refused the hello (for example UnauthenticatedError,
                ForbiddenError for a token of another agent, InvalidIdError).
        """
        try:
            async with asyncio.timeout(timeout):
                ws = await session.ws_connect(
                    url,
                    autoping=True,
                    compress=0,
                    max_msg_size=0,  # deliveries are batched; the hub bounds them, not us
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise HubUnavailableError(
                f"cannot reach the hub at {url}: {exc or type(exc).__name__}", url=url
            ) from exc
        try:
            async with asyncio.timeout(timeout):
                await ws.send_frame(p.encode(hello), WSMsgType.TEXT)
                msg = await ws.receive()
            welcome = _read_welcome(msg, ws.close_code, url)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await ws.close()
            if not isinstance(exc, FleetchatError) and isinstance(
                exc, TimeoutError | aiohttp.ClientError | ConnectionError
            ):
                raise HubUnavailableError(f"no welcome from the hub at {url}", url=url) from exc
            raise
        interval = heartbeat_interval or welcome.heartbeat_interval
        return cls(
            ws,
            welcome,
            generation=generation,
            on_frame=on_frame,
            heartbeat_interval=interval,
            resources=resources,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading frames, flushing acks and sending heartbeats."""
        self._reader = asyncio.ensure_future(self._read())
        for coro in (self._flush_loop(), self._heartbeat_loop()):
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)

    @property
    def closed(self) -> bool:
        return self._reader is None or self._reader.done()

    async def wait_closed(self) -> int | None:
        """Wait until the session ends; returns the WebSocket close code."""
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._reader)
        return self.close_code

    async def close(self, code: int = p.CLOSE_NORMAL) -> None:
        """Close the socket and stop every task of this session."""
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close(code=code)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # -- outbound -------------------------------------------------------------------------

    async def send(self, frame: Any) -> None:
        """Send one frame now.

        Raises:
            HubUnavailableError: the socket is closed or broke while writing.
        """
        if self.ws.closed:
            raise HubUnavailableError("the connection to the hub is closed")
        try:
            await self.ws.send_frame(p.encode(frame), WSMsgType.TEXT)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise HubUnavailableError(f"lost the connection to the hub: {exc}") from exc

    def ack(self, tag: int, *, by_tag: bool = True) -> None:
        """Mark ``tag`` finished; the ack goes out with the next flush (once per loop turn)."""
        self.acks.complete(tag, by_tag=by_tag)
        self._poke()

    def queue(self, frame: p.Nack | p.Reply) -> None:
        """Queue a nack or reply; it is sent before the acks that cover its tag."""
        self._outbox.append(frame)
        self._poke()

    def _poke(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every queued nack, reply and ack has been written."""
        if not self.closed:
            await self._idle.wait()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self._outbox or not self.acks.idle:
                    frames: list[Any] = self._outbox
                    self._outbox = []
                    ack = self.acks.take()
                    if ack is not None:
                        frames.append(ack)
                    for frame in frames:
                        await self.send(frame)
            except HubUnavailableError:
                return  # the reader notices the close and the agent reconnects
            if not self._wake.is_set():
                self._idle.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                await self.send(p.Heartbeat(resources=self._resources()))
            except HubUnavailableError:
                return

    # -- inbound --------------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self.ws
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    if msg.type == WSMsgType.ERROR:
                        break
                    continue
                try:
                    frame = decode_server_frame(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("ignoring a frame the SDK cannot read: %s", exc)
                    continue
                try:
                    self._on_frame(self, frame)
                except Exception:
                    log.exception("error handling a %s frame", type(frame).__name__)
        finally:
            self.close_code = ws.close_code
            self._idle.set()  # nothing will be flushed any more
            for task in self._tasks:
                task.cancel()


def _read_welcome(msg: aiohttp.WSMessage, close_code: int | None, url: str) -> p.Welcome:
    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
        try:
            frame = decode_server_frame(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FleetchatError(f"the hub at {url} answered hello with {exc}") from None
        if isinstance(frame, p.Welcome):
            return frame
        if isinstance(frame, p.ErrorFrame):
            raise error_from_code(frame.code, frame.message, frame.details)
        raise FleetchatError(f"the hub at {url} answered hello with a {frame.__class__.__name__}")
    if close_code == p.CLOSE_AUTH:
        raise UnauthenticatedError("the hub closed the connection at hello (authentication)")
    raise HubUnavailableError(f"the hub at {url} closed the connection at hello", url=url)
