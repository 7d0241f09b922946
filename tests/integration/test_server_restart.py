"""The network hub killed with SIGKILL and restarted on the same SQLite file.

``fleetchat serve`` runs as a real subprocess (the installed console script); agents talk to it
over real WebSockets and HTTP. After the kill a new server process, on a new port, must give
the agent back every message it had not acked (same ids, attempts unchanged), none it had
acked, its memberships, its registry record and every message in history.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from fleetchat.backends.ports import CursorRecord
from fleetchat.testing import assert_eventually
from tests.e2e.conftest import Delivery, RawAgent

pytestmark = pytest.mark.slow

FLEETCHAT = Path(sys.executable).parent / "fleetchat"
START_TIMEOUT = 20.0
_SERVING = re.compile(r"fleetchat hub serving (https?://[^\s:]+:\d+):")


class ServeProcess:
    """``fleetchat serve --port 0 --auth`` on one database file."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.ws_url = url.replace("http", "ws", 1) + "/v1/ws"

    @classmethod
    async def start(cls, db_url: str, log: Path, *extra: str) -> ServeProcess:
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                str(FLEETCHAT),
                "serve",
                "--port",
                "0",
                "--db",
                db_url,
                "--auth",
                "--log-level",
                "warning",
                *extra,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = (await proc.stdout.readline()).decode()
        except BaseException:
            await _reap(proc)
            raise
        match = _SERVING.search(line)
        if match is None:
            await _reap(proc)
            pytest.fail(f"unexpected first line {line!r}; see {log}")
        return cls(proc, match.group(1))

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(START_TIMEOUT):
            assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> int:
        """SIGTERM: the clean shutdown; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(START_TIMEOUT):
            return await self.proc.wait()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def create_token(db_url: str, agent_id: str, *, admin: bool = False) -> str:
    args = [str(FLEETCHAT), "token", "create", agent_id, "--db", db_url]
    if admin:
        args.append("--admin")
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(START_TIMEOUT):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode().strip()


def acked_through(db: Path, member: str, channel: str) -> int:
    """The seq through which ``member``'s acks in ``channel`` are on disk (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT data FROM cursors WHERE member = ? AND channel = ?", (member, channel)
        ).fetchone()
    return msgspec.json.decode(row[0], type=CursorRecord).floor if row else 0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def servers() -> AsyncIterator[list[ServeProcess]]:
    """Server processes started by the test; any still running are killed at teardown."""
    started: list[ServeProcess] = []
    yield started
    for server in started:
        await _reap(server.proc)


async def test_a_killed_server_restarted_on_its_file_gives_back_every_unacked_message(
    tmp_path: Path, http: aiohttp.ClientSession, servers: list[ServeProcess]
) -> None:
    db = tmp_path / "hub.db"
    db_url = f"sqlite:///{db}"
    log = tmp_path / "serve.log"
    admin = await create_token(db_url, "ops", admin=True)
    rover_token = await create_token(db_url, "rover")
    pub_token = await create_token(db_url, "pub")
    agents: list[RawAgent] = []

    async def connect(server: ServeProcess, agent_id: str, token: str, **hello: Any) -> RawAgent:
        agent = RawAgent(await http.ws_connect(server.ws_url))
        agents.append(agent)
        await agent.send({"type": "hello", "agent_id": agent_id, "token": token, **hello})
        assert (await agent.recv())["type"] == "welcome"
        return agent

    async def rest(server: ServeProcess, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {admin}"}
        async with http.request(method, server.url + path, headers=headers, **kwargs) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    try:
        first = await ServeProcess.start(db_url, log)
        servers.append(first)
        await rest(first, "POST", "/v1/channels", json={"name": "fleet", "announce": False})
        rover = await connect(first, "rover", rover_token, capabilities={"lidar": 0.9})
        await rover.subscribe("fleet")
        pub = await connect(first, "pub", pub_token)
        sent = [(await pub.publish("fleet", i, id=f"m{i}"))["message_id"] for i in range(10)]
        got = await rover.deliveries(10)
        assert [d.id for d in got] == sent
        await rover.ack(got[3].tag)  # cumulative: the first four
        await assert_eventually(lambda: acked_through(db, "rover", "fleet") == 4)
        await first.kill()
        for agent in agents:
            await agent.wait_closed()

        second = await ServeProcess.start(db_url, log)
        servers.append(second)
        rover = await connect(second, "rover", rover_token)
        pub = await connect(second, "pub", pub_token)
        marker = (await pub.publish("fleet", "after", id="after"))["message_id"]
        again: list[Delivery] = []
        while not again or again[-1].id != marker:
            again += await rover.deliveries(1)
        assert [d.id for d in again] == [*sent[4:], marker]
        assert [d.attempt for d in again] == [1] * 7

        members = await rest(second, "GET", "/v1/channels/fleet/members")
        assert members == {"members": ["rover"]}
        info = await rest(second, "GET", "/v1/agents/rover")
        assert info["capabilities"] == {"lidar": 0.9}
        history = await rest(second, "GET", "/v1/channels/fleet/history")
        assert [m["id"] for m in history["messages"]] == [*sent, marker]
        assert [m["seq"] for m in history["messages"]] == list(range(1, 12))

        await rover.ack(again[-1].tag)
        await assert_eventually(lambda: acked_through(db, "rover", "fleet") == 11)
        for agent in agents:
            await agent.close()
        assert await second.stop() == 0
    finally:
        for agent in agents:
            await agent.close()


async def test_a_failed_attempt_still_counts_after_the_server_is_killed(
    tmp_path: Path, http: aiohttp.ClientSession, servers: list[ServeProcess]
) -> None:
    db = tmp_path / "hub.db"
    db_url = f"sqlite:///{db}"
    config = tmp_path / "fleetchat.toml"
    config.write_text("[chat.qos.normal]\nack_timeout = 1.0\nmax_attempts = 5\n")
    log = tmp_path / "serve.log"
    tokens = {a: await create_token(db_url, a) for a in ("rover", "pub")}
    agents: list[RawAgent] = []

    async def connect(server: ServeProcess, agent_id: str) -> RawAgent:
        agent = RawAgent(await http.ws_connect(server.ws_url))
        agents.append(agent)
        await agent.send({"type": "hello", "agent_id": agent_id, "token": tokens[agent_id]})
        assert (await agent.recv())["type"] == "welcome"
        return agent

    def retries() -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute(
                "SELECT data FROM cursors WHERE member = 'rover' AND channel = '@rover'"
            ).fetchone()
        return msgspec.json.decode(row[0], type=CursorRecord).retries if row else {}

    try:
        first = await ServeProcess.start(db_url, log, "--config", str(config))
        servers.append(first)
        rover = await connect(first, "rover")
        pub = await connect(first, "pub")
        assert (await pub.publish("@rover", "job", id="job"))["type"] == "published"
        [attempt1] = await rover.deliveries(1)
        [attempt2] = await rover.deliveries(1, timeout=10)  # after the 1 s ack timeout
        assert (attempt1.attempt, attempt2.attempt, attempt2.id) == (1, 2, attempt1.id)
        await assert_eventually(lambda: retries() == {attempt1.id: 1})
        await first.kill()

        second = await ServeProcess.start(db_url, log, "--config", str(config))
        servers.append(second)
        rover = await connect(second, "rover")
        [again] = await rover.deliveries(1)
        assert (again.id, again.attempt, again.body) == (attempt1.id, 2, "job")
        await rover.ack(again.tag)
        await assert_eventually(lambda: retries() == {})
        for agent in agents:
            await agent.close()
        assert await second.stop() == 0
    finally:
        for agent in agents:
            await agent.close()
