"""The wire protocol from the outside: raw WebSocket frames against a real server on port 0.

examples/raw_ws_agent.py, written from docs/protocol.md alone, runs as a subprocess against a hub
with auth on while an in-test peer publishes to it, asks it and answers it over its own raw
WebSocket. The other tests pin what docs/protocol.md promises: the window, cumulative acks,
redelivery after a disconnect, ``resume``, ack timeouts, nack, idempotent publish.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fleetchat import ChatSettings, Hub, HubSettings, QosSettings, ServerSettings
from fleetchat.server import HubServer
from fleetchat.testing import assert_eventually
from fleetchat.types import Priority

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "raw_ws_agent.py"
FRAME_TIMEOUT = 5.0


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"websocket closed with code {code}")
        self.code = code


@dataclass(frozen=True)
class Delivery:
    tag: int
    attempt: int
    message: dict[str, Any]


class RawClient:
    """Frames as dicts. Deliver frames are split into one ``Delivery`` per message; frames a
    test does not wait for yet are held for later ``expect`` calls."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.held: list[dict[str, Any] | Delivery] = []
        self.deliver_frames: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_json(frame)

    async def _read(self) -> None:
        msg = await self.ws.receive()
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise Closed(self.ws.close_code)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = msg.json()
        if frame["type"] != "deliver":
            self.held.append(frame)
            return
        self.deliver_frames.append(frame)
        attempts = frame.get("attempts") or [1] * len(frame["messages"])
        for i, m in enumerate(frame["messages"]):
            self.held.append(Delivery(frame["first_tag"] + i, attempts[i], m))

    async def _take(self, fits: Callable[[Any], bool], timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for item in self.held:
                    if fits(item):
                        self.held.remove(item)
                        return item
                await self._read()

    async def expect(
        self, type_: str, timeout: float = FRAME_TIMEOUT, **match: Any
    ) -> dict[str, Any]:
        """The next frame of ``type_`` whose fields equal ``match`` (not deliveries)."""

        def fits(f: Any) -> bool:
            return (
                isinstance(f, dict)
                and f["type"] == type_
                and all(f.get(k) == v for k, v in match.items())
            )

        frame: dict[str, Any] = await self._take(fits, timeout)
        return frame

    async def delivery(
        self,
        fits: Callable[[dict[str, Any]], bool] = lambda m: True,
        timeout: float = FRAME_TIMEOUT,
    ) -> Delivery:
        """The next delivery whose message passes ``fits``; hub notices are skipped."""

        def match(d: Any) -> bool:
            return isinstance(d, Delivery) and d.message.get("kind") != "system" and fits(d.message)

        d: Delivery = await self._take(match, timeout)
        return d

    async def deliveries(self, n: int, timeout: float = FRAME_TIMEOUT) -> list[Delivery]:
        return [await self.delivery(timeout=timeout) for _ in range(n)]

    async def nothing_delivered(self, within: float) -> bool:
        """True when no non-system delivery arrives within ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            await self.delivery(timeout=within)
            return False
        return True

    async def subscribe(self, *channels: str) -> dict[str, Any]:
        await self.send({"type": "subscribe", "id": "sub", "channels": list(channels)})
        return await self.expect("ok", id="sub")

    async def publish(self, channel: str, body: Any, *, id: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "publish", "id": id, "channel": channel, "body": body, **extra})
        async with asyncio.timeout(FRAME_TIMEOUT):
            while True:
                for f in self.held:
                    if (
                        isinstance(f, dict)
                        and f.get("id") == id
                        and f["type"] in ("published", "error")
                    ):
                        self.held.remove(f)
                        return f
                await self._read()


@dataclass
class Served:
    hub: Hub
    server: HubServer
    http: aiohttp.ClientSession

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "/v1/ws"

    async def connect(self, agent_id: str, **hello: Any) -> RawClient:
        if self.server.auth.enabled and "token" not in hello:
            hello["token"] = await self.server.auth.create(agent_id)
        client = RawClient(await self.http.ws_connect(self.ws_url))
        await client.send({"v": 1, "type": "hello", "agent_id": agent_id, **hello})
        welcome = await client.expect("welcome")
        assert welcome["agent_id"] == agent_id
        return client


@contextlib.asynccontextmanager
async def serve(
    url: str = "memory://",
    *,
    auth: bool = True,
    chat: ChatSettings | None = None,
    server: ServerSettings | None = None,
) -> AsyncIterator[Served]:
    settings = HubSettings(
        url=url, chat=chat or ChatSettings(), server=server or ServerSettings(auth=auth)
    )
    async with (
        Hub(settings) as hub,
        HubServer(hub, port=0) as srv,
        aiohttp.ClientSession() as http,
    ):
        yield Served(hub, srv, http)


def fast_qos(max_attempts: int = 2) -> ChatSettings:
    qos = {
        p: QosSettings(ack_timeout=0.3, max_attempts=max_attempts, backoff_base=0.05)
        for p in Priority
    }
    return ChatSettings(qos=qos)


# -- the example agent ---------------------------------------------------------------------


def test_raw_agent_example_imports_nothing_from_fleetchat() -> None:
    tree = ast.parse(EXAMPLE.read_text(), filename=str(EXAMPLE))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            modules.add(node.module or "")
    tops = {m.split(".")[0] for m in modules}
    assert "fleetchat" not in tops
    assert tops - set(sys.stdlib_module_names) == {"aiohttp"}


async def test_raw_agent_example_runs_a_full_session_against_a_hub_with_auth(
    tmp_path: Path,
) -> None:
    async with serve(f"sqlite:///{tmp_path / 'hub.db'}") as s:
        peer = await s.connect("peer")
        await peer.subscribe("cell-1")
        token = await s.server.auth.create("raw-agent")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            "--url",
            s.server.url,
            "--agent-id",
            "raw-agent",
            "--channel",
            "cell-1",
            "--expect",
            "3",
            "--answer",
            "1",
            "--ask",
            "peer",
            env={**os.environ, "FLEETCHAT_TOKEN": token},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            greeting = await peer.delivery(lambda m: m["sender"] == "raw-agent", timeout=20)
            await peer.send({"type": "ack", "upto": greeting.tag})
            for i in range(3):
                published = await peer.publish("cell-1", {"n": i}, id=f"m{i}")
                assert published["type"] == "published"
            await peer.send(
                {
                    "type": "request",
                    "id": "q1",
                    "target": "raw-agent",
                    "body": "ready?",
                    "timeout": 10,
                }
            )
            answer = await peer.expect("reply", id="q1", timeout=20)
            asked = await peer.delivery(lambda m: m.get("kind") == "request", timeout=20)
            await peer.send({"type": "reply", "tag": asked.tag, "body": {"status": "docked"}})
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stdout = out.decode()
        assert proc.returncode == 0, stdout + err.decode()
        assert greeting.message["body"] == {"text": "hello from raw-agent"}
        assert greeting.message["priority"] == "high"
        assert answer["replies"][0]["sender"] == "raw-agent"
        assert answer["replies"][0]["body"] == {"from": "raw-agent", "ok": True}
        assert asked.message["sender"] == "raw-agent"
        assert "retried publish: duplicate=True" in stdout
        for i in range(3):
            assert f'from peer: {{"n": {i}}}' in stdout
        assert 'peer replied {"status": "docked"}' in stdout
        assert "done: 3 messages received, 1 requests answered, 1 asked" in stdout
        greetings = [m for m in await s.hub.channels.history("cell-1") if m.sender == "raw-agent"]
        assert len(greetings) == 1  # the retried publish was not posted twice
        assert s.hub.registry.get("raw-agent").capabilities == {"inspect": 0.9}


# -- flow control and acks -----------------------------------------------------------------


async def test_no_more_deliveries_than_the_window_until_an_ack() -> None:
    async with serve() as s:
        await s.hub.channels.create("ch", announce=False)
        reader = await s.connect("reader", window=2)
        assert (await reader.subscribe("ch"))["channels"] == ["@reader", "ch"]
        writer = await s.connect("writer")
        for i in range(5):
            await writer.publish("ch", i, id=f"p{i}")
        first = await reader.deliveries(2)
        assert [d.tag for d in first] == [1, 2]
        assert await reader.nothing_delivered(within=0.2)
        await reader.send({"type": "ack", "upto": 2})
        more = await reader.deliveries(2)
        assert [d.tag for d in more] == [3, 4]
        assert [d.message["body"] for d in first + more] == [0, 1, 2, 3]


async def test_a_hello_without_a_window_gets_the_servers_default_window() -> None:
    async with serve(server=ServerSettings(auth=False, default_window=10)) as s:
        client = RawClient(await s.http.ws_connect(s.ws_url))
        await client.send({"type": "hello", "agent_id": "agent-1"})
        assert (await client.expect("welcome"))["window"] == 10


async def test_cumulative_ack_settles_every_tag_up_to_it_and_the_rest_comes_back() -> None:
    async with serve() as s:
        await s.hub.channels.create("ch", announce=False)
        reader = await s.connect("reader")
        await reader.subscribe("ch")
        writer = await s.connect("writer")
        for i in range(4):
            await writer.publish("ch", i, id=f"p{i}")
        got = await reader.deliveries(4)
        await reader.send({"type": "ack", "upto": got[1].tag, "tags": [got[3].tag]})
        await reader.ws.close()

        again = await s.connect("reader")
        redelivered = await again.delivery()
        assert redelivered.message["id"] == got[2].message["id"]
        assert redelivered.tag == 1  # tags start again at 1 on every connection
        assert redelivered.attempt == 1  # a disconnect does not count as a failed attempt
        assert await again.nothing_delivered(within=0.2)


async def test_resume_in_hello_settles_what_the_client_already_processed(tmp_path: Path) -> None:
    async with serve(f"sqlite:///{tmp_path / 'hub.db'}") as s:
        await s.hub.channels.create("ch", announce=False)
        reader = await s.connect("reader")
        await reader.subscribe("ch")
        writer = await s.connect("writer")
        seqs = [(await writer.publish("ch", i, id=f"p{i}"))["seq"] for i in range(3)]
        await reader.deliveries(3)
        await reader.ws.close()  # processed all three, but the acks never left

        again = await s.connect("reader", resume={"ch": seqs[1]})
        rest = await again.delivery()
        assert rest.message["seq"] == seqs[2]
        assert await again.nothing_delivered(within=0.2)


async def test_ack_timeout_redelivers_with_attempts_then_dead_letters() -> None:
    async with serve(chat=fast_qos(max_attempts=2)) as s:
        await s.hub.channels.create("ch", announce=False)
        reader = await s.connect("reader")
        await reader.subscribe("ch")
        writer = await s.connect("writer")
        await writer.publish("ch", "slow", id="p1")
        first = await reader.delivery()
        second = await reader.delivery()  # no ack: it comes again after the ack timeout
        assert second.message["id"] == first.message["id"]
        assert (first.attempt, second.attempt) == (1, 2)
        assert second.tag > first.tag
        assert reader.deliver_frames[-1]["attempts"] == [2]
        assert "attempts" not in reader.deliver_frames[0]
        await assert_eventually(s.hub.dead_letters)  # the second failure dead-letters it
        letters = await s.hub.dead_letters()
        assert [(d.member, d.reason, d.attempts) for d in letters] == [("reader", "ack_timeout", 2)]
        assert letters[0].message.id == first.message["id"]
        assert await reader.nothing_delivered(within=0.2)


async def test_nack_retries_at_once_with_a_delay_of_zero_and_dead_letter_rejects() -> None:
    async with serve() as s:
        await s.hub.channels.create("ch", announce=False)
        reader = await s.connect("reader")
        await reader.subscribe("ch")
        writer = await s.connect("writer")
        await writer.publish("ch", "a", id="p1")
        first = await reader.delivery()
        await reader.send({"type": "nack", "tag": first.tag, "delay": 0})
        retry = await reader.delivery()
        assert (retry.message["id"], retry.attempt) == (first.message["id"], 2)
        await reader.send({"type": "nack", "tag": retry.tag, "dead_letter": True})
        await writer.publish("ch", "b", id="p2")  # something after the rejected one
        assert (await reader.delivery()).message["body"] == "b"
        await assert_eventually(s.hub.dead_letters)
        assert [(d.reason, d.attempts) for d in await s.hub.dead_letters()] == [("rejected", 2)]


# -- request / reply -----------------------------------------------------------------------


async def test_request_to_a_channel_collects_every_reply_and_requests_need_no_ack() -> None:
    async with serve() as s:
        await s.hub.channels.create("docks", announce=False)
        robots = [await s.connect(f"amr-{i}", window=1) for i in range(2)]
        for robot in robots:
            await robot.subscribe("docks")
        planner = await s.connect("planner")
        await planner.send(
            {
                "type": "request",
                "id": "r1",
                "target": "docks",
                "body": "status?",
                "timeout": 0.5,
                "collect": True,
            }
        )
        for i, robot in enumerate(robots):
            request = await robot.delivery()
            assert request.message["kind"] == "request"
            assert "seq" not in request.message  # requests are transient: seq 0, left out
            await robot.send({"type": "reply", "tag": request.tag, "body": {"dock": i}})
        answer = await planner.expect("reply", id="r1")
        assert sorted(m["sender"] for m in answer["replies"]) == ["amr-0", "amr-1"]
        assert all(m["kind"] == "reply" for m in answer["replies"])
        # The unacked request did not use up the window of 1: a chat message still comes.
        await planner.publish("docks", "next", id="p1")
        for robot in robots:
            assert (await robot.delivery()).message["body"] == "next"


async def test_request_without_a_reply_gets_a_request_timeout_error() -> None:
    async with serve() as s:
        await s.connect("sleepy")
        asker = await s.connect("asker")
        await asker.send({"type": "request", "id": "r1", "target": "@sleepy", "timeout": 0.2})
        error = await asker.expect("error", id="r1")
        assert error["code"] == "request_timeout"
        assert error["details"]["target"] == "@sleepy"


# -- publish -------------------------------------------------------------------------------


async def test_a_publish_retried_with_the_same_id_is_acknowledged_as_a_duplicate(
    tmp_path: Path,
) -> None:
    async with serve(f"sqlite:///{tmp_path / 'hub.db'}") as s:
        await s.hub.channels.create("ch", announce=False)
        writer = await s.connect("writer")
        first = await writer.publish("ch", "x", id="once")
        second = await writer.publish("ch", "x", id="once")
        await writer.ws.close()
        writer = await s.connect("writer")
        third = await writer.publish("ch", "x", id="once")
        assert first["duplicate"] is False
        assert second["duplicate"] is third["duplicate"] is True
        assert {f["message_id"] for f in (first, second, third)} == {first["message_id"]}
        assert len(await s.hub.channels.history("ch")) == 1


async def _publish_and_drop(s: Served, agent: str, prefix: str, count: int) -> None:
    """Send ``count`` publishes and close at once, while many are still being committed."""
    client = await s.connect(agent)
    for i in range(count):
        await client.send(
            {"type": "publish", "id": f"{prefix}-{i}", "channel": "ch", "body": f"{prefix}-{i}"}
        )
    await client.ws.close()


async def test_a_publish_retried_after_its_connection_dropped_is_not_posted_twice(
    tmp_path: Path,
) -> None:
    # Publishes still being committed when their connection closes are committed and recorded
    # (they used to be cancelled: committed but unknown to the ledger, so retries doubled them).
    async with serve(f"sqlite:///{tmp_path / 'hub.db'}") as s:
        await s.hub.channels.create("ch", announce=False)
        for r in range(3):
            await _publish_and_drop(s, "flaky", f"r{r}", 100)
        retry = await s.connect("flaky")
        for r in range(3):
            for i in range(100):
                await retry.publish("ch", f"r{r}-{i}", id=f"r{r}-{i}")
        counts = Counter(m.body for m in await s.hub.channels.history("ch"))
        assert [body for body, n in counts.items() if n > 1] == []


async def test_a_publish_acknowledged_after_another_connection_dropped_is_stored(
    tmp_path: Path,
) -> None:
    # A cancelled publish used to give its seq back while its row still committed: the next
    # publish reused the seq, was acknowledged, and its row was dropped (INSERT OR IGNORE).
    async with serve(f"sqlite:///{tmp_path / 'hub.db'}") as s:
        await s.hub.channels.create("ch", announce=False)
        steady = await s.connect("steady")
        lost = []
        for r in range(3):
            await _publish_and_drop(s, "flaky", f"r{r}", 100)
            ack = await steady.publish("ch", f"probe-{r}", id=f"probe-{r}")
            stored = await s.hub.channels.history("ch", start_seq=ack["seq"], end_seq=ack["seq"])
            if [m.body for m in stored] != [f"probe-{r}"]:
                lost.append((ack["seq"], [m.body for m in stored]))
        assert lost == []
