"""``fleetchat tail | send | channels | agents | dlq`` against a real server on a free port.

The commands run through typer's CliRunner in a worker thread (each runs its own event loop,
as from a shell) while the server runs on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fleetchat.cli import app
from fleetchat.cli.remote import DEFAULT_HUB, message_line
from fleetchat.cli.remote import _age as age
from fleetchat.cli.remote import _until_signal as until_signal
from fleetchat.client import DEFAULT_HUB as SDK_DEFAULT_HUB
from fleetchat.config import ChatSettings, QosSettings
from fleetchat.models import Message
from fleetchat.testing import assert_eventually
from fleetchat.types import Priority
from tests.e2e.conftest import RunningServer, StartServer

runner = CliRunner()


async def fleetchat(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run one command as from a shell (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


def one_error_line(result: Result, code: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line: str = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"error [{code}] "), line
    return line


@pytest.fixture
async def hub(start_server: StartServer) -> RunningServer:
    """A hub with auth off and short ack timeouts (dead letters come quickly)."""
    qos = {p: QosSettings(ack_timeout=60.0, max_attempts=1) for p in Priority}
    return await start_server(auth=False, url="memory://", chat=ChatSettings(qos=qos))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- send -----------------------------------------------------------------------------------


async def test_send_publishes_the_text_with_its_priority(hub: RunningServer) -> None:
    await hub.hub.channels.create("cell-1", announce=False)
    result = await fleetchat(
        "send", "cell-1", "dock 3 is free", "--priority", "high", "--hub", hub.url
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("published cell-1#1 as cli (message ")
    (m,) = await hub.hub.channels.history("cell-1")
    assert (m.body, m.priority, m.sender) == ("dock 3 is free", "high", "cli")


async def test_send_json_body_as_another_sender_prints_the_message_as_json(
    hub: RunningServer,
) -> None:
    await hub.hub.channels.create("cell-1", announce=False)
    result = await fleetchat(
        "send", "cell-1", '{"task": "pick", "bin": 4}', "--json-body", "--as", "planner",
        "--kind", "task", "--json", "--hub", hub.url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["body"] == {"task": "pick", "bin": 4}
    assert (printed["sender"], printed["kind"], printed["seq"]) == ("planner", "task", 1)


async def test_send_with_a_body_that_is_not_json_prints_one_error_line(hub: RunningServer) -> None:
    result = await fleetchat("send", "cell-1", "{oops", "--json-body", "--hub", hub.url)
    one_error_line(result, "invalid_input")


async def test_send_to_a_missing_channel_prints_one_error_line(hub: RunningServer) -> None:
    result = await fleetchat("send", "nowhere", "hello", "--hub", hub.url)
    assert "nowhere" in one_error_line(result, "channel_not_found")


async def test_send_with_an_unknown_priority_prints_one_error_line(hub: RunningServer) -> None:
    result = await fleetchat("send", "cell-1", "x", "--priority", "urgent", "--hub", hub.url)
    one_error_line(result, "invalid_input")


# -- listings -------------------------------------------------------------------------------


async def test_channels_lists_the_channels_as_a_table_and_as_json(hub: RunningServer) -> None:
    await hub.hub.channels.create("cell-1", type="task")
    await hub.hub.publish("cell-1", "x", sender="ops")
    table = await fleetchat("channels", "--hub", hub.url)
    assert table.exit_code == 0, table.output
    assert table.stdout.split()[:2] == ["CHANNEL", "TYPE"]
    assert table.stdout.splitlines()[1].split()[:3] == ["cell-1", "task", "1"]
    as_json = await fleetchat("channels", "--json", "--all", "--hub", hub.url)
    names = {c["name"]: c for c in json.loads(as_json.stdout)}
    assert names["cell-1"]["last_seq"] == 1
    assert "$dlq" in names


async def test_agents_lists_the_registered_agents(hub: RunningServer) -> None:
    await hub.hub.registry.register("amr-7", capabilities={"transport": 0.9}, capacity=2)
    table = await fleetchat("agents", "--hub", hub.url)
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[1].split()[:4] == ["amr-7", "online", "0/2", "transport=0.9"]
    as_json = await fleetchat("agents", "--json", "--status", "available", "--hub", hub.url)
    assert [a["id"] for a in json.loads(as_json.stdout)] == ["amr-7"]


async def test_dlq_lists_replays_and_purges_dead_letters(hub: RunningServer) -> None:
    arm = await hub.connect("arm-1")
    await arm.subscribe("jobs")
    await hub.hub.publish("jobs", "poison", sender="ops")
    (delivery,) = await arm.deliveries(1)
    await arm.send({"type": "nack", "tag": delivery.tag, "dead_letter": True})
    await assert_eventually(hub.hub.dead_letters)

    table = await fleetchat("dlq", "--hub", hub.url)
    assert table.exit_code == 0, table.output
    row = table.stdout.splitlines()[1].split()
    assert row[1:5] == ["arm-1", "jobs#2", "rejected", "1"]
    listed = json.loads((await fleetchat("dlq", "--json", "--hub", hub.url)).stdout)
    (entry,) = listed
    replayed = await fleetchat("dlq", "--replay", str(entry["seq"]), "--hub", hub.url)
    assert replayed.stdout.strip() == "replayed 1 dead letter(s)"
    (again,) = await arm.deliveries(1)
    assert (again.body, again.message["channel"]) == ("poison", "@arm-1")
    purged = await fleetchat("dlq", "--purge", "--json", "--hub", hub.url)
    assert json.loads(purged.stdout) == {"purged": 1}
    assert await hub.hub.dead_letters() == []


async def test_dlq_refuses_replay_and_purge_together(hub: RunningServer) -> None:
    result = await fleetchat("dlq", "--replay-all", "--purge", "--hub", hub.url)
    one_error_line(result, "invalid_input")


# -- tail -----------------------------------------------------------------------------------


async def test_tail_prints_live_messages_then_leaves_the_channel(hub: RunningServer) -> None:
    await hub.hub.channels.create("cell-1", announce=False)
    tail = asyncio.ensure_future(fleetchat("tail", "cell-1", "--count", "2", "--hub", hub.url))

    def tail_member() -> str | None:
        return next((m for m in hub.hub.channels.members("cell-1") if m.startswith("tail-")), None)

    await assert_eventually(tail_member)
    await hub.hub.publish("cell-1", "low news", sender="amr-1", priority="low")
    await hub.hub.publish("cell-1", {"alarm": "door 4"}, sender="cam-2", priority="critical")
    result = await asyncio.wait_for(tail, 10)
    assert result.exit_code == 0, result.output
    lines = sorted(line.split(" ", 1)[1] for line in result.stdout.splitlines())  # no clock
    assert lines == [
        "cell-1#1 amr-1 [low] low news",
        'cell-1#2 cam-2 [critical] {"alarm":"door 4"}',
    ]
    assert hub.hub.channels.members("cell-1") == []  # a throwaway tail id leaves at exit
    assert hub.hub.metrics.snapshot().delivered == 2


async def test_tail_as_a_fixed_agent_prints_json_lines_and_keeps_its_membership(
    hub: RunningServer,
) -> None:
    env = {"FLEETCHAT_HUB": hub.url}
    tail = asyncio.ensure_future(
        fleetchat("tail", "@ops", "--as", "ops", "--count", "1", "--json", env=env)
    )
    await assert_eventually(lambda: "@ops" in hub.hub.channels.memberships("ops"))
    await hub.hub.publish("@ops", {"n": 1}, sender="amr-1", kind="task")
    result = await asyncio.wait_for(tail, 10)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert (printed["body"], printed["kind"], printed["channel"]) == ({"n": 1}, "task", "@ops")


async def test_tail_of_a_missing_channel_prints_one_error_line(hub: RunningServer) -> None:
    result = await fleetchat("tail", "nowhere", "--hub", hub.url)
    one_error_line(result, "channel_not_found")
    assert hub.hub.channels.list() == []  # nothing was created by the typo


# -- errors, auth, environment --------------------------------------------------------------

COMMANDS = [
    ["channels"],
    ["agents"],
    ["dlq"],
    ["send", "cell-1", "hi"],
    ["tail", "cell-1"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
async def test_an_unreachable_hub_is_one_error_line_not_a_traceback(command: list[str]) -> None:
    result = await fleetchat(*command, "--hub", f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the hub" in one_error_line(result, "hub_unavailable")


async def test_the_token_comes_from_the_environment_and_auth_errors_are_one_line(
    server: RunningServer,
) -> None:
    refused = await fleetchat("channels", "--hub", server.url)
    one_error_line(refused, "unauthenticated")
    env: dict[str, Any] = {
        "FLEETCHAT_HUB": server.url,
        "FLEETCHAT_TOKEN": await server.token("ops"),
    }
    listed = await fleetchat("channels", "--json", env=env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == []
    purge = await fleetchat("dlq", "--purge", env=env)
    one_error_line(purge, "forbidden")  # needs an admin token


async def test_tail_with_another_agents_token_is_refused(server: RunningServer) -> None:
    await server.hub.channels.create("cell-1")
    token = await server.token("ops")
    result = await fleetchat(
        "tail", "cell-1", "--as", "amr-1", "--token", token, "--hub", server.url
    )
    one_error_line(result, "forbidden")


def test_the_commands_default_to_the_sdks_hub_url() -> None:
    assert DEFAULT_HUB == SDK_DEFAULT_HUB


# -- formatting -----------------------------------------------------------------------------


def test_a_message_line_shows_where_who_priority_and_body() -> None:
    chat = Message(id="m", channel="cell-1", seq=7, sender="amr-1", body={"x": 1}, priority="high")
    assert message_line(chat).plain.split(" ", 1)[1] == 'cell-1#7 amr-1 [high] {"x":1}'
    note = Message(
        id="s", channel="cell-1", seq=8, sender="$hub", kind="system", body={"text": "agent joined"}
    )
    assert message_line(note).plain.endswith("$hub [normal] (system) agent joined")
    request = Message(id="r", channel="@amr-1", sender="planner", kind="request", body="where?")
    assert (
        message_line(request).plain.split(" ", 1)[1] == "@amr-1 planner [normal] (request) where?"
    )


def test_ages_read_in_the_largest_whole_unit() -> None:
    now = time.time()
    assert [age(0), age(now - 5), age(now - 125), age(now - 7300), age(now - 90000)] == [
        "-",
        "5s ago",
        "2m ago",
        "2h ago",
        "1d ago",
    ]


async def test_work_under_the_signal_handlers_runs_to_its_end() -> None:
    done: list[bool] = []

    async def work() -> None:
        done.append(True)

    await until_signal(work())
    assert done == [True]
