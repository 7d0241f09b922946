"""Bad input on the agent WebSocket gets a typed error frame (or a documented close code) and
changes nothing; the server goes on serving well-behaved agents afterwards.

Every test runs a real server on port 0 and speaks raw frames; frames are read under timeouts,
never after sleeps. The last test fuzzes one connection with hypothesis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetchat import Hub, HubSettings, ServerSettings
from fleetchat.server import HubServer

FRAME_TIMEOUT = 5.0
CLOSE_AUTH = 4001
CLOSE_TOO_MANY_ERRORS = 4002
SERVER_FRAME_TYPES = {"welcome", "ok", "published", "deliver", "reply", "error"}


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"websocket closed with code {code}")
        self.code = code


class RawClient:
    """Frames as dicts, read under a timeout."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_json(frame)

    async def recv(self, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            msg = await self.ws.receive()
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise Closed(self.ws.close_code)
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise Closed(self.ws.close_code)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def error(self) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == "error", frame
        assert set(frame) == {"v", "type", "code", "message", "id", "details"}
        return frame

    async def closed(self, timeout: float = FRAME_TIMEOUT) -> int | None:
        """Read (and drop) frames until the server closes; the close code."""
        with contextlib.suppress(Closed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv(timeout)
        return self.ws.close_code

    async def still_answers(self) -> None:
        """A subscribe to nothing is answered with ok: the connection is up and in sync."""
        await self.send({"type": "subscribe", "id": "alive", "channels": []})
        ok = await self.recv()
        assert (ok["type"], ok["id"]) == ("ok", "alive"), ok


@dataclass
class Served:
    hub: Hub
    server: HubServer
    http: aiohttp.ClientSession

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "/v1/ws"

    async def open(self, **kwargs: Any) -> RawClient:
        return RawClient(await self.http.ws_connect(self.ws_url, **kwargs))

    async def connect(self, agent_id: str, **hello: Any) -> RawClient:
        if self.server.auth.enabled and "token" not in hello:
            hello["token"] = await self.server.auth.create(agent_id)
        client = await self.open()
        await client.send({"type": "hello", "agent_id": agent_id, **hello})
        welcome = await client.recv()
        assert welcome["type"] == "welcome", welcome
        return client

    async def assert_serves_well_behaved_agents(self) -> None:
        """Two fresh agents: one publishes, the other gets the delivery and acks it."""
        names = next(_fresh)
        reader = await self.connect(f"reader-{names}")
        writer = await self.connect(f"writer-{names}")
        ok = await self.subscribe(reader, f"ok-{names}")
        assert f"ok-{names}" in ok["channels"]
        await writer.send(
            {"type": "publish", "id": "p1", "channel": f"ok-{names}", "body": {"still": "fine"}}
        )
        published = await writer.recv()
        assert published["type"] == "published", published
        deliver = await reader.recv()
        assert deliver["type"] == "deliver", deliver
        assert [m["body"] for m in deliver["messages"]] == [{"still": "fine"}]
        await reader.send({"type": "ack", "upto": deliver["first_tag"]})
        await reader.still_answers()
        await reader.ws.close()
        await writer.ws.close()

    @staticmethod
    async def subscribe(client: RawClient, channel: str) -> dict[str, Any]:
        await client.send({"type": "subscribe", "id": "sub", "channels": [channel]})
        ok = await client.recv()
        assert ok["type"] == "ok", ok
        return ok


_fresh = itertools.count(1)


@contextlib.asynccontextmanager
async def serve(*, auth: bool = True, **server: Any) -> AsyncIterator[Served]:
    settings = HubSettings(url="memory://", server=ServerSettings(auth=auth, **server))
    async with (
        Hub(settings) as hub,
        HubServer(hub, port=0) as srv,
        aiohttp.ClientSession() as http,
    ):
        yield Served(hub, srv, http)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serve() as s:
        yield s


@contextlib.contextmanager
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Collect ERROR records from every logger (an unhandled exception in a handler or task)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


# -- malformed frames ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        '{"type": "publish", "id": "x"',
        "",
        '{"type":"ack","upto":1}{}',
        "null",
        "[1, 2, 3]",
        '"ack"',
    ],
)
async def test_malformed_json_gets_invalid_input_and_the_connection_stays_up(
    served: Served, raw: str
) -> None:
    client = await served.connect("agent-1")
    await client.ws.send_str(raw)
    error = await client.error()
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("bad frame:")
    await client.still_answers()


async def test_binary_frames_are_parsed_as_json_like_text_frames(served: Served) -> None:
    client = await served.connect("agent-1")
    await client.ws.send_bytes(b"\xff\xfe\x00")
    assert (await client.error())["code"] == "invalid_input"
    await client.ws.send_bytes(b'{"type": "subscribe", "id": "bin", "channels": []}')
    assert (await client.recv())["id"] == "bin"


async def test_an_unknown_frame_type_is_invalid_input(served: Served) -> None:
    client = await served.connect("agent-1")
    await client.send({"type": "teleport", "id": "t1", "to": "mars"})
    error = await client.error()
    assert error["code"] == "invalid_input"
    assert error["id"] == "t1"  # the id of the failed frame, when it has a string one
    await client.send({"id": "t2", "channels": []})  # no type at all
    assert (await client.error())["code"] == "invalid_input"
    await client.still_answers()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "publish", "id": 5, "channel": "c"},
        {"type": "publish", "id": "p", "channel": ["c"]},
        {"type": "publish", "id": "p", "channel": "c", "priority": "urgent"},
        {"type": "publish", "id": "p", "channel": "c", "headers": {"a": 1}},
        {"type": "publish", "id": "p", "channel": "c", "expires_in": "soon"},
        {"type": "subscribe", "id": "s", "channels": "c"},
        {"type": "unsubscribe", "id": "s"},
        {"type": "ack", "upto": "3"},
        {"type": "ack", "upto": 1.5},
        {"type": "ack", "tags": 3},
        {"type": "nack", "tag": None},
        {"type": "nack", "tag": 1, "dead_letter": "yes"},
        {"type": "request", "id": "r", "target": 7},
        {"type": "request", "id": "r", "target": "t", "collect": "no"},
        {"type": "reply", "tag": "1"},
        {"type": "heartbeat", "resources": [1, 2]},
        {"type": "heartbeat", "v": "1"},
    ],
)
async def test_wrong_field_types_are_invalid_input_with_the_field_named(
    served: Served, frame: dict[str, Any]
) -> None:
    client = await served.connect("agent-1")
    await client.send(frame)
    error = await client.error()
    assert error["code"] == "invalid_input"
    assert "at `$." in error["message"] or "Object missing required field" in error["message"]
    await client.still_answers()


async def test_values_the_hub_rejects_get_their_own_codes_with_the_frame_id(served: Served) -> None:
    client = await served.connect("agent-1")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "publish", "id": "p1", "channel": "no-such"}, "channel_not_found"),
        ({"type": "publish", "id": "p2", "channel": "bad name!"}, "invalid_id"),
        ({"type": "publish", "id": "p3", "channel": "$dlq"}, "forbidden"),
        ({"type": "publish", "id": "x" * 65, "channel": "c"}, "invalid_input"),
        ({"type": "subscribe", "id": "s1", "channels": ["@someone-else"]}, "forbidden"),
        ({"type": "unsubscribe", "id": "u1", "channel": "no-such"}, "channel_not_found"),
        ({"type": "request", "id": "r1", "target": "nobody"}, "channel_not_found"),
        ({"type": "request", "id": "r2", "target": "@nobody"}, "agent_not_found"),
        ({"type": "request", "id": "r3", "target": "@agent-1", "timeout": 0}, "invalid_input"),
    ]
    for frame, code in cases:
        await client.send(frame)
        error = await client.error()
        assert (error["code"], error["id"]) == (code, frame["id"]), error
    await client.still_answers()


async def test_unknown_fields_are_ignored(served: Served) -> None:
    client = await served.connect("agent-1", future_field={"x": 1})
    await client.send({"type": "subscribe", "id": "s", "channels": [], "extra": True})
    assert (await client.recv())["type"] == "ok"


# -- the handshake -------------------------------------------------------------------------


async def test_a_frame_before_hello_is_unauthenticated_and_closes_4001(served: Served) -> None:
    client = await served.open()
    await client.send({"type": "subscribe", "id": "s", "channels": ["c"]})
    error = await client.error()
    assert error["code"] == "unauthenticated"
    assert await client.closed() == CLOSE_AUTH
    await served.assert_serves_well_behaved_agents()


async def test_malformed_hello_is_invalid_input_and_closes_4001(served: Served) -> None:
    client = await served.open()
    await client.ws.send_str('{"type": "hello", "agent_id": ')
    assert (await client.error())["code"] == "invalid_input"
    assert await client.closed() == CLOSE_AUTH


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        ({"agent_id": "bad id!"}, "invalid_id"),
        ({"agent_id": "agent-1", "window": 0}, "invalid_input"),
        ({"agent_id": "agent-1", "window": 100_000}, "invalid_input"),
        ({"agent_id": "agent-1", "capabilities": {"weld": 2.0}}, "invalid_input"),
    ],
)
async def test_a_hello_with_bad_values_closes_1008(
    served: Served, hello: dict[str, Any], code: str
) -> None:
    client = await served.open()
    token = await served.server.auth.create("agent-1")
    await client.send({"type": "hello", "token": token, **hello})
    assert (await client.error())["code"] == code
    assert await client.closed() == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_a_second_hello_is_invalid_input_and_the_session_goes_on(served: Served) -> None:
    client = await served.connect("agent-1")
    token = await served.server.auth.create("agent-2")
    await client.send({"type": "hello", "agent_id": "agent-2", "token": token})
    error = await client.error()
    assert (error["code"], error["details"]) == ("invalid_input", {"field": "type"})
    await client.still_answers()


async def test_a_hello_with_another_agents_token_is_forbidden_and_closes_4001(
    served: Served,
) -> None:
    token = await served.server.auth.create("agent-1")
    client = await served.open()
    await client.send({"type": "hello", "agent_id": "agent-2", "token": token})
    error = await client.error()
    assert error["code"] == "forbidden"
    assert error["details"] == {"agent_id": "agent-2"}
    assert await client.closed() == CLOSE_AUTH
    await served.assert_serves_well_behaved_agents()


@pytest.mark.parametrize("token", [None, "", "fct_not-a-real-token"])
async def test_a_hello_without_a_valid_token_is_unauthenticated_and_closes_4001(
    served: Served, token: str | None
) -> None:
    client = await served.open()
    hello: dict[str, Any] = {"type": "hello", "agent_id": "agent-1"}
    if token is not None:
        hello["token"] = token
    await client.send(hello)
    assert (await client.error())["code"] == "unauthenticated"
    assert await client.closed() == CLOSE_AUTH
    await served.assert_serves_well_behaved_agents()


# -- size, rate, error budget --------------------------------------------------------------


async def test_a_frame_over_max_frame_bytes_gets_an_error_and_the_connection_stays_up() -> None:
    async with serve(max_frame_bytes=4096) as s:
        client = await s.connect("agent-1")
        await s.subscribe(client, "big")
        body = "x" * 6000  # over the limit, under 4 x the limit
        await client.send({"type": "publish", "id": "big-1", "channel": "big", "body": body})
        error = await client.error()
        assert (error["code"], error["id"]) == ("invalid_input", "big-1")
        assert error["details"] == {"field": "frame"}
        await client.still_answers()
        assert s.hub.channels.get("big").last_seq == 1  # only the join notice: nothing posted


async def test_a_frame_far_over_max_frame_bytes_closes_1009() -> None:
    async with serve(max_frame_bytes=4096) as s:
        client = await s.connect("agent-1")
        await client.ws.send_str(json.dumps({"type": "heartbeat", "pad": "x" * 20_000}))
        assert await client.closed() == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await s.assert_serves_well_behaved_agents()


async def test_acking_or_nacking_an_unknown_tag_is_invalid_input(served: Served) -> None:
    client = await served.connect("agent-1")
    await client.send({"type": "ack", "tags": [42]})
    error = await client.error()
    assert (error["code"], error["details"]) == ("invalid_input", {"field": "tag"})
    await client.send({"type": "nack", "tag": 42})
    assert (await client.error())["code"] == "invalid_input"
    await client.send({"type": "ack", "upto": 42})  # cumulative: nothing to settle, no error
    await client.still_answers()


async def test_replying_to_an_unknown_tag_is_invalid_input(served: Served) -> None:
    client = await served.connect("agent-1")
    await client.send({"type": "reply", "tag": 7, "body": "hi"})
    error = await client.error()
    assert error["code"] == "invalid_input"
    assert "no request was delivered with tag 7" in error["message"]
    await client.still_answers()


async def test_replying_to_a_delivery_that_is_not_a_request_is_invalid_input(
    served: Served,
) -> None:
    reader = await served.connect("reader")
    await served.subscribe(reader, "ch")
    writer = await served.connect("writer")
    await writer.send({"type": "publish", "id": "p1", "channel": "ch", "body": 1})
    deliver = await reader.recv()
    assert deliver["type"] == "deliver"
    await reader.send({"type": "reply", "tag": deliver["first_tag"], "body": "?"})
    assert (await reader.error())["code"] == "invalid_input"


async def test_a_flood_over_the_frame_rate_gets_one_rate_limited_error_per_dropped_frame() -> None:
    # A bucket of 5 that practically never refills: exactly the frames after the 5th are dropped.
    async with serve(frame_rate=0.001, frame_burst=5.0, max_bad_frames=1000) as s:
        client = await s.connect("agent-1")
        for i in range(40):
            await client.send({"type": "heartbeat", "id": f"h{i}"})
        errors = [await client.error() for _ in range(35)]
        assert {e["code"] for e in errors} == {"rate_limited"}
        assert [e["id"] for e in errors] == [f"h{i}" for i in range(5, 40)]
        await client.send({"type": "subscribe", "id": "still-open", "channels": []})
        assert (await client.error())["id"] == "still-open"  # up, and still throttled


async def test_after_a_flood_frames_are_served_again_once_the_bucket_refills() -> None:
    async with serve(frame_rate=50.0, frame_burst=5.0, max_bad_frames=1000) as s:
        client = await s.connect("agent-1")
        for _ in range(20):
            await client.send({"type": "heartbeat"})
        async with asyncio.timeout(FRAME_TIMEOUT):
            while True:
                await client.send({"type": "subscribe", "id": "again", "channels": []})
                frame = await client.recv()
                if frame["type"] == "ok" and frame["id"] == "again":
                    break
                assert frame["code"] == "rate_limited"
                await asyncio.sleep(1 / 50)  # back off for the refill time of one token


async def test_rate_limited_frames_count_as_bad_frames_and_a_long_flood_closes_4002() -> None:
    async with serve(frame_rate=1.0, frame_burst=4.0, max_bad_frames=5) as s:
        client = await s.connect("agent-1")
        for _ in range(12):
            await client.send({"type": "heartbeat"})
        assert await client.closed() == CLOSE_TOO_MANY_ERRORS
        await s.assert_serves_well_behaved_agents()


async def test_repeated_bad_frames_close_4002_and_a_good_frame_resets_the_count() -> None:
    async with serve(max_bad_frames=3) as s:
        client = await s.connect("agent-1")
        for _ in range(2):
            await client.ws.send_str("garbage")
            assert (await client.error())["code"] == "invalid_input"
        await client.still_answers()  # a good frame: the count starts again
        for _ in range(2):
            await client.ws.send_str("garbage")
            assert (await client.error())["code"] == "invalid_input"
        await client.ws.send_str("garbage")
        assert (await client.error())["code"] == "invalid_input"
        assert await client.closed() == CLOSE_TOO_MANY_ERRORS
        await s.assert_serves_well_behaved_agents()


_DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize(
    "raw",
    [
        _DEEP,
        '{"type": "publish", "id": "deep", "channel": "c", "body": ' + _DEEP + "}",
    ],
    ids=["top-level", "in-a-body"],
)
async def test_a_deeply_nested_frame_gets_invalid_input_and_the_connection_stays_up(
    served: Served, raw: str
) -> None:
    # It used to escape the session as a RecursionError: no error frame, close 1000.
    client = await served.connect("agent-1")
    with errors_logged() as errors:
        await client.ws.send_str(raw)
        assert (await client.error())["code"] == "invalid_input"
        await client.still_answers()
    assert [r.getMessage() for r in errors] == []


async def test_a_deeply_nested_hello_is_invalid_input_and_closes_4001(served: Served) -> None:
    client = await served.open()
    await client.ws.send_str(
        '{"type": "hello", "agent_id": "a", "resources": {"x": ' + _DEEP + "}}"
    )
    assert (await client.error())["code"] == "invalid_input"
    assert await client.closed() == CLOSE_AUTH


async def test_after_every_kind_of_abuse_the_server_still_serves_well_behaved_agents() -> None:
    async with serve(max_frame_bytes=4096, max_bad_frames=3) as s:
        with errors_logged() as errors:
            other = await s.server.auth.create("someone")
            for hello in (
                {"type": "hello", "agent_id": "a", "token": other},
                {"type": "hello", "agent_id": "a"},
                {"type": "subscribe", "id": "s", "channels": ["x"]},
                {"type": "hello", "agent_id": "bad id!"},
            ):
                client = await s.open()
                await client.send(hello)
                assert await client.closed() in (CLOSE_AUTH, 1008)
            abuser = await s.connect("abuser")
            await abuser.ws.send_str("x" * 5000)
            await abuser.send({"type": "ack", "tags": [99]})
            await abuser.send({"type": "reply", "tag": 99})
            assert await abuser.closed() == CLOSE_TOO_MANY_ERRORS
            huge = await s.connect("huge")
            await huge.ws.send_str("x" * 50_000)
            assert await huge.closed() == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            await s.assert_serves_well_behaved_agents()
        assert [r.getMessage() for r in errors] == []


# -- fuzzing -------------------------------------------------------------------------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_types = st.sampled_from(
    [
        "hello",
        "subscribe",
        "unsubscribe",
        "publish",
        "ack",
        "nack",
        "request",
        "reply",
        "heartbeat",
        "welcome",
        "deliver",
        "error",
        "HELLO",
        "",
    ]
)
_fields = st.sampled_from(
    [
        "v",
        "id",
        "agent_id",
        "token",
        "channel",
        "channels",
        "body",
        "priority",
        "kind",
        "expires_in",
        "headers",
        "upto",
        "tags",
        "tag",
        "delay",
        "dead_letter",
        "target",
        "timeout",
        "collect",
        "resources",
        "window",
        "resume",
        "capabilities",
    ]
)
_plausible = st.one_of(
    _json,
    st.integers(min_value=-3, max_value=300),
    st.lists(st.integers(min_value=-3, max_value=300), max_size=5),
    st.sampled_from(["fuzz", "@fuzzer", "$dlq", "critical", "low", "request", "chat", "a" * 70]),
    st.floats(min_value=0.001, max_value=0.05),
)
_frames = st.one_of(
    st.builds(
        lambda t, fields: {"type": t, **fields},
        _types,
        st.dictionaries(_fields, _plausible, max_size=6),
    ),
    _json,
)
_payloads = st.one_of(
    _frames.map(lambda f: ("text", json.dumps(f))),
    st.binary(max_size=64).map(lambda b: ("bytes", b)),
    st.text(max_size=64).map(lambda t: ("text", t)),
)


class FuzzTarget:
    """One connection that takes the fuzzed frames; reopened only if the server closes it."""

    def __init__(self, served: Served, loop: asyncio.AbstractEventLoop) -> None:
        self.served = served
        self.loop = loop
        self.client: RawClient | None = None
        self.frames_seen = 0
        self.probes = itertools.count(1)
        self.reconnects = 0

    async def send(self, kind: str, payload: str | bytes) -> None:
        if self.client is None or self.client.ws.closed:
            self.client = await self.served.connect("fuzzer")
            self.reconnects += 1
        client = self.client
        if kind == "bytes":
            assert isinstance(payload, bytes)
            await client.ws.send_bytes(payload)
        else:
            assert isinstance(payload, str)
            await client.ws.send_str(payload)
        # Then a probe: every answer up to its ok must be a well-formed server frame.
        probe = f"probe-{next(self.probes)}"
        await client.send({"type": "subscribe", "id": probe, "channels": []})
        try:
            while True:
                frame = await client.recv()
                self.frames_seen += 1
                assert frame.get("v") == 1, frame
                assert frame.get("type") in SERVER_FRAME_TYPES, frame
                if frame["type"] == "error":
                    assert isinstance(frame["code"], str)
                    assert isinstance(frame["message"], str)
                    assert frame["code"] != "internal", frame
                if frame["type"] == "ok" and frame["id"] == probe:
                    return
        except Closed:
            # Only the documented closes: too many bad frames (not with this budget) or
            # a frame the WebSocket layer refuses.
            code = client.ws.close_code
            self.client = None
        assert code in (CLOSE_TOO_MANY_ERRORS, aiohttp.WSCloseCode.MESSAGE_TOO_BIG), code


async def test_fuzzed_frames_never_crash_the_server_and_fresh_connections_still_work() -> None:
    async with serve(max_bad_frames=1_000_000) as s:
        loop = asyncio.get_running_loop()
        target = FuzzTarget(s, loop)

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(payload=_payloads)
        def fuzz(payload: tuple[str, str | bytes]) -> None:
            future = asyncio.run_coroutine_threadsafe(target.send(*payload), loop)
            future.result(timeout=2 * FRAME_TIMEOUT)

        with errors_logged() as errors:
            await asyncio.to_thread(fuzz)
            assert target.frames_seen >= 200
            await s.assert_serves_well_behaved_agents()
        assert [r.getMessage() for r in errors] == []
