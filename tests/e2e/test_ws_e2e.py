"""Agents on the WebSocket of a real server (auth on), speaking raw frames.

Every test starts its own hub on a fresh SQLite file and a free port; a client that dies is a
real subprocess killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import pytest

from fleetchat.config import ChatSettings, QosSettings, RegistrySettings
from fleetchat.testing import assert_eventually
from fleetchat.types import Priority
from tests.e2e.conftest import RunningServer, StartServer

PRIORITIES_LOW_FIRST = ["low", "normal", "high", "critical"]


def patient_chat() -> ChatSettings:
    """Ack timeouts far beyond any test, so nothing is redelivered behind its back."""
    return ChatSettings(qos={p: QosSettings(ack_timeout=60.0) for p in Priority})


# -- hello ------------------------------------------------------------------------------------


async def test_hello_as_another_agent_with_its_own_token_is_refused_with_4001(
    server: RunningServer,
) -> None:
    token = await server.token("alice")
    ws = await server.open()
    await ws.send({"type": "hello", "agent_id": "bob", "token": token})
    error = await ws.expect("error")
    assert error["code"] == "forbidden"
    assert await ws.wait_closed() == 4001


async def test_hello_with_its_own_token_is_welcomed_with_the_session_limits(
    server: RunningServer,
) -> None:
    agent = await server.agent("alice", window=8)
    assert agent.welcome["agent_id"] == "alice"
    assert agent.welcome["window"] == 8
    assert agent.welcome["max_frame_bytes"] == server.server.settings.max_frame_bytes


# -- channels and fan-out ---------------------------------------------------------------------


async def test_subscribe_joins_the_channel_and_answers_with_the_memberships(
    server: RunningServer,
) -> None:
    agent = await server.agent("alice")
    ok = await agent.subscribe("fleet", "ops")
    assert {"fleet", "ops", "@alice"} <= set(ok["channels"])
    assert server.hub.channels.members("fleet") == ["alice"]


async def test_publish_fans_out_to_every_member_but_the_sender(server: RunningServer) -> None:
    names = ["a1", "a2", "a3", "a4"]
    agents = {n: await server.agent(n) for n in names}
    for n in names:
        await agents[n].subscribe("fleet")
    published = await agents["a1"].publish("fleet", {"go": 1}, id="p1")
    assert published["type"] == "published"
    for n in names[1:]:
        [d] = await agents[n].deliveries(1)
        assert (d.id, d.body, d.message["sender"]) == (published["message_id"], {"go": 1}, "a1")
    # The sender's own message never comes back: the next thing it gets is a2's.
    answer = await agents["a2"].publish("fleet", "ack", id="p2")
    [first] = await agents["a1"].deliveries(1)
    assert first.id == answer["message_id"]


async def test_a_backlog_is_delivered_strictly_by_priority_while_the_window_is_full(
    start_server: StartServer,
) -> None:
    server = await start_server(chat=patient_chat())
    pub = await server.agent("pub")
    member = await server.agent("member", window=1)
    await member.subscribe("fleet")
    await pub.publish("fleet", "blocker", id="b")
    [blocker] = await member.deliveries(1)
    for i, priority in enumerate(PRIORITIES_LOW_FIRST):
        await pub.publish("fleet", priority, id=f"m{i}", priority=priority)
    got = []
    last = blocker.tag
    for _ in PRIORITIES_LOW_FIRST:
        await member.ack(last)
        [d] = await member.deliveries(1)
        got.append(d.body)
        last = d.tag
    assert got == ["critical", "high", "normal", "low"]


async def test_a_backlog_published_while_offline_arrives_highest_priority_first(
    start_server: StartServer,
) -> None:
    server = await start_server(chat=patient_chat())
    token = await server.token("member")
    member = await server.connect("member", token)
    await member.subscribe("fleet")
    await member.close()
    await assert_eventually(lambda: "member" not in server.server.sessions)
    pub = await server.agent("pub")
    for round_ in range(2):
        for priority in PRIORITIES_LOW_FIRST:
            await pub.publish(
                "fleet", [priority, round_], id=f"{priority}{round_}", priority=priority
            )
    member = await server.connect("member", token)
    got = [d.body for d in await member.deliveries(8)]
    assert got == [[p, r] for p in reversed(PRIORITIES_LOW_FIRST) for r in range(2)]


async def test_duplicate_publish_id_answers_duplicate_with_the_same_seq(
    server: RunningServer,
) -> None:
    agent = await server.agent("alice")
    await agent.subscribe("fleet")
    first = await agent.publish("fleet", "once", id="same")
    again = await agent.publish("fleet", "once", id="same")
    assert first.get("duplicate", False) is False
    assert again["duplicate"] is True
    assert (again["seq"], again["message_id"]) == (first["seq"], first["message_id"])
    chat = [m.body for m in await server.hub.channels.history("fleet") if m.kind != "system"]
    assert chat == ["once"]


async def test_a_publish_retried_on_a_new_connection_is_a_duplicate(
    server: RunningServer,
) -> None:
    token = await server.token("alice")
    agent = await server.connect("alice", token)
    await agent.subscribe("fleet")
    first = await agent.publish("fleet", "once", id="retry-me")
    await agent.close()
    agent = await server.connect("alice", token)
    again = await agent.publish("fleet", "once", id="retry-me")
    assert again["duplicate"] is True
    assert (again["seq"], again["message_id"]) == (first["seq"], first["message_id"])
    chat = [m.body for m in await server.hub.channels.history("fleet") if m.kind != "system"]
    assert chat == ["once"]


# -- acks and flow control --------------------------------------------------------------------


async def test_a_cumulative_ack_frees_the_whole_window(start_server: StartServer) -> None:
    server = await start_server(chat=patient_chat())
    pub = await server.agent("pub")
    member = await server.agent("member", window=3)
    await member.subscribe("fleet")
    for i in range(6):
        await pub.publish("fleet", i, id=f"m{i}")
    first = await member.deliveries(3)
    assert [d.body for d in first] == [0, 1, 2]
    with pytest.raises(TimeoutError):  # the window is full: nothing more comes
        await member.deliveries(1, timeout=0.3)
    await member.ack(first[-1].tag)
    rest = await member.deliveries(3)
    assert [d.body for d in rest] == [3, 4, 5]
    assert [d.tag for d in rest] == [first[-1].tag + 1, first[-1].tag + 2, first[-1].tag + 3]
    assert all(d.attempt == 1 for d in first + rest)
    await member.ack(rest[-1].tag)
    await assert_eventually(lambda: server.hub.metrics.snapshot().delivered == 6)


KILLED_CLIENT = r"""
import asyncio, json, sys
import aiohttp

async def main(url, agent, token, channel):
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json({"type": "hello", "agent_id": agent, "token": token})
        await ws.send_json({"type": "subscribe", "id": "s", "channels": [channel]})
        async for msg in ws:
            frame = msg.json()
            if frame["type"] == "ok":
                print(json.dumps({"ready": True}), flush=True)
            elif frame["type"] == "deliver":
                attempts = frame.get("attempts") or [1] * len(frame["messages"])
                for m, a in zip(frame["messages"], attempts):
                    line = {"id": m["id"], "attempt": a, "kind": m.get("kind", "chat")}
                    print(json.dumps(line), flush=True)
            # never acks

asyncio.run(main(*sys.argv[1:]))
"""


async def _read_json_line(stream: asyncio.StreamReader) -> dict[str, Any]:
    async with asyncio.timeout(10):
        line = await stream.readline()
    assert line, "the client subprocess ended early"
    obj: dict[str, Any] = json.loads(line)
    return obj


async def _kill_a_client_holding(server: RunningServer, count: int) -> tuple[str, list[str]]:
    """Run a raw client of ``rover`` in a subprocess, publish ``count`` messages to it, and
    SIGKILL it once it has received them all (unacked). Returns its token and the ids sent."""
    token = await server.token("rover")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_CLIENT,
        server.ws_url,
        "rover",
        token,
        "fleet",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert await _read_json_line(proc.stdout) == {"ready": True}
        pub = await server.agent("pub")
        sent = [(await pub.publish("fleet", i, id=f"m{i}"))["message_id"] for i in range(count)]
        seen: list[str] = []
        while len(seen) < count:
            line = await _read_json_line(proc.stdout)
            if line["kind"] != "system":
                assert line["attempt"] == 1
                seen.append(line["id"])
        assert seen == sent
        proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return token, sent


@pytest.mark.slow
async def test_a_client_killed_before_acking_gets_the_same_messages_again_on_reconnect(
    start_server: StartServer,
) -> None:
    server = await start_server(chat=patient_chat())
    token, sent = await _kill_a_client_holding(server, 20)
    rover = await server.connect("rover", token)
    again = await rover.deliveries(20)
    assert [d.id for d in again] == sent  # same ids, in commit order
    assert [d.attempt for d in again] == [1] * 20  # a lost connection is not a failed attempt


# -- request / reply --------------------------------------------------------------------------


async def test_a_request_to_an_agent_is_answered_by_its_reply(server: RunningServer) -> None:
    asker = await server.agent("asker")
    worker = await server.agent("worker")
    await asker.send(
        {"type": "request", "id": "r1", "target": "worker", "body": {"q": 2}, "timeout": 5}
    )
    [request] = await worker.deliveries(1)
    assert request.message["kind"] == "request"
    assert request.body == {"q": 2}
    await worker.send({"type": "reply", "tag": request.tag, "body": {"a": 4}})
    answer = await asker.expect_reply("r1")
    assert answer["type"] == "reply"
    [reply] = answer["replies"]
    assert reply["body"] == {"a": 4}
    assert reply["sender"] == "worker"
    assert reply["correlation_id"] == request.id


async def test_a_request_nobody_answers_fails_with_request_timeout(
    server: RunningServer,
) -> None:
    asker = await server.agent("asker")
    worker = await server.agent("worker")
    await asker.send({"type": "request", "id": "r1", "target": "worker", "timeout": 0.2})
    [request] = await worker.deliveries(1)
    error = await asker.expect_reply("r1")
    assert error["type"] == "error"
    assert error["code"] == "request_timeout"
    assert error["details"]["request_id"] == request.id


# -- registry ---------------------------------------------------------------------------------


async def test_heartbeats_update_the_agents_resources_and_last_heartbeat(
    server: RunningServer,
) -> None:
    agent = await server.agent("rover", capabilities={"lidar": 0.9}, resources={"battery": 1.0})
    before = server.hub.registry.get("rover").last_heartbeat
    await agent.send({"type": "heartbeat", "resources": {"battery": 0.4, "x": 3}})
    admin = await server.token("ops", admin=True)

    async def updated() -> bool:
        status, info = await server.request("GET", "/v1/agents/rover", token=admin)
        assert status == 200
        return bool(info["resources"] == {"battery": 0.4, "x": 3})

    await assert_eventually(updated)
    assert server.hub.registry.get("rover").last_heartbeat >= before


async def test_a_heartbeat_brings_an_agent_that_went_quiet_back_online(
    start_server: StartServer,
) -> None:
    server = await start_server(
        registry=RegistrySettings(heartbeat_interval=0.2, missed_heartbeats=1)
    )
    agent = await server.agent("rover", capabilities={"lidar": 0.9})
    await assert_eventually(lambda: not server.hub.registry.get("rover").online)
    await agent.send({"type": "heartbeat"})
    await assert_eventually(lambda: server.hub.registry.get("rover").online)


async def test_a_disconnect_marks_the_agent_offline_at_once(start_server: StartServer) -> None:
    # Heartbeats are an hour apart: only the dropped connection can make it offline.
    server = await start_server(registry=RegistrySettings(heartbeat_interval=3600.0))
    agent = await server.agent("rover", capabilities={"lidar": 0.9})
    token = await server.token("ops")
    status, listed = await server.request("GET", "/v1/agents?status=available", token=token)
    assert status == 200
    assert [a["id"] for a in listed["agents"]] == ["rover"]
    await agent.close()

    async def offline() -> bool:
        _, info = await server.request("GET", "/v1/agents/rover", token=token)
        return info["online"] is False

    await assert_eventually(offline, timeout=2.0)
    _, listed = await server.request("GET", "/v1/agents?status=offline", token=token)
    assert [a["id"] for a in listed["agents"]] == ["rover"]
