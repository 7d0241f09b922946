"""The connection side of an Agent: start, reconnect with backoff, drain and close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp

from fleetchat import protocol as p
from fleetchat.client.calls import CallFrame, CallTable, request_timeout
from fleetchat.client.connection import Connection
from fleetchat.client.dispatch import AgentStats, Dispatcher
from fleetchat.client.tracing import AgentTracing
from fleetchat.client.wire import Backoff, HubUnavailableError, ServerFrame, ws_url
from fleetchat.errors import ClosedError, FleetchatError, InvalidInputError
from fleetchat.types import check_agent_id, new_id

__all__ = ["AgentCore"]

log = logging.getLogger(__name__)

_SHUTDOWN_PAUSE = 0.5
"""Seconds (with jitter, half to all of it) before reconnecting to a hub that shut down."""
# Errors that retrying may fix (hub closing, backend trouble, network); any other answer to
# hello (bad token, token of another agent, bad id) stops the agent.
_RETRYABLE = ("closed", "backend_error", "backpressure", "rate_limited", "hub_unavailable")


class AgentCore:
    """Owns the session with the hub; :class:`fleetchat.client.Agent` adds the API."""

    def __init__(
        self,
        agent_id: str,
        capabilities: Mapping[str, float] | None,
        hub: str,
        token: str | None,
        capacity: int,
        labels: Mapping[str, str] | None,
        window: int,
        heartbeat_interval: float | None,
        *,
        concurrency: int,
        connect_timeout: float,
        drain_timeout: float,
        dedupe_size: int,
        tracer_provider: Any = None,
    ) -> None:
        self.agent_id = check_agent_id(agent_id)
        for name, value in (("concurrency", concurrency), ("window", window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer", field=name)
        self.capabilities = dict(capabilities) if capabilities is not None else None
        self.hub = hub
        self.url = ws_url(hub)
        self.token = token
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.window = window
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self._dispatcher = Dispatcher(self, concurrency=concurrency, dedupe_size=dedupe_size)
        self._tracing = self._dispatcher.tracing = AgentTracing(tracer_provider)
        self._channels: set[str] = set()
        self._calls = CallTable()
        self._resources: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._conn: Connection | None = None
        self._generation = 0
        self._ready = asyncio.Event()
        self._done = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._state: Literal["new", "running", "closing", "closed"] = "new"
        self.error: FleetchatError | None = None
        """Why the agent stopped on its own (for example its token was revoked)."""

    @property
    def stats(self) -> AgentStats:
        return self._dispatcher.stats

    @property
    def connected(self) -> bool:
        """True while a welcomed session is up (False while reconnecting)."""
        return self._ready.is_set()

    def _take_resources(self) -> dict[str, Any] | None:
        resources, self._resources = self._resources, None
        return resources

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, say hello and subscribe; retries for up to ``connect_timeout``.

        Raises:
            HubUnavailableError: the hub could not be reached in time.
            UnauthenticatedError, ForbiddenError: the hub refused this agent or token.
        """
        if self._state != "new":
            raise ClosedError(f"the agent is {self._state}; create a new one")
        self._state = "running"
        self._tracing.resolve()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=max(self.connect_timeout, 5.0))
        )
        backoff = Backoff()
        deadline = time.monotonic() + self.connect_timeout
        try:
            while True:
                try:
                    await self._connect(first=True)
                    break
                except FleetchatError as exc:
                    delay = backoff.next()
                    if exc.code not in _RETRYABLE or time.monotonic() + delay > deadline:
                        raise
                    await asyncio.sleep(delay)
        except BaseException:
            self._state = "closed"
            self._done.set()
            await self._session.close()
            raise
        self._dispatcher.start()
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def close(self, *, drain: bool = True) -> None:
        """Stop: with ``drain``, take no new deliveries, let running handlers finish (up to
        ``drain_timeout``), send their acks and wait for unconfirmed publishes; then close.
        Unacked deliveries go back to the hub, which redelivers them."""
        if self._state in ("new", "closed") and self._closer is None:
            self._state = "closed"
            self._done.set()
            return
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close(drain))
        await asyncio.shield(self._closer)

    async def _close(self, drain: bool) -> None:
        self._state = "closing"
        if drain:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.drain_timeout):
                    await self._dispatcher.drain()
                    publishes = self._calls.publishes()
                    if publishes and self._ready.is_set():
                        await asyncio.wait(publishes)  # (not cancelled by the timeout)
                    if self._conn is not None:
                        await self._conn.flush()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._dispatcher.stop()
        self._calls.fail_all(self.error or ClosedError("the agent is closed"))
        last, self._conn = self._conn, None
        self._ready.clear()
        if last is not None:
            await last.close()
        if self._session is not None:
            await self._session.close()
        self._state = "closed"
        self._done.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def run_async(self) -> None:
        """Start, then run until ``close()``, SIGTERM or SIGINT (which drain and close).

        Raises:
            FleetchatError: the agent could not start, or stopped on its own (``self.error``).
        """
        await self.start()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        main = threading.current_thread() is threading.main_thread()
        if main:
            for sig in signals:
                loop.add_signal_handler(sig, self._on_signal)
        try:
            await self._done.wait()
        finally:
            if main:
                for sig in signals:
                    loop.remove_signal_handler(sig)
            await self.close()
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        """Blocking :meth:`run_async` on a new event loop (uvloop when installed)."""
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
            asyncio.run(self.run_async())
        else:
            uvloop.run(self.run_async())

    def _on_signal(self) -> None:
        log.info("signal received: draining", extra={"agent_id": self.agent_id})
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close(True))

    # -- connection -----------------------------------------------------------------------

    async def _connect(self, *, first: bool) -> None:
        assert self._session is not None
        hello = p.Hello(
            agent_id=self.agent_id,
            token=self.token,
            capabilities=self.capabilities,
            capacity=self.capacity,
            labels=self.labels,
            window=self.window,
        )
        conn = await Connection.open(
            self._session,
            self.url,
            hello,
            generation=self._generation + 1,
            timeout=max(self.connect_timeout, 5.0),
            on_frame=self._on_frame,
            heartbeat_interval=self.heartbeat_interval,
            resources=self._take_resources,
        )
        self._generation = conn.generation
        self._conn = conn
        conn.start()
        try:
            if self._channels:
                frame = p.Subscribe(id=new_id(), channels=sorted(self._channels))
                if first:  # errors surface from start(); later, membership persists anyway
                    await self._call(frame, timeout=max(self.connect_timeout, 5.0), conn=conn)
                else:
                    await conn.send(frame)
            while todo := self._calls.unsent(conn.generation):
                for call in todo:
                    if self._calls.prepare(call, conn.generation):
                        await conn.send(call.frame)
        except BaseException:
            await conn.close()
            raise
        self._ready.set()

    async def _supervise(self) -> None:
        backoff = Backoff()
        while self._state == "running" and self._conn is not None:
            code = await self._conn.wait_closed()
            self._ready.clear()
            if self._state != "running":
                return
            log.warning(
                "lost the connection to the hub (close code %s); reconnecting",
                code,
                extra={"agent_id": self.agent_id},
            )
            backoff.reset()
            if code == p.CLOSE_SERVER_SHUTDOWN:
                # The hub is going away: give it a moment rather than knock while it closes.
                await asyncio.sleep(_SHUTDOWN_PAUSE * (0.5 + 0.5 * random.random()))
            while self._state == "running":
                try:
                    await self._connect(first=False)
                except FleetchatError as exc:
                    if exc.code not in _RETRYABLE:
                        log.error("the hub refused this agent: [%s] %s", exc.code, exc.message)
                        self.error = exc
                        self._calls.fail_all(exc)
                        self._done.set()
                        return
                    await asyncio.sleep(backoff.next())
                except Exception:  # a bug must not end reconnecting for good
                    log.exception("reconnecting failed", extra={"agent_id": self.agent_id})
                    await asyncio.sleep(backoff.next())
                else:
                    self.stats.reconnects += 1
                    break

    def _on_frame(self, conn: Connection, frame: ServerFrame) -> None:
        if isinstance(frame, p.Deliver):
            self._dispatcher.on_deliver(conn.generation, frame)
        elif isinstance(frame, p.Welcome):
            log.debug("ignoring a second welcome")
        elif not self._calls.resolve(frame) and isinstance(frame, p.ErrorFrame):
            log.debug("error from the hub: [%s] %s", frame.code, frame.message)

    # -- Link (used by the dispatcher) ----------------------------------------------------

    def is_current(self, generation: int) -> bool:
        conn = self._conn
        return conn is not None and conn.generation == generation and not conn.closed

    def ack(self, generation: int, tag: int, *, by_tag: bool) -> None:
        if self._conn is not None and self.is_current(generation):
            self._conn.ack(tag, by_tag=by_tag)

    def send_later(self, generation: int, frame: p.Nack | p.Reply) -> None:
        if self._conn is not None and self.is_current(generation):
            self._conn.queue(frame)

    # -- calls ----------------------------------------------------------------------------

    async def _call(
        self,
        frame: CallFrame,
        *,
        timeout: float,
        deadline: float | None = None,
        conn: Connection | None = None,
    ) -> Any:
        """Send ``frame`` (now, or on the next connection) and wait for its answer."""
        if self.error is not None:
            raise self.error
        if self._state not in ("running", "closing"):
            raise ClosedError(f"the agent is {self._state}: start it first")
        call = self._calls.add(frame, deadline)
        conn = conn or (self._conn if self._ready.is_set() else None)
        try:
            if conn is not None and self._calls.prepare(call, conn.generation):
                with contextlib.suppress(HubUnavailableError):  # sent again after reconnecting
                    await conn.send(frame)
            async with asyncio.timeout(timeout):
                return await call.future
        except TimeoutError:
            if call.future.done() and not call.future.cancelled():
                raise  # the hub's own answer (request_timeout)
            if isinstance(frame, p.Request):
                raise request_timeout(frame) from None
            raise HubUnavailableError(
                f"no answer from the hub to {type(frame).__name__.lower()} {frame.id} within "
                f"{timeout} s (it may still have been applied; retrying with the same id is safe)",
                id=frame.id,
            ) from None
        finally:
            self._calls.discard(call)
