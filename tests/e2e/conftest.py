"""A real hub server on port 0 and a raw WebSocket client that speaks frames as plain dicts.

``start_server(...)`` starts a hub (on a fresh SQLite file by default) behind a HubServer;
``server`` is one with auth on. ``RawAgent`` reads frames under a timeout and can wait for a
frame of one type while keeping the others for later reads, so tests never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetchat import Hub, HubSettings, Message
from fleetchat.client import Agent
from fleetchat.config import ChatSettings, RegistrySettings, ServerSettings
from fleetchat.server import HubServer

FRAME_TIMEOUT = 5.0
"""Longest a test waits for one frame, in seconds."""


@dataclass(frozen=True)
class Delivery:
    """One message of a ``deliver`` frame, with its tag and attempt number."""

    tag: int
    message: dict[str, Any]
    attempt: int

    @property
    def id(self) -> str:
        return str(self.message["id"])

    @property
    def body(self) -> Any:
        return self.message.get("body")


class Closed(Exception):
    """The server closed the WebSocket while a frame was awaited."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"websocket closed with code {code}")
        self.code = code


class RawAgent:
    """A WebSocket client that sends and receives frames as dicts, with nothing hidden."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.all_deliveries: list[Delivery] = []
        """Every delivery read so far, hub announcements included."""
        self._held: deque[dict[str, Any]] = deque()
        self._spare: deque[Delivery] = deque()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_json(frame)

    async def _read(self, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame: dict[str, Any] = msg.json()
                    return frame
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    raise Closed(self.ws.close_code)

    async def recv(self, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        """The next frame (held ones first)."""
        if self._held:
            return self._held.popleft()
        return await self._read(timeout)

    async def expect(
        self, type_: str, *, timeout: float = FRAME_TIMEOUT, **match: Any
    ) -> dict[str, Any]:
        """The next frame of ``type_`` whose fields equal ``match``; others are held."""

        def fits(frame: dict[str, Any]) -> bool:
            return frame.get("type") == type_ and all(frame.get(k) == v for k, v in match.items())

        for frame in list(self._held):
            if fits(frame):
                self._held.remove(frame)
                return frame
        async with asyncio.timeout(timeout):
            while True:
                frame = await self._read(timeout)
                if fits(frame):
                    return frame
                self._held.append(frame)

    async def deliveries(
        self, count: int, *, timeout: float = FRAME_TIMEOUT, system: bool = False
    ) -> list[Delivery]:
        """The next ``count`` delivered messages, in order. Hub announcements (kind ``system``)
        are skipped unless ``system``; ``all_deliveries`` records them all."""
        out: list[Delivery] = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                if not self._spare:
                    frame = await self.expect("deliver", timeout=timeout)
                    for d in expand(frame):
                        self.all_deliveries.append(d)
                        if system or d.message.get("kind") != "system":
                            self._spare.append(d)
                    continue
                out.append(self._spare.popleft())
        return out

    async def subscribe(self, *channels: str, id: str = "sub") -> dict[str, Any]:
        await self.send({"type": "subscribe", "id": id, "channels": list(channels)})
        return await self.expect("ok", id=id)

    async def publish(
        self, channel: str, body: Any, *, id: str, priority: str = "normal", **extra: Any
    ) -> dict[str, Any]:
        await self.send(
            {
                "type": "publish",
                "id": id,
                "channel": channel,
                "body": body,
                "priority": priority,
                **extra,
            }
        )
        return await self.expect_reply(id)

    async def expect_reply(self, id: str, *, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        """The ``published`` / ``reply`` / ``error`` frame answering frame ``id``."""
        async with asyncio.timeout(timeout):
            while True:
                for frame in list(self._held):
                    if frame.get("id") == id and frame.get("type") in _ANSWERS:
                        self._held.remove(frame)
                        return frame
                frame = await self._read(timeout)
                if frame.get("id") == id and frame.get("type") in _ANSWERS:
                    return frame
                self._held.append(frame)

    async def ack(self, upto: int) -> None:
        await self.send({"type": "ack", "upto": upto})

    async def wait_closed(self, timeout: float = FRAME_TIMEOUT) -> int | None:
        """Read until the server closes the socket; returns the close code."""
        with contextlib.suppress(Closed):
            async with asyncio.timeout(timeout):
                while True:
                    self._held.append(await self._read(timeout))
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


_ANSWERS = frozenset({"published", "reply", "error", "ok"})


def expand(frame: dict[str, Any]) -> list[Delivery]:
    """The deliveries of one ``deliver`` frame."""
    messages = frame["messages"]
    attempts = frame.get("attempts") or [1] * len(messages)
    first = frame["first_tag"]
    return [
        Delivery(first + i, m, a) for i, (m, a) in enumerate(zip(messages, attempts, strict=True))
    ]


@dataclass
class RunningServer:
    """A started hub behind a HubServer, with an HTTP session for REST calls."""

    hub: Hub
    server: HubServer
    http: aiohttp.ClientSession
    _agents: list[RawAgent] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "/v1/ws"

    async def token(self, agent_id: str, *, admin: bool = False) -> str:
        return await self.server.auth.create(agent_id, admin=admin)

    async def open(self) -> RawAgent:
        """A WebSocket that has said nothing yet (closed at teardown)."""
        agent = RawAgent(await self.http.ws_connect(self.ws_url))
        self._agents.append(agent)
        return agent

    async def connect(self, agent_id: str, token: str | None = None, **hello: Any) -> RawAgent:
        """Open a WebSocket, say hello and wait for the welcome."""
        agent = await self.open()
        await agent.send({"type": "hello", "agent_id": agent_id, "token": token, **hello})
        welcome = await agent.recv()
        assert welcome["type"] == "welcome", welcome
        agent.welcome = welcome
        return agent

    async def agent(self, agent_id: str, *, admin: bool = False, **hello: Any) -> RawAgent:
        """A connected agent with a token of its own (when auth is on)."""
        token = await self.token(agent_id, admin=admin) if self.server.auth.enabled else None
        return await self.connect(agent_id, token, **hello)

    async def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        """A REST call: (status, decoded JSON body or None)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as r:
            text = await r.text()
            if r.content_type == "application/json" and text:
                return r.status, await r.json()
            return r.status, text or None

    async def aclose(self) -> None:
        for agent in self._agents:
            await agent.close()


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start hubs with their servers; every one is closed at teardown."""
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def start(
            *,
            auth: bool = True,
            url: str | None = None,
            chat: ChatSettings | None = None,
            registry: RegistrySettings | None = None,
            server: ServerSettings | None = None,
        ) -> RunningServer:
            nonlocal count
            count += 1
            settings = HubSettings(
                url=url or f"sqlite:///{tmp_path / f'hub{count}.db'}",
                chat=chat or ChatSettings(),
                registry=registry or RegistrySettings(),
                server=server or ServerSettings(auth=auth),
            )
            hub = await stack.enter_async_context(Hub(settings))
            srv = await stack.enter_async_context(HubServer(hub, port=0))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            running = RunningServer(hub, srv, http)
            stack.push_async_callback(running.aclose)
            return running

        yield start


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """A hub with auth on, on a fresh SQLite file, served on a free port."""
    return await start_server(auth=True)


MakeAgent = Callable[..., Agent]


@pytest.fixture
async def agents() -> AsyncIterator[MakeAgent]:
    """Build agents; every one is closed (without draining) at teardown."""
    made: list[Agent] = []

    def make(*args: Any, **kwargs: Any) -> Agent:
        agent = Agent(*args, **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.close(drain=False)


def chats(messages: list[Message]) -> list[Any]:
    """Bodies of the messages that are not hub announcements."""
    return [m.body for m in messages if m.kind != "system"]
