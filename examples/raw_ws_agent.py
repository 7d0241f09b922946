"""A fleetchat agent that speaks the wire protocol directly (docs/protocol.md), without the SDK.

It uses only the standard library and aiohttp, so it doubles as a template for agents in other
languages. The scripted session:

1. connect to the hub's WebSocket and say ``hello`` (with capabilities and a token);
2. ``subscribe`` to a channel;
3. ``publish`` a greeting there, then publish it again with the same id (an idempotent retry:
   the hub answers ``duplicate: true`` and does not post it twice);
4. receive ``--expect`` chat messages from the others in the channel, acking cumulatively;
5. answer ``--answer`` requests addressed to it;
6. ask ``--ask`` (an agent id or a channel) a question and print the reply;
7. close the WebSocket with 1000 and exit 0. Any failure prints the reason and exits 1.

Run against ``fleetchat serve`` (auth on, with a token from ``fleetchat token create``)::

    python examples/raw_ws_agent.py --url ws://127.0.0.1:8765/v1/ws --token fct_... \\
        --agent-id raw-agent --channel cell-1 --expect 0 --answer 0

The URL, token and agent id also come from FLEETCHAT_URL, FLEETCHAT_TOKEN and
FLEETCHAT_AGENT_ID. An ``http://host:port`` URL is turned into ``ws://host:port/v1/ws``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
from typing import Any

import aiohttp

PROTOCOL_VERSION = 1


class ProtocolError(Exception):
    """The hub answered a frame with an ``error`` frame, or closed the connection."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.details = details or {}


def ws_url(url: str) -> str:
    """``http://h:p`` or ``ws://h:p`` (with or without ``/v1/ws``) -> ``ws://h:p/v1/ws``."""
    if url.startswith("http://") or url.startswith("https://"):
        url = "ws" + url[len("http") :]
    url = url.rstrip("/")
    return url if url.endswith("/v1/ws") else url + "/v1/ws"


class Connection:
    """One WebSocket session: frames out as dicts, frames in dispatched by type.

    Answers to frames with an ``id`` (``ok``, ``published``, ``reply``, ``error``) resolve the
    future of that id; ``deliver`` frames go to ``deliveries``; every other frame is printed.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.deliveries: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps({"v": PROTOCOL_VERSION, **frame}))

    async def call(self, frame: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a frame that carries an ``id`` and wait for the frame answering it."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[frame["id"]] = fut
        try:
            await self.send(frame)
            async with asyncio.timeout(timeout):
                answer = await fut
        finally:
            self._waiting.pop(frame["id"], None)
        if answer["type"] == "error":
            raise ProtocolError(answer["code"], answer["message"], answer.get("details"))
        return answer

    async def read(self) -> None:
        """Read frames until the connection closes."""
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                kind = frame.get("type")
                waiter = self._waiting.get(frame.get("id") or "")
                if kind == "deliver":
                    await self.deliveries.put(frame)
                elif waiter is not None and not waiter.done():
                    waiter.set_result(frame)
                elif kind == "error":
                    print(f"hub error: [{frame['code']}] {frame['message']}", flush=True)
                else:
                    print(f"unexpected frame: {frame}", flush=True)
        finally:
            code = self.ws.close_code
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ProtocolError("closed", f"connection closed ({code})"))
            if not self.closed.done():
                self.closed.set_result(code)
            await self.deliveries.put(None)


class ScriptedAgent:
    """What the agent does with its deliveries, and the counts the script waits for."""

    def __init__(self, conn: Connection, agent_id: str, channel: str, expect: int, answer: int):
        self.conn = conn
        self.agent_id = agent_id
        self.channel = channel
        self.expect = expect
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        self.answered = 0
        self.seen: set[str] = set()
        self.done = asyncio.Event()
        self._check_done()

    def _check_done(self) -> None:
        if len(self.received) >= self.expect and self.answered >= self.answer:
            self.done.set()

    async def consume(self) -> None:
        """Handle every deliver frame, then ack all of it at once with ``upto``."""
        while (frame := await self.conn.deliveries.get()) is not None:
            first = frame["first_tag"]
            attempts = frame.get("attempts") or [1] * len(frame["messages"])
            for i, message in enumerate(frame["messages"]):
                await self.handle(first + i, message, attempts[i])
            last = first + len(frame["messages"]) - 1
            # Cumulative: settles every delivery up to `last` on this connection. Requests
            # need no ack (acking them is harmless); they are answered with a reply frame.
            await self.conn.send({"type": "ack", "upto": last})
            print(f"acked upto tag {last}", flush=True)
            self._check_done()

    async def handle(self, tag: int, message: dict[str, Any], attempt: int) -> None:
        kind = message.get("kind", "chat")  # fields at their default are left out
        sender = message["sender"]
        if kind == "request":
            await self.conn.send(
                {"type": "reply", "tag": tag, "body": {"from": self.agent_id, "ok": True}}
            )
            self.answered += 1
            print(f"answered request from {sender}: {json.dumps(message.get('body'))}", flush=True)
            return
        if message["id"] in self.seen:  # a redelivery (same message id): handle once
            print(f"duplicate of {message['id']} (attempt {attempt}) skipped", flush=True)
            return
        self.seen.add(message["id"])
        where = f"{message['channel']}#{message.get('seq', 0)}"
        if kind == "system":
            print(f"hub notice in {where}: {message.get('body', {}).get('text')}", flush=True)
            return
        if message["channel"] == self.channel:
            self.received.append(message)
        print(f"received {where} from {sender}: {json.dumps(message.get('body'))}", flush=True)


async def heartbeats(conn: Connection, interval: float) -> None:
    """A registered agent is offline after 3 missed heartbeats, even while connected."""
    while True:
        await asyncio.sleep(interval)
        await conn.send({"type": "heartbeat", "resources": {"battery": 0.9}})


async def run(args: argparse.Namespace) -> None:
    url = ws_url(args.url)
    # Deliver frames are not bounded by the hub's max_frame_bytes: accept any size.
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        conn = Connection(ws)
        await conn.send(
            {
                "type": "hello",
                "agent_id": args.agent_id,
                "token": args.token,
                "capabilities": {"inspect": 0.9},
                "capacity": 1,
                "labels": {"lang": "raw-websocket"},
                "window": args.window,
            }
        )
        first = await asyncio.wait_for(ws.receive(), args.timeout)
        if first.type != aiohttp.WSMsgType.TEXT:
            raise ProtocolError("closed", f"no welcome: the hub closed ({ws.close_code})")
        welcome = json.loads(first.data)
        if welcome["type"] == "error":
            raise ProtocolError(welcome["code"], welcome["message"], welcome.get("details"))
        print(
            f"connected as {welcome['agent_id']} (session {welcome['session']}, window "
            f"{welcome['window']}, heartbeat every {welcome['heartbeat_interval']} s)",
            flush=True,
        )
        agent = ScriptedAgent(conn, args.agent_id, args.channel, args.expect, args.answer)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(conn.read())
            consumer = tg.create_task(agent.consume())
            beats = tg.create_task(heartbeats(conn, welcome["heartbeat_interval"]))
            try:
                await script(conn, agent, args)
            finally:
                beats.cancel()
                await ws.close()
                await reader
                consumer.cancel()


async def script(conn: Connection, agent: ScriptedAgent, args: argparse.Namespace) -> None:
    ok = await conn.call(
        {"type": "subscribe", "id": conn.new_id("sub"), "channels": [args.channel]}, args.timeout
    )
    print(f"subscribed: {', '.join(ok['channels'])}", flush=True)

    publish = {
        "type": "publish",
        "id": conn.new_id("greeting"),
        "channel": args.channel,
        "body": {"text": f"hello from {args.agent_id}"},
        "priority": "high",
    }
    published = await conn.call(publish, args.timeout)
    print(f"published seq {published['seq']} (message {published['message_id']})", flush=True)
    again = await conn.call(publish, args.timeout)  # the same id: a safe retry
    print(f"retried publish: duplicate={again['duplicate']} seq {again['seq']}", flush=True)
    if not again["duplicate"] or again["message_id"] != published["message_id"]:
        raise ProtocolError("protocol", "a retried publish was posted again")

    await asyncio.wait_for(agent.done.wait(), args.timeout)

    if args.ask:
        reply = await conn.call(
            {
                "type": "request",
                "id": conn.new_id("ask"),
                "target": args.ask,
                "body": {"question": "status?"},
                "timeout": args.request_timeout,
            },
            args.timeout,
        )
        for m in reply["replies"]:
            print(
                f"asked {args.ask}: {m['sender']} replied {json.dumps(m.get('body'))}", flush=True
            )
    print(
        f"done: {len(agent.received)} messages received, {agent.answered} requests answered, "
        f"{1 if args.ask else 0} asked",
        flush=True,
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=env.get("FLEETCHAT_URL", "ws://127.0.0.1:8765/v1/ws"))
    parser.add_argument("--token", default=env.get("FLEETCHAT_TOKEN"))
    parser.add_argument("--agent-id", default=env.get("FLEETCHAT_AGENT_ID", "raw-agent"))
    parser.add_argument("--channel", default="cell-1")
    parser.add_argument("--expect", type=int, default=3, help="chat messages to wait for")
    parser.add_argument("--answer", type=int, default=1, help="requests to wait for and answer")
    parser.add_argument("--ask", default=None, help="agent id or channel to send a request to")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--request-timeout", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="longest wait, in seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(run(args))
    except (ExceptionGroup, ProtocolError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        for error in leaves(exc):
            print(f"failed: {error!r}", file=sys.stderr, flush=True)
        return 1
    return 0


def leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, as a flat list."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
