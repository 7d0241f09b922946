"""The Python SDK (``fleetchat.client``) against a real server on a free port.

Agents talk over real WebSockets, HubClient over real HTTP. Redeliveries are forced by closing
the agent's socket from the server side, or by raising in a handler; restarts reopen the same
SQLite file on the same port. Nothing sleeps to synchronise: events and assert_eventually.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fleetchat import Hub, HubSettings, Message
from fleetchat.client import Agent, HubClient, HubUnavailableError, Nack
from fleetchat.client.connection import Connection
from fleetchat.client.delivery import AckTracker, DedupeCache
from fleetchat.client.wire import Backoff, http_url, ws_url
from fleetchat.config import ChatSettings, QosSettings
from fleetchat.errors import (
    AgentNotFoundError,
    ChannelExistsError,
    ChannelNotFoundError,
    ClosedError,
    ConfigError,
    FleetchatError,
    ForbiddenError,
    InvalidIdError,
    InvalidInputError,
    NotFoundError,
    RequestTimeoutError,
    UnauthenticatedError,
)
from fleetchat.server import HubServer
from fleetchat.testing import assert_eventually
from fleetchat.types import Priority
from tests.e2e.conftest import MakeAgent, RunningServer, StartServer


def patient_chat() -> ChatSettings:
    """Ack timeouts far beyond any test: every redelivery here is one the test caused."""
    return ChatSettings(qos={p: QosSettings(ack_timeout=60.0) for p in Priority})


@pytest.fixture
async def open_hub(start_server: StartServer) -> RunningServer:
    """A hub with auth off, in memory."""
    return await start_server(auth=False, url="memory://", chat=patient_chat())


async def drop_connections(srv: RunningServer, agent_id: str) -> None:
    """Close the agent's sockets from the server side, as a network failure would."""
    for session in list(srv.server.sessions.get(agent_id, ())):
        await session.ws.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- messaging ------------------------------------------------------------------------------


async def test_publish_reaches_every_other_member_once_with_tokens(
    server: RunningServer, agents: MakeAgent
) -> None:
    inboxes: dict[str, list[Message]] = {}
    members = []
    for name in ("amr-1", "amr-2", "arm-1"):
        agent = agents(name, hub=server.url, token=await server.token(name))
        box = inboxes[name] = []

        @agent.on_message(channel="cell-1", kind="chat")
        async def keep(msg: Message, box: list[Message] = box) -> None:
            box.append(msg)

        members.append(agent)
    for agent in members:
        await agent.start()

    published = await members[0].publish("cell-1", {"go": "dock-3"}, priority="high")

    await assert_eventually(lambda: len(inboxes["amr-2"]) == len(inboxes["arm-1"]) == 1)
    for name in ("amr-2", "arm-1"):
        (msg,) = inboxes[name]
        assert (msg.body, msg.sender, msg.priority) == ({"go": "dock-3"}, "amr-1", "high")
        assert (msg.id, msg.seq) == (published.message_id, published.seq)
    assert inboxes["amr-1"] == []  # the sender does not receive its own message


async def test_deliveries_come_highest_priority_first(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    async with agents("planner", hub=open_hub.url) as first:
        await first.subscribe("orders")
    for priority in ("low", "normal", "high", "critical"):
        await open_hub.hub.publish("orders", priority, sender="ops", priority=priority)

    seen: list[str] = []
    done = asyncio.Event()
    agent = agents("planner", hub=open_hub.url, concurrency=1)

    @agent.on_message(channel="orders", kind="chat")
    async def record(msg: Message) -> None:
        seen.append(msg.body)
        if len(seen) == 4:
            done.set()

    async with agent:
        await asyncio.wait_for(done.wait(), 5)
    assert seen == ["critical", "high", "normal", "low"]


async def test_retrying_a_publish_with_the_same_id_is_idempotent(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    async with agents("amr-1", hub=open_hub.url) as agent:
        await agent.subscribe("cell-1")
        first = await agent.publish("cell-1", "once", id="order-17")
        again = await agent.publish("cell-1", "once", id="order-17")
    assert not first.duplicate
    assert again.duplicate
    assert (again.seq, again.message_id) == (first.seq, first.message_id)


async def test_publish_errors_are_raised_as_their_fleetchat_class(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    async with agents("amr-1", hub=open_hub.url) as agent:
        with pytest.raises(ChannelNotFoundError):
            await agent.publish("nowhere", "x")
        with pytest.raises(ForbiddenError):
            await agent.publish("$dlq", "x")
        with pytest.raises(InvalidIdError):
            await agent.subscribe("bad name!")


async def test_subscribe_and_unsubscribe_answer_with_the_memberships(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    async with agents("amr-1", hub=open_hub.url) as agent:
        assert await agent.subscribe("a", "b") == ["@amr-1", "a", "b"]
        assert await agent.unsubscribe("a") == ["@amr-1", "b"]
        assert agent.channels == ["b"]


async def test_messages_no_handler_takes_come_through_the_async_iterator(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=open_hub.url)
    stream = agent.messages(channel="cell-*", kind="chat")
    async with agent, agents("amr-2", hub=open_hub.url) as other:
        await agent.subscribe("cell-1", "cell-2")
        await other.publish("cell-1", "one")
        await other.publish("cell-2", "two")
        got = []
        async with stream:
            async for msg in stream:
                got.append(msg.body)
                if len(got) == 2:
                    break
    assert sorted(got) == ["one", "two"]
    await assert_eventually(lambda: open_hub.hub.metrics.snapshot().delivered >= 2)


# -- request / reply ------------------------------------------------------------------------


async def test_request_gets_the_reply_of_the_agents_request_handler(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    service = agents("inventory", hub=open_hub.url)

    @service.on_request()
    async def stock(msg: Message) -> dict[str, Any]:
        return {"item": msg.body, "count": 3}

    async with service, agents("planner", hub=open_hub.url) as caller:
        reply = await caller.request("inventory", "bolts", timeout=5)
    assert reply.body == {"item": "bolts", "count": 3}
    assert (reply.kind, reply.sender) == ("reply", "inventory")


async def test_request_to_a_channel_collects_every_reply(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    docks = [agents(f"amr-{i}", hub=open_hub.url) for i in (1, 2)]
    for agent in docks:

        @agent.on_request(channel="docks")
        async def where(msg: Message, me: str = agent.agent_id) -> str:
            return me

        await agent.start()
    async with agents("planner", hub=open_hub.url) as caller:
        replies = await caller.request("docks", "where?", timeout=0.5, collect=True)
    assert sorted(r.body for r in replies) == ["amr-1", "amr-2"]


async def test_request_nobody_answers_raises_request_timeout(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    quiet = agents("quiet", hub=open_hub.url)  # no request handler: the request is acked

    @quiet.on_request(channel="nowhere-else")
    async def never(msg: Message) -> str:
        return "unreachable"

    async with quiet, agents("planner", hub=open_hub.url) as caller:
        with pytest.raises(RequestTimeoutError) as caught:
            await caller.request("quiet", "anyone?", timeout=0.2)
    assert isinstance(caught.value, TimeoutError)
    assert open_hub.hub.metrics.snapshot().request_timeouts == 1


async def test_a_request_handler_that_raises_sends_no_reply(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    broken = agents("broken", hub=open_hub.url)

    @broken.on_request()
    async def fail(msg: Message) -> str:
        raise RuntimeError("out of order")

    async with broken, agents("planner", hub=open_hub.url) as caller:
        with pytest.raises(RequestTimeoutError):
            await caller.request("broken", "status?", timeout=0.2)
    assert broken.stats.failed == 1


# -- acks, nacks, dedupe --------------------------------------------------------------------


async def test_a_handler_that_raises_nacks_and_the_message_comes_again(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    attempts: list[str] = []
    agent = agents("amr-1", hub=open_hub.url)

    @agent.on_message(channel="jobs", kind="chat")
    async def flaky(msg: Message) -> None:
        attempts.append(msg.body)
        if len(attempts) == 1:
            raise RuntimeError("gripper stuck")

    async with agent:
        await open_hub.hub.publish("jobs", "pick", sender="ops")
        await assert_eventually(lambda: agent.stats.handled == 1)
    assert attempts == ["pick", "pick"]
    assert (agent.stats.failed, agent.stats.duplicates) == (1, 0)
    assert open_hub.hub.metrics.snapshot().retries == 1


async def test_nack_with_dead_letter_sends_the_message_to_the_dead_letters(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=open_hub.url)

    @agent.on_message(channel="jobs", kind="chat")
    async def refuse(msg: Message) -> None:
        raise Nack(dead_letter=True)

    async with agent:
        await open_hub.hub.publish("jobs", "poison", sender="ops")

        async def one_letter() -> bool:
            return len(await open_hub.hub.dead_letters()) == 1

        await assert_eventually(one_letter)
    (letter,) = await open_hub.hub.dead_letters()
    assert (letter.member, letter.reason, letter.message.body) == ("amr-1", "rejected", "poison")


async def test_a_redelivery_after_the_ack_was_lost_is_acked_without_the_handler(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    calls: list[str] = []
    agent = agents("amr-1", hub=open_hub.url)

    @agent.on_message(channel="jobs", kind="chat")
    async def handle(msg: Message) -> None:
        calls.append(msg.id)
        await drop_connections(open_hub, "amr-1")  # the ack has nowhere to go

    async with agent:
        m = await open_hub.hub.publish("jobs", "weld", sender="ops")
        await assert_eventually(lambda: agent.stats.duplicates == 1)
        await assert_eventually(lambda: open_hub.hub.metrics.snapshot().delivered == 1)
    assert calls == [m.id]
    assert agent.stats.reconnects == 1


async def test_a_redelivery_while_the_handler_runs_waits_for_it_and_is_acked_once(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    calls: list[str] = []
    release = asyncio.Event()
    agent = agents("amr-1", hub=open_hub.url)

    @agent.on_message(channel="jobs", kind="chat")
    async def handle(msg: Message) -> None:
        calls.append(msg.id)
        await drop_connections(open_hub, "amr-1")
        await release.wait()

    async with agent:
        await open_hub.hub.publish("jobs", "weld", sender="ops")
        await assert_eventually(lambda: agent.stats.duplicates == 1)  # came again meanwhile
        release.set()
        await assert_eventually(lambda: open_hub.hub.metrics.snapshot().delivered == 1)
    assert len(calls) == 1


async def test_handlers_run_concurrently_up_to_the_limit(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    running = peak = 0
    gate = asyncio.Event()
    agent = agents("amr-1", hub=open_hub.url, concurrency=2)

    @agent.on_message(channel="jobs", kind="chat")
    async def work(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    async with agent:
        for i in range(5):
            await open_hub.hub.publish("jobs", i, sender="ops")
        await assert_eventually(lambda: running == 2)
        gate.set()
        await assert_eventually(lambda: agent.stats.handled == 5)
    assert peak == 2


async def test_close_drains_running_handlers_acks_them_and_leaves_the_rest_queued(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    started = asyncio.Event()
    gate = asyncio.Event()
    agent = agents("amr-1", hub=open_hub.url, concurrency=1)

    @agent.on_message(channel="jobs", kind="chat")
    async def work(msg: Message) -> None:
        started.set()
        await gate.wait()

    await agent.start()
    await open_hub.hub.publish("jobs", "first", sender="ops")
    await open_hub.hub.publish("jobs", "second", sender="ops")  # waits behind the first
    await asyncio.wait_for(started.wait(), 5)
    await assert_eventually(lambda: agent.stats.received == 2)
    closing = asyncio.ensure_future(agent.close())
    await assert_eventually(lambda: agent._dispatcher.draining)
    await open_hub.hub.publish("jobs", "third", sender="ops")  # arrives while draining
    gate.set()
    await asyncio.wait_for(closing, 5)
    assert agent.stats.handled == 1
    assert open_hub.hub.metrics.snapshot().delivered == 1

    later: list[str] = []
    again = agents("amr-1", hub=open_hub.url)

    @again.on_message(channel="jobs", kind="chat")
    async def keep(msg: Message) -> None:
        later.append(msg.body)

    async with again:
        await assert_eventually(lambda: later == ["second", "third"])


async def test_sigterm_lets_the_running_handler_finish_and_ack_before_exit(
    open_hub: RunningServer, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "import asyncio, sys\n"
        "from fleetchat.client import Agent\n"
        "agent = Agent('worker', hub=sys.argv[1])\n"
        "@agent.on_message(channel='jobs', kind='chat')\n"
        "async def work(msg):\n"
        "    print('started', flush=True)\n"
        "    await asyncio.sleep(0.3)  # the work SIGTERM must not cut short\n"
        "    print('finished', flush=True)\n"
        "agent.run()\n"
        "print('exited', flush=True)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), open_hub.url, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        await assert_eventually(lambda: "jobs" in open_hub.hub.channels.memberships("worker"))
        await open_hub.hub.publish("jobs", "weld", sender="ops")
        async with asyncio.timeout(10):
            assert await proc.stdout.readline() == b"started\n"
            proc.terminate()
            rest = await proc.stdout.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rest == b"finished\nexited\n"
    assert open_hub.hub.metrics.snapshot().delivered == 1


# -- reconnect ------------------------------------------------------------------------------


async def test_agent_reconnects_after_a_server_restart_and_nothing_is_lost(
    tmp_path: Path, agents: MakeAgent
) -> None:
    settings = HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}", chat=patient_chat())
    handled: list[str] = []

    async def keep(msg: Message) -> None:
        handled.append(msg.body)

    async with Hub(settings) as hub, HubServer(hub, port=0) as srv:
        port = srv.port
        receiver = agents("amr-1", hub=srv.url, concurrency=1)
        receiver.on_message(channel="jobs", kind="chat")(keep)
        sender = agents("planner", hub=srv.url)
        await receiver.start()
        await sender.start()
        for body in ("m1", "m2", "m3"):
            await sender.publish("jobs", body)
        await assert_eventually(lambda: len(handled) == 3)
    # The hub is down: this publish waits, and goes out once the agent is back.
    pending = asyncio.ensure_future(sender.publish("jobs", "m4"))
    await assert_eventually(lambda: not sender.connected and not receiver.connected)
    async with Hub(settings) as hub, HubServer(hub, port=port):
        first = await asyncio.wait_for(pending, 10)
        await sender.publish("jobs", "m5")
        await assert_eventually(lambda: len(handled) == 5, timeout=10)
        await assert_eventually(lambda: hub.metrics.snapshot().delivered >= 2)
        await receiver.close()
        await sender.close()
    assert handled == ["m1", "m2", "m3", "m4", "m5"]
    assert first.seq == 5  # after the join announcement and m1..m3, committed once
    assert receiver.stats.reconnects == sender.stats.reconnects == 1


async def test_a_publish_whose_confirmation_was_lost_is_sent_again_with_the_same_id(
    open_hub: RunningServer, agents: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = open_hub.hub
    commit = hub.publish
    drops = 0

    async def commit_then_drop(*args: Any, **kwargs: Any) -> Message:
        nonlocal drops
        m = await commit(*args, **kwargs)
        if drops == 0:  # the connection dies before the confirmation goes out
            drops += 1
            await drop_connections(open_hub, "amr-1")
        return m

    async with agents("amr-1", hub=open_hub.url) as agent:
        await agent.subscribe("jobs")
        monkeypatch.setattr(hub, "publish", commit_then_drop)
        published = await agent.publish("jobs", "exactly once")
    assert published.duplicate  # the answer to the retry, from the hub's ledger
    assert agent.stats.reconnects == 1
    assert [m.body for m in await hub.channels.history("jobs") if m.kind == "chat"] == [
        "exactly once"
    ]
    assert published.message_id == (await hub.channels.history("jobs"))[-1].id


async def test_reconnecting_survives_an_unexpected_error(
    open_hub: RunningServer, agents: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = Connection.open
    failures: list[str] = []

    async def open_once_broken(*args: Any, **kwargs: Any) -> Connection:
        if not failures:
            failures.append("boom")
            raise RuntimeError("boom")
        return await real_open(*args, **kwargs)

    async with agents("amr-1", hub=open_hub.url) as agent:
        monkeypatch.setattr(Connection, "open", open_once_broken)
        await drop_connections(open_hub, "amr-1")
        await assert_eventually(lambda: agent.stats.reconnects == 1)
        assert (await agent.subscribe("jobs"))[-1] == "jobs"
    assert failures == ["boom"]


async def test_a_revoked_token_stops_the_agent_at_its_next_hello(
    server: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=server.url, token=await server.token("amr-1"))
    run = asyncio.ensure_future(agent.run_async())
    await assert_eventually(lambda: agent.connected)
    await server.server.auth.revoke("amr-1")
    await drop_connections(server, "amr-1")
    with pytest.raises(UnauthenticatedError):
        await asyncio.wait_for(run, 10)
    assert isinstance(agent.error, UnauthenticatedError)
    with pytest.raises(UnauthenticatedError):
        await agent.publish("jobs", "x")


async def test_server_close_does_not_wait_for_a_socket_that_has_not_said_hello() -> None:
    async with Hub.open("memory://") as hub:
        srv = HubServer(hub, port=0)
        await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            b"GET /v1/ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        closing = asyncio.ensure_future(srv.close())
        try:
            await asyncio.wait_for(asyncio.shield(closing), 2)
        finally:
            writer.close()  # the hub notices a dropped connection at once
            await writer.wait_closed()
            await closing


# -- auth and start -------------------------------------------------------------------------


async def test_an_agent_with_another_agents_token_is_refused_at_start(
    server: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-2", hub=server.url, token=await server.token("amr-1"))
    with pytest.raises(ForbiddenError):
        await agent.start()
    with pytest.raises(ClosedError):
        await agent.start()


async def test_an_agent_without_a_token_is_refused_when_auth_is_on(
    server: RunningServer, agents: MakeAgent
) -> None:
    with pytest.raises(UnauthenticatedError):
        await agents("amr-1", hub=server.url).start()


async def test_start_raises_hub_unavailable_when_nothing_listens(agents: MakeAgent) -> None:
    agent = agents("amr-1", hub=f"http://127.0.0.1:{free_port()}", connect_timeout=0.3)
    with pytest.raises(HubUnavailableError) as caught:
        await agent.start()
    assert isinstance(caught.value, ConnectionError)
    with pytest.raises(ClosedError):
        await agent.publish("jobs", "x")


async def test_handlers_must_be_async_functions() -> None:
    agent = Agent("amr-1")

    def not_async(msg: Message) -> None:
        pass

    with pytest.raises(TypeError):
        agent.on_message()(not_async)
    await agent.close()


async def test_heartbeats_carry_resources_and_capabilities_register_the_agent(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents(
        "amr-1",
        {"transport": 0.9},
        open_hub.url,
        capacity=2,
        labels={"cell": "1"},
        heartbeat_interval=0.02,
    )
    agent.update_resources(battery=0.5)
    async with agent:
        registry = open_hub.hub.registry
        await assert_eventually(lambda: registry.get("amr-1").resources.get("battery") == 0.5)
    info = registry.get("amr-1")
    assert (info.capabilities, info.capacity, info.labels) == ({"transport": 0.9}, 2, {"cell": "1"})


# -- HubClient (REST) -----------------------------------------------------------------------


async def test_hub_client_manages_channels_and_members(open_hub: RunningServer) -> None:
    async with HubClient(open_hub.url) as rest:
        made = await rest.create_channel("cell-1", type="task", announce=False)
        assert (made.name, made.type) == ("cell-1", "task")
        with pytest.raises(ChannelExistsError):
            await rest.create_channel("cell-1")
        assert [c.name for c in await rest.list_channels()] == ["cell-1"]
        assert "$dlq" in [c.name for c in await rest.list_channels(include_system=True)]
        assert await rest.join("cell-1", "amr-1") == ["amr-1"]
        assert await rest.members("cell-1") == ["amr-1"]
        m = await rest.publish("cell-1", {"x": 1}, sender="ops", priority="high")
        assert (m.seq, m.priority) == (1, "high")
        assert [h.body for h in await rest.history("cell-1", start_seq=1, limit=10)] == [{"x": 1}]
        await rest.publish("cell-1", {"x": 2}, sender="ops")
        assert [h.body for h in await rest.history("cell-1", limit=1, tail=True)] == [{"x": 2}]
        assert (await rest.get_channel("cell-1")).last_seq == 2
        assert await rest.leave("cell-1", "amr-1") == []
        await rest.delete_channel("cell-1")
        with pytest.raises(ChannelNotFoundError):
            await rest.get_channel("cell-1")


async def test_hub_client_lists_gets_and_searches_agents(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    async with agents("amr-1", {"transport": 0.9}, open_hub.url), HubClient(open_hub.url) as rest:
        assert [a.id for a in await rest.list_agents()] == ["amr-1"]
        assert [a.id for a in await rest.list_agents(status="offline")] == []
        assert (await rest.get_agent("amr-1")).capabilities == {"transport": 0.9}
        (match,) = await rest.search_agents({"transport": 1.0}, min_confidence=0.5)
        assert match.agent.id == "amr-1"
        with pytest.raises(AgentNotFoundError):
            await rest.get_agent("ghost")


async def test_hub_client_lists_replays_and_purges_dead_letters(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=open_hub.url)
    replays: list[Message] = []

    @agent.on_message(channel="jobs", kind="chat")
    async def refuse(msg: Message) -> None:
        raise Nack(dead_letter=True)

    @agent.on_message(channel="@amr-1")
    async def replayed(msg: Message) -> None:
        replays.append(msg)

    async with agent, HubClient(open_hub.url) as rest:
        await rest.publish("jobs", "poison", sender="ops")
        await assert_eventually(open_hub.hub.dead_letters)
        (entry,) = await rest.list_dead_letters()
        assert (entry.letter.member, entry.letter.message.body) == ("amr-1", "poison")
        assert await rest.replay_dead_letters([entry.seq]) == 1
        await assert_eventually(lambda: [m.body for m in replays] == ["poison"])
        assert replays[0].headers["replay-channel"] == "jobs"
        assert (await rest.delivery_metrics()).dead_lettered == 1
        assert await rest.purge_dead_letters() == 1
        assert await rest.list_dead_letters() == []


async def test_hub_client_reads_the_openapi_document_and_health(open_hub: RunningServer) -> None:
    async with HubClient(open_hub.url) as rest:
        doc = await rest.openapi()
        assert "/v1/channels" in doc["paths"]
        assert (await rest.health())["status"] == "ok"


async def test_hub_client_maps_auth_errors_and_sends_the_bearer_token(
    server: RunningServer,
) -> None:
    async with HubClient(server.url) as anonymous:
        with pytest.raises(UnauthenticatedError):
            await anonymous.list_channels()
    token = await server.token("amr-1")
    async with HubClient(server.url, token) as rest:
        await rest.create_channel("notes")
        m = await rest.publish("notes", "hello")
        assert m.sender == "amr-1"
        with pytest.raises(ForbiddenError):
            await rest.purge_dead_letters()  # needs an admin token


async def test_hub_client_maps_a_response_that_is_not_the_hubs_by_its_status(
    open_hub: RunningServer,
) -> None:
    async with HubClient(open_hub.url + "/not-the-api") as rest:
        with pytest.raises(NotFoundError) as caught:
            await rest.list_channels()
    assert caught.value.details["status"] == 404


async def test_hub_client_raises_hub_unavailable_when_nothing_listens() -> None:
    rest = HubClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HubUnavailableError):
        await rest.list_channels()
    await rest.close()
    with pytest.raises(ClosedError):
        await rest.list_channels()


# -- while the hub is away ------------------------------------------------------------------


async def test_calls_made_while_the_hub_is_down_time_out_and_close_fails_the_rest(
    agents: MakeAgent,
) -> None:
    async with Hub.open("memory://") as hub, HubServer(hub, port=0) as srv:
        agent = agents("amr-1", hub=srv.url)
        await agent.start()
    await assert_eventually(lambda: not agent.connected)
    with pytest.raises(RequestTimeoutError):
        await agent.request("planner", "anyone?", timeout=0.05)
    with pytest.raises(HubUnavailableError):
        await agent.publish("jobs", "x", timeout=0.05)
    waiting = asyncio.ensure_future(agent.publish("jobs", "y"))
    await assert_eventually(lambda: len(agent._calls) == 1)
    await agent.close()
    with pytest.raises(ClosedError):
        await waiting


async def test_deliveries_queued_when_the_connection_drops_are_handled_once_from_the_new_one(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    gate = asyncio.Event()
    handled: list[str] = []
    agent = agents("amr-1", hub=open_hub.url, concurrency=1)

    @agent.on_message(channel="jobs", kind="chat")
    async def work(msg: Message) -> None:
        await gate.wait()
        handled.append(msg.body)

    async with agent:
        await open_hub.hub.publish("jobs", "a", sender="ops")
        await open_hub.hub.publish("jobs", "b", sender="ops")
        await assert_eventually(lambda: agent.stats.received == 2)
        await drop_connections(open_hub, "amr-1")
        await assert_eventually(lambda: agent.stats.reconnects == 1)
        gate.set()
        await assert_eventually(lambda: sorted(handled) == ["a", "b"])
        await assert_eventually(lambda: open_hub.hub.metrics.snapshot().delivered == 2)
    assert sorted(handled) == ["a", "b"]


async def test_run_async_drains_and_returns_on_sigterm(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=open_hub.url)
    run = asyncio.ensure_future(agent.run_async())
    await assert_eventually(lambda: agent.connected)  # the signal handlers are in place
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(run, 5)
    assert not agent.connected
    assert agent.error is None


async def test_blocking_run_raises_why_the_agent_could_not_start(server: RunningServer) -> None:
    agent = Agent("amr-2", hub=server.url, token=await server.token("amr-1"))
    with pytest.raises(ForbiddenError):
        await asyncio.to_thread(agent.run)


async def test_a_channel_the_hub_refuses_makes_start_fail(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=open_hub.url)

    @agent.on_message(channel="bad name!")
    async def never(msg: Message) -> None:
        pass

    with pytest.raises(InvalidIdError):
        await agent.start()


async def test_stream_next_times_out_and_ends_when_the_agent_closes(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=open_hub.url)
    stream = agent.messages(channel="jobs")
    await agent.start()
    with pytest.raises(TimeoutError):
        await stream.next(timeout=0.01)
    reader = asyncio.ensure_future(stream.next())
    await agent.close()
    with pytest.raises(StopAsyncIteration):
        await reader
    with pytest.raises(StopAsyncIteration):
        await stream.next()


async def test_closing_a_stream_gives_its_unread_messages_back_to_the_hub(
    open_hub: RunningServer, agents: MakeAgent
) -> None:
    agent = agents("amr-1", hub=open_hub.url)
    stream = agent.messages(channel="jobs", kind="chat")
    async with agent:
        for body in ("a", "b", "c"):
            await open_hub.hub.publish("jobs", body, sender="ops")
        await assert_eventually(lambda: agent.stats.received == 3)
        first = await stream.next()
        stream.close()
        stream.close()
        later = agent.messages(channel="jobs", kind="chat")
        again = [(await later.next()).body, (await later.next()).body]
        later.close()
    assert first.body == "a"
    assert sorted(again) == ["b", "c"]  # nacked without delay, so handed out again at once
    assert open_hub.hub.metrics.snapshot().retries == 2


async def test_bad_arguments_are_refused_before_anything_is_sent(agents: MakeAgent) -> None:
    with pytest.raises(InvalidInputError):
        Agent("amr-1", concurrency=0)
    with pytest.raises(InvalidIdError):
        Agent("bad id!")
    agent = agents("amr-1")
    with pytest.raises(InvalidInputError):
        await agent.request("planner", "x", timeout=0)
    with pytest.raises(ClosedError):
        await agent.publish("jobs", "x")  # not started


# -- a server that is not a fleetchat hub --------------------------------------------------

Script = Callable[[web.WebSocketResponse], Awaitable[None]]


@pytest.fixture
async def fake_hub() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Serve /v1/ws with a scripted peer; returns its URL."""
    runners: list[web.AppRunner] = []

    async def serve(script: Script) -> str:
        async def handle(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await script(ws)
            return ws

        app = web.Application()
        app.router.add_get("/v1/ws", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


def welcome(agent_id: str = "amr-1") -> dict[str, Any]:
    return {
        "type": "welcome",
        "agent_id": agent_id,
        "session": "1",
        "server": "fake",
        "heartbeat_interval": 0.01,
        "window": 8,
        "max_frame_bytes": 1_000_000,
    }


async def answer_hello(ws: web.WebSocketResponse, reply: str | None, code: int = 1000) -> None:
    await ws.receive()
    if reply is not None:
        await ws.send_str(reply)
    await ws.close(code=code)


@pytest.mark.parametrize(
    ("reply", "code", "error"),
    [
        ("not json", 1000, FleetchatError),
        ('{"type": "ok", "id": "x"}', 1000, FleetchatError),
        (None, 4001, UnauthenticatedError),
        (None, 1000, HubUnavailableError),
    ],
    ids=["garbage", "not-a-welcome", "closed-4001", "closed"],
)
async def test_an_odd_answer_to_hello_is_a_clear_error(
    fake_hub: Callable[[Script], Awaitable[str]],
    agents: MakeAgent,
    reply: str | None,
    code: int,
    error: type[Exception],
) -> None:
    url = await fake_hub(lambda ws: answer_hello(ws, reply, code))
    with pytest.raises(error):
        await agents("amr-1", hub=url, connect_timeout=0).start()


async def test_frames_the_sdk_cannot_use_are_ignored_and_heartbeats_flow(
    fake_hub: Callable[[Script], Awaitable[str]], agents: MakeAgent
) -> None:
    seen: list[dict[str, Any]] = []

    async def script(ws: web.WebSocketResponse) -> None:
        seen.append(await ws.receive_json())
        await ws.send_json(welcome())
        await ws.send_bytes(b"\x00binary")
        await ws.send_str("not json")
        await ws.send_json(welcome())  # a second welcome
        await ws.send_json({"type": "error", "code": "invalid_input", "message": "?", "id": None})
        await ws.send_json({"type": "published", "id": "nobody", "channel": "c", "seq": 1,
                            "message_id": "m"})  # fmt: skip
        message = {"id": "m1", "channel": "jobs", "seq": 1, "sender": "ops", "body": "hi"}
        await ws.send_json({"type": "deliver", "first_tag": 1, "messages": [message]})
        async for msg in ws:
            seen.append(msg.json())

    url = await fake_hub(script)
    got: list[str] = []
    agent = agents("amr-1", hub=url)

    @agent.on_message()
    async def keep(msg: Message) -> None:
        got.append(msg.body)

    async with agent:
        await assert_eventually(lambda: {"type": "ack", "upto": 1} in seen)
        await assert_eventually(lambda: {"type": "heartbeat"} in seen)
    assert got == ["hi"]
    assert seen[0]["type"] == "hello"


# -- building blocks ------------------------------------------------------------------------


def test_hub_urls_map_to_the_websocket_and_rest_endpoints() -> None:
    assert ws_url("http://hub:8765") == "ws://hub:8765/v1/ws"
    assert ws_url("https://hub/base/") == "wss://hub/base/v1/ws"
    assert ws_url("hub:8765") == "ws://hub:8765/v1/ws"
    assert http_url("wss://hub:1/v1/ws") == "https://hub:1"
    with pytest.raises(ConfigError):
        ws_url("ftp://hub")


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=lambda: 1.0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    low = Backoff(base=0.1, cap=1.0, rng=lambda: 0.0)
    assert low.next() == pytest.approx(0.05)
    assert backoff.next() == 0.1


def test_ack_tracker_acks_cumulatively_and_out_of_order_tags_by_tag() -> None:
    acks = AckTracker()
    acks.complete(2)
    acks.complete(3, by_tag=False)
    first = acks.take()
    assert first is not None
    assert (first.upto, first.tags) == (None, [2])
    acks.complete(1)
    second = acks.take()
    assert second is not None
    assert (second.upto, second.tags) == (3, [])
    assert acks.take() is None
    assert acks.idle


def test_ack_tracker_ignores_a_tag_it_already_has() -> None:
    acks = AckTracker()
    acks.complete(1)
    acks.complete(1)
    ack = acks.take()
    assert ack is not None
    assert (ack.upto, ack.tags) == (1, [])
    acks.complete(1)
    assert acks.take() is None


def test_dedupe_cache_forgets_the_least_recently_seen_ids() -> None:
    cache = DedupeCache(size=2)
    cache.add("a")
    cache.add("b")
    assert "a" in cache  # now the most recent
    cache.add("c")
    assert [x for x in "abc" if x in cache] == ["a", "c"]
    assert len(cache) == 2
