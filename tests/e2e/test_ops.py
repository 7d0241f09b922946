"""Operations end to end: an agent process killed mid-task (recovery followed and recorded),
and a ``fleetchat serve`` process whose settings are reloaded by SIGHUP and by the CLI, with a
bad file refused whole."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import Result
from typer.testing import CliRunner

from fleetchat.cli import app
from fleetchat.client import Agent, HubClient
from tests.e2e.conftest import RunningServer, StartServer
from tests.e2e.test_tasks_agents import finished, workers

__all__ = ["workers"]  # the fixture, used here

FLEETCHAT = Path(sys.executable).parent / "fleetchat"
_SERVING = re.compile(r"fleetchat hub serving (https?://[^\s:]+:\d+):")
runner = CliRunner()


async def fleetchat(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def test_an_agent_killed_mid_task_is_recovered_and_the_incident_recorded(
    start_server: StartServer, workers: Any
) -> None:
    server: RunningServer = await start_server(auth=False)
    hub = server.hub
    doomed, doomed_log = await workers(server.url, "w-1", 30.0)  # the best, and slow
    await workers(server.url, "w-2", 0.2)
    await hub.leases.acquire("dock", "w-1", ttl=60)
    task = await hub.tasks.submit({"weld": 1.0}, payload="seam-3")
    async with asyncio.timeout(10):
        while f"start {task.id} 1" not in doomed_log.read_text():  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.02)
    doomed.send_signal(signal.SIGKILL)
    await doomed.wait()
    done = await finished(server, task.id)
    assert (done.state, done.attempts[-1].agent) == ("succeeded", "w-2")

    async with asyncio.timeout(15):
        while not (found := await hub.ops.journal.read(kind="incident")):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (incident,) = [i for i in found if i["failure"] == "agent_lost"]
    assert incident["agent"] == "w-1"
    assert incident["ok"] is True
    assert incident["leases"] == ["dock"]
    moved = incident["tasks"][task.id]  # where it went first: offered to the spare
    assert moved["holder"] == "w-2"
    assert moved["after"] >= 0
    assert incident["recovered_at"] >= incident["detected_at"]
    assert (await hub.leases.get("dock")).holder is None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    """``fleetchat serve --config FILE`` on a free port (auth off)."""
    config = tmp_path / "fleetchat.toml"
    config.write_text("[chat.qos.normal]\nmax_attempts = 3\n")
    proc = subprocess.Popen(
        [
            str(FLEETCHAT),
            "serve",
            "--port",
            "0",
            "--no-auth",
            "--config",
            str(config),
            "--db",
            f"sqlite:///{tmp_path / 'hub.db'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = _SERVING.search(proc.stdout.readline())
        assert match is not None, "fleetchat serve did not start"
        yield match.group(1), config, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()


async def _attempts(url: str) -> Any:
    async with HubClient(url) as rest:
        settings = await rest.ops.settings()
    return settings["chat"]["qos"]["normal"]["max_attempts"]


async def test_serve_answers_health_and_reloads_its_settings_live(
    served: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, config, proc = served
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(url + path) as resp:
                assert resp.status == 200, path
    health = await fleetchat("health", "--json", "--hub", url)
    assert health.exit_code == 0, health.output
    assert json.loads(health.stdout)["status"] == "ok"

    # SIGHUP reads the file again.
    config.write_text("[chat.qos.normal]\nmax_attempts = 5\n")
    proc.send_signal(signal.SIGHUP)
    async with asyncio.timeout(10):
        while await _attempts(url) != 5:  # noqa: ASYNC110 - another process's state
            await asyncio.sleep(0.05)

    # A bad file is refused whole, every problem listed; nothing changes.
    config.write_text(
        '[chat.qos.normal]\nmax_attempts = 1\n[chat]\nfetch_batch = "many"\n[health]\nbogus = 1\n'
    )
    bad = await fleetchat("config", "reload", "--hub", url)
    assert bad.exit_code == 1
    assert "invalid_config" in bad.stderr
    assert "chat.fetch_batch" in bad.stderr
    assert "health.bogus" in bad.stderr
    assert await _attempts(url) == 5

    # A live change from the command line; a restart-only one is reported, not applied.
    live = await fleetchat(
        "config", "set", "chat.qos.normal.max_attempts=2", "storage.sync=full", "--hub", url
    )
    assert live.exit_code == 0, live.output
    assert "applied chat.qos.normal.max_attempts: 5 -> 2" in live.stdout
    assert "needs a restart storage.sync" in live.stdout
    assert await _attempts(url) == 2

    events = await fleetchat("events", "--type", "config", "--json", "--hub", url)
    records = json.loads(events.stdout)
    assert [r["source"] for r in records] == ["file", "api"]
    assert records[0]["applied"] == [{"path": "chat.qos.normal.max_attempts", "old": 3, "new": 5}]


async def test_the_operations_commands_print_tables(
    served: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, config, _ = served
    health = await fleetchat("health", "--hub", url)
    assert health.exit_code == 0, health.output
    assert "database.write" in health.stdout
    assert "(leader)" in health.stdout

    async with Agent("arm-1", capabilities={"weld": 0.5}, hub=url), HubClient(url) as rest:
        agent = await rest.ops.update_agent("arm-1", capabilities={"weld": 0.9}, capacity=2)
        assert (agent.capabilities, agent.capacity) == ({"weld": 0.9}, 2)
        (change,) = await rest.ops.events(type="config")
        assert change["applied"][0] == {
            "path": "agents.arm-1.capabilities",
            "old": {"weld": 0.5},
            "new": {"weld": 0.9},
        }
        assert await rest.ops.alerts() == []

    events = await fleetchat("events", "--hub", url)
    assert " config  api: agents.arm-" in events.stdout
    assert "agents.arm-1.capacity 1 -> 2" in events.stdout
    alerts = await fleetchat("alerts", "--hub", url)
    assert alerts.exit_code == 0
    shown = await fleetchat("config", "show", "--hub", url)
    assert json.loads(shown.stdout)["chat"]["qos"]["normal"]["max_attempts"] == 3
    config.write_text("[chat.qos.normal]\nmax_attempts = 4\n")
    reloaded = await fleetchat("config", "reload", "--hub", url)
    assert "applied chat.qos.normal.max_attempts: 3 -> 4" in reloaded.stdout
    again = await fleetchat("config", "reload", "--hub", url)
    assert "no change" in again.stdout
    bad = await fleetchat("config", "set", "chat.fetch_batch", "--hub", url)
    assert bad.exit_code == 2
    assert "write PATH=VALUE" in bad.output
