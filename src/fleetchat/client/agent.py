"""``Agent``: an agent process connected to a hub over the WebSocket protocol."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar, overload

from fleetchat import protocol as p
from fleetchat.client.core import AgentCore
from fleetchat.client.leases import LeaseClient
from fleetchat.client.rest import HubClient
from fleetchat.client.stream import MessageStream
from fleetchat.client.task_work import TaskRunner, TaskWork
from fleetchat.client.wire import DEFAULT_HUB
from fleetchat.errors import InvalidInputError
from fleetchat.models import Message
from fleetchat.types import Priority, new_id, parse_priority

__all__ = ["Agent"]

H = TypeVar("H", bound=Callable[..., Any])
T = TypeVar("T", bound=Callable[..., Awaitable[Any]])

_PATTERN_CHARS = frozenset("*?[")


class Agent(AgentCore):
    """An agent connected to a fleetchat hub: handlers in, publishes and requests out.

    Example::

        agent = Agent("amr-7", capabilities={"transport": 0.9}, hub="http://hub:8765")

        @agent.on_message(channel="cell-1")
        async def on_chat(msg: Message) -> None:
            print(msg.sender, msg.body)

        agent.run()  # until SIGTERM / Ctrl-C: drains, acks, closes

    Use ``async with agent:`` (or ``await agent.start()`` / ``await agent.close()``) inside
    your own event loop, ``await agent.run_async()`` to serve until a signal, or the blocking
    ``agent.run()``. The connection is re-established after a drop (jittered exponential
    backoff, capped at 3 s); unconfirmed publishes and requests are sent again; redeliveries
    of messages already handled are acked without calling the handler again.

    Args:
        agent_id: this agent's id (and, with auth on, the token's agent).
        capabilities: when given, the agent is registered with them at every hello.
        hub: the hub's URL (``http(s)://host:port``; ``ws(s)://`` works too).
        token: access token, needed when the hub has auth on.
        capacity: most tasks it runs at once (registry).
        labels: free-form labels (registry).
        window: most unacked deliveries the hub sends ahead.
        heartbeat_interval: seconds between heartbeats; None uses the hub's (from welcome).
        concurrency: most handlers running at once. Default 16.
        connect_timeout: how long ``start()`` keeps trying to reach the hub; 0 tries once.
        drain_timeout: how long ``close()`` waits for running handlers. Default 10 s.
        dedupe_size: message ids remembered to drop redeliveries (LRU). Default 10,000.
        tracer_provider: an OpenTelemetry TracerProvider: the agent continues the traces of
            the messages and tasks it handles (docs/tracing.md). Default: the process's global
            provider, when one was set before ``start()``; else no tracing.
    """

    def __init__(
        self,
        agent_id: str,
        capabilities: Mapping[str, float] | None = None,
        hub: str = DEFAULT_HUB,
        token: str | None = None,
        capacity: int = 1,
        labels: Mapping[str, str] | None = None,
        window: int = 256,
        heartbeat_interval: float | None = None,
        *,
        concurrency: int = 16,
        connect_timeout: float = 10.0,
        drain_timeout: float = 10.0,
        dedupe_size: int = 10_000,
        tracer_provider: Any = None,
    ) -> None:
        super().__init__(
            agent_id,
            capabilities,
            hub,
            token,
            capacity,
            labels,
            window,
            heartbeat_interval,
            concurrency=concurrency,
            connect_timeout=connect_timeout,
            drain_timeout=drain_timeout,
            dedupe_size=dedupe_size,
            tracer_provider=tracer_provider,
        )
        self._leases: LeaseClient | None = None
        self._lease_rest: HubClient | None = None
        self._tasks = TaskRunner(self._task_call, capacity, self._tracing)
        # The hub's task notices (offers, cancels, calls for proposals) only: other "task"
        # messages go to the agent's own handlers and streams.
        self._dispatcher.add_handler(self._tasks.on_notice, None, "task", sender="$hub")

    # -- handlers -------------------------------------------------------------------------

    def on_message(self, channel: str | None = None, kind: str | None = None) -> Callable[[H], H]:
        """Register ``async def handler(msg: Message) -> None`` for messages (not requests).

        ``channel`` is a name or an fnmatch pattern (``"cell-*"``); None takes every channel,
        the inbox ``@<agent_id>`` included. A plain channel name is also subscribed at start.
        ``kind`` filters by message kind (``chat``, ``task``, ``system``, ...). Every matching
        handler runs, in registration order. Returning acks the delivery; raising nacks it
        (raise :class:`Nack` to choose the retry delay or the dead letters).
        """

        def register(fn: H) -> H:
            _check_async(fn)
            self._dispatcher.add_handler(fn, channel, kind)
            self._want(channel)
            return fn

        return register

    def on_request(self, channel: str | None = None) -> Callable[[H], H]:
        """Register ``async def handler(msg: Message) -> body`` answering requests.

        The first matching handler answers with what it returns. If it raises, no reply is
        sent and the requester gets ``request_timeout``. ``channel`` as in :meth:`on_message`
        (a request sent to this agent's id arrives on ``@<agent_id>``).
        """

        def register(fn: H) -> H:
            _check_async(fn)
            self._dispatcher.add_request_handler(fn, channel)
            self._want(channel)
            return fn

        return register

    @overload
    def on_task(self, fn: T, /) -> T: ...

    @overload
    def on_task(
        self, fn: None = None, /, *, accept: Callable[[TaskWork], bool] | None = None
    ) -> Callable[[T], T]: ...

    def on_task(
        self, fn: T | None = None, /, *, accept: Callable[[TaskWork], bool] | None = None
    ) -> T | Callable[[T], T]:
        """Register ``async def handler(work: TaskWork) -> result`` for the tasks the hub
        offers this agent (docs/tasks.md). Returning reports the result; raising reports a
        failure (the hub retries elsewhere within the task's budget). ``accept(work)`` may
        decline an offer (the next candidate gets it); offers beyond ``capacity`` running at
        once are declined too. A task with a heartbeat timeout is heartbeated while the
        handler runs; ``await work.progress(0.5)`` reports progress (and is a heartbeat).
        """

        def register(handler: T) -> T:
            _check_async(handler)
            self._tasks.handler = handler
            self._tasks.accept = accept
            return handler

        return register(fn) if fn is not None else register

    def on_cfp(self, fn: T) -> T:
        """Register ``async def bid(cfp: CallForProposals) -> (cost, eta) | None`` for task
        auctions: return a bid, or None to stay out."""
        _check_async(fn)
        self._tasks.bidder = fn
        return fn

    @property
    def tasks_running(self) -> list[str]:
        """Ids of the tasks this agent's handler runs now."""
        return list(self._tasks.running)

    async def _task_call(self, frame: p.TaskReport) -> Any:
        return await self._call(frame, timeout=30)

    def messages(self, channel: str | None = None, kind: str | None = None) -> MessageStream:
        """Messages no handler takes, as an async iterator (see :class:`MessageStream`).

        Open it before ``start()`` to miss nothing; ``channel`` is subscribed like a handler's.
        """
        self._want(channel)
        return self._dispatcher.open_stream(channel, kind)

    def _want(self, channel: str | None) -> None:
        if channel and channel[0] not in "@$" and not _PATTERN_CHARS & set(channel):
            self._channels.add(channel)

    @property
    def channels(self) -> list[str]:
        """The channels this agent subscribed to (its inbox is always delivered too)."""
        return sorted(self._channels)

    @property
    def leases(self) -> LeaseClient:
        """Leases on shared resources, held by this agent (over the hub's REST API)::

            async with agent.leases.hold("dock-1", ttl=30, timeout=10) as lease:
                ...  # send lease.token with every command to the dock

        The hub releases them when this agent goes offline.
        """
        if self._leases is None:
            self._lease_rest = HubClient(self.hub, self.token)
            self._leases = LeaseClient(self._lease_rest, holder=self.agent_id)
        return self._leases

    async def close(self, *, drain: bool = True) -> None:
        try:
            await self._tasks.stop()
            await super().close(drain=drain)
        finally:
            if self._lease_rest is not None:
                await self._lease_rest.close()

    def update_resources(self, **resources: Any) -> None:
        """Live state (battery, position, ...) sent with the next heartbeat."""
        self._resources = {**(self._resources or {}), **resources}

    # -- messaging ------------------------------------------------------------------------

    async def subscribe(self, *channels: str) -> list[str]:
        """Join ``channels`` (created when missing); returns every channel the agent is in.

        Membership lives in the hub and outlasts the connection; it is renewed after a
        reconnect all the same.
        """
        ok: p.Ok = await self._call(p.Subscribe(id=new_id(), channels=list(channels)), timeout=30)
        self._channels.update(channels)
        return ok.channels

    async def unsubscribe(self, channel: str) -> list[str]:
        """Leave ``channel``; returns the channels the agent is still in."""
        self._channels.discard(channel)
        ok: p.Ok = await self._call(p.Unsubscribe(id=new_id(), channel=channel), timeout=30)
        return ok.channels

    async def publish(
        self,
        channel: str,
        body: Any = None,
        *,
        priority: Priority | str = Priority.NORMAL,
        kind: str = "chat",
        expires_in: float | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        timeout: float = 30.0,
    ) -> p.Published:
        """Publish to a channel (or ``@agent``); returns once the hub has committed it.

        A publish not yet confirmed when the connection drops is sent again, with the same
        ``id``, after reconnecting. Pass your own ``id`` (1-64 characters) to retry safely
        yourself.

        Returns:
            ``Published``: ``channel``, ``seq``, ``message_id`` and ``duplicate`` (True when
            the hub had already taken this id).

        Raises:
            ChannelNotFoundError, ForbiddenError, MessageTooLargeError, ...: the hub's answer.
            HubUnavailableError: no confirmation within ``timeout`` seconds.
        """
        frame = p.Publish(
            id=id or new_id(),
            channel=channel,
            body=body,
            priority=parse_priority(priority),
            kind=kind,
            expires_in=expires_in,
            headers=self._tracing.headers(headers),
        )
        published: p.Published = await self._call(frame, timeout=timeout)
        return published

    @overload
    async def request(
        self,
        target: str,
        body: Any = ...,
        *,
        timeout: float = ...,
        collect: Literal[False] = ...,
        priority: Priority | str = ...,
    ) -> Message: ...

    @overload
    async def request(
        self,
        target: str,
        body: Any = ...,
        *,
        timeout: float = ...,
        collect: Literal[True],
        priority: Priority | str = ...,
    ) -> list[Message]: ...

    async def request(
        self,
        target: str,
        body: Any = None,
        *,
        timeout: float = 5.0,
        collect: bool = False,
        priority: Priority | str = Priority.NORMAL,
    ) -> Message | list[Message]:
        """Ask an agent (its id or ``@id``) or every member of a channel, and wait.

        Returns the first reply (a Message of kind ``reply``; its ``body`` is the answer), or
        with ``collect=True`` every reply that arrived within ``timeout``.

        Raises:
            RequestTimeoutError: no reply within ``timeout`` seconds (also a TimeoutError).
            ChannelNotFoundError / AgentNotFoundError: no such target.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidInputError("timeout must be a positive number of seconds", field="timeout")
        frame = p.Request(
            id=new_id(),
            target=target,
            body=body,
            timeout=timeout,
            collect=collect,
            priority=parse_priority(priority),
        )
        # The hub answers request_timeout at ``timeout``; the margin covers the round trip.
        replies: list[Message] = await self._call(
            frame, timeout=timeout + 1.0, deadline=time.monotonic() + timeout
        )
        return replies if collect else replies[0]


def _check_async(fn: Callable[..., Any]) -> None:
    call = getattr(fn, "__call__", None)  # noqa: B004 - also async callable objects
    if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)):
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} must be an async def function")
