"""``fleetchat migrate`` with real parts: SQLite files, a nats-server and PostgreSQL.

The round trip goes SQLite -> NATS + PostgreSQL -> a new SQLite file, and the two files are
compared table by table: channels, memberships, messages (by id, every field but the seq, in
channel order), agents and tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from fleetchat import ConflictError, Hub, HubSettings, InvalidInputError
from fleetchat.cli import app
from fleetchat.cli.migrate import migrate
from fleetchat.models import Message
from fleetchat.server.auth import Authenticator
from fleetchat.testing import assert_eventually
from fleetchat.testing.services import NatsServer, free_port
from fleetchat.types import new_id

runner = CliRunner()


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


async def fill(hub: Hub, *, bulk: int = 40) -> None:
    """A hub with something of everything: channel kinds and settings, inboxes, members,
    history over several pages, every message field, a dead letter, agents and tokens."""
    await hub.channels.create(
        "cell-1",
        type="task",
        writers=["planner", "arm-1"],
        retention_count=5_000,
        retention_age=86_400.0,
        overflow="block",
    )
    await hub.channels.create("alerts", type="broadcast", announce=False)
    await hub.channels.create("site.a:yard-2")  # escaped on NATS
    await hub.channels.create("telemetry", ephemeral=True, announce=False)
    await hub.channels.create("quiet", announce=False)  # no messages, no members
    arm = await hub.subscribe("arm-1", "cell-1", "alerts", "telemetry")
    await hub.subscribe("cam-1", "alerts", "site.a:yard-2")
    await hub.publish(
        "cell-1",
        {"pick": "bin-7", "at": [1.5, -2.25], "note": "größer ✓"},
        sender="planner",
        priority="high",
        kind="task",
        expires_in=3600.0,
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    await hub.publish("cell-1", "stale", sender="planner", expires_in=0.001)
    await hub.publish("alerts", "door 4 open", sender="cam-1", priority="critical")
    await hub.publish("@arm-1", {"goto": "dock-2"}, sender="planner", priority="low")
    await hub.publish("site.a:yard-2", None, sender="cam-1")
    await hub.publish("telemetry", {"v": 1}, sender="arm-1")  # ephemeral: never stored
    await hub.bus.publish(  # a stored message with a correlation id
        [
            Message(
                id=new_id(),
                channel="cell-1",
                sender="arm-1",
                kind="result",
                body={"ok": True},
                correlation_id="req-42",
                created_at=hub.clock.time(),
            )
        ],
        5.0,
    )
    for i in range(bulk):
        await hub.publish("cell-1", i, sender="planner", priority=("low", "normal")[i % 2])
    # arm-1 rejects the first delivery it gets: a dead letter in $dlq
    delivery = await arm.next(timeout=5.0)
    await delivery.nack(dead_letter=True)
    await hub.registry.register(
        "arm-1",
        capabilities={"pick": 0.9, "weld": 0.4},
        capacity=2,
        labels={"cell": "1"},
        resources={"battery": 0.8, "pose": [1, 2]},
    )
    await hub.registry.register("cam-1", capabilities={"see": 1.0})
    await hub.registry.set_draining("cam-1")
    auth = Authenticator(hub.store, hub.clock, enabled=True)
    await auth.create("arm-1")
    await auth.create("ops", admin=True)
    # a task with its whole story, one waiting, and a lease held by arm-1
    done = await hub.tasks.submit({"pick": 1.0}, payload={"bin": 7}, idempotency_key="o-1")
    await assert_eventually(lambda: hub.scheduler.load("arm-1") == 1)
    await hub.tasks.start(done.id, "arm-1")
    await hub.tasks.complete(done.id, "arm-1", result={"picked": True})
    await hub.tasks.submit({"see": 1.0}, priority="high")  # cam-1 drains: it waits
    await hub.leases.acquire("dock-1", "arm-1", ttl=600)
    await assert_eventually(hub.dead_letters)
    await arm.close()


def _versionless(data: bytes) -> Any:
    record = msgspec.json.decode(data)
    record.pop("version", None)
    return record


def tables(db: Path) -> dict[str, Any]:
    """The hub's SQLite tables, without what a migration may change: seqs, and counters of
    the channels (last_seq, last_activity_at). ``$dlq``, ``$tasks``, ``$ops`` and ``$alerts``
    are made by each hub: their definitions' times differ; their messages are compared like
    the others. Tasks and lease resources are compared whole (the version is the target's)."""
    con = sqlite3.connect(db)
    try:
        channels = {}
        for name, data in con.execute("SELECT name, data FROM channels"):
            spec = msgspec.json.decode(data)
            spec.pop("last_seq", None)
            spec.pop("last_activity_at", None)
            if name in ("$dlq", "$tasks", "$ops", "$alerts"):
                spec.pop("created_at", None)
            channels[name] = spec
        messages: dict[str, list[dict[str, Any]]] = {}
        for channel, data in con.execute("SELECT channel, data FROM messages ORDER BY seq"):
            m = msgspec.json.decode(data)
            assert m.pop("seq") > 0
            messages.setdefault(channel, []).append(m)
        return {
            "channels": channels,
            "members": sorted(con.execute("SELECT channel, member FROM members").fetchall()),
            "messages": messages,
            "agents": {i: msgspec.json.decode(d) for i, d in con.execute("SELECT * FROM agents")},
            "tokens": {
                h: (a, msgspec.json.decode(d)) for h, a, d in con.execute("SELECT * FROM tokens")
            },
            "tasks": {i: _versionless(d) for i, d in con.execute("SELECT id, data FROM tasks")},
            "leases": {
                n: _versionless(d) for n, d in con.execute("SELECT name, data FROM lease_resources")
            },
        }
    finally:
        con.close()


async def test_round_trip_sqlite_to_nats_postgres_to_sqlite_keeps_every_record(
    tmp_path: Path, nats_server: NatsServer, postgres_url: str
) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    async with Hub.open(_url(first)) as hub:
        await fill(hub)
    distributed = HubSettings(url=nats_server.url, store_url=postgres_url)

    async with Hub.open(_url(first)) as source, Hub(distributed) as target:
        seen: list[tuple[str, int]] = []
        there = await migrate(
            source, target, page_size=7, progress=lambda what, n: seen.append((what, n))
        )
    assert there.messages == sum(len(v) for v in tables(first)["messages"].values())
    assert (there.agents, there.tokens, there.messages_skipped) == (2, 2, 0)
    assert ("memberships", there.messages) in seen
    assert next(c for c in there.channels if c.name == "$dlq").created is False

    async with Hub(distributed) as source, Hub.open(_url(second)) as target:
        cell = await source.channels.history("cell-1", limit=1000)
        assert [m.seq for m in cell] == sorted({m.seq for m in cell})  # NATS: grows, gaps
        assert source.channels.members("alerts") == ["arm-1", "cam-1"]
        back = await migrate(source, target, page_size=5)
    assert back.to_dict() == {**there.to_dict(), "seconds": back.to_dict()["seconds"]}

    before, after = tables(first), tables(second)
    assert after["channels"] == before["channels"]
    assert after["members"] == before["members"]
    assert after["messages"].keys() == before["messages"].keys()
    for channel, msgs in before["messages"].items():
        assert after["messages"][channel] == msgs, channel  # every field but seq, in order
    assert "telemetry" not in after["messages"]  # ephemeral: the definition only
    assert after["agents"] == before["agents"]
    assert after["tokens"] == before["tokens"]
    assert len(before["messages"]["$dlq"]) == 1


async def test_members_receive_new_messages_not_the_copied_history(tmp_path: Path) -> None:
    async with Hub.open(_url(tmp_path / "a.db")) as hub:
        await fill(hub, bulk=3)
    async with Hub.open(_url(tmp_path / "a.db")) as source, Hub.open(_url(tmp_path / "b.db")) as t:
        await migrate(source, t)
        cam = await t.subscribe("cam-1")
        assert await cam.fetch(timeout=0.2) is None
        sent = await t.publish("alerts", "new", sender="planner")
        got = await cam.next(timeout=5.0)
        assert got.message.id == sent.id


async def test_merge_copies_only_what_the_target_lacks(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    async with Hub.open(_url(a)) as hub:
        await fill(hub, bulk=5)
    async with Hub.open(_url(a)) as source, Hub.open(_url(b)) as target:
        await migrate(source, target)
    async with Hub.open(_url(a)) as hub:
        await hub.publish("cell-1", "later", sender="planner")
        await hub.channels.create("late", announce=False)
        await hub.publish("late", "hello", sender="x")
        await hub.registry.register("late-agent")
    async with Hub.open(_url(a)) as source, Hub.open(_url(b)) as target:
        with pytest.raises(ConflictError) as refused:
            await migrate(source, target)
        assert refused.value.details["reason"] == "target_not_empty"
        report = await migrate(source, target, merge=True, page_size=4)
    assert report.messages == 2  # "later" and "hello"
    assert report.messages_skipped == sum(len(v) for v in tables(b)["messages"].values()) - 2
    assert (report.agents, report.agents_skipped, report.tokens, report.tokens_skipped) == (
        1,
        2,
        0,
        2,
    )
    assert report.memberships == 0
    assert tables(a) == tables(b)


async def test_a_non_empty_target_is_refused_and_left_unchanged(
    tmp_path: Path, nats_server: NatsServer, postgres_url: str
) -> None:
    async with Hub.open(_url(tmp_path / "a.db")) as hub:
        await fill(hub, bulk=1)
    async with Hub(HubSettings(url=nats_server.url, store_url=postgres_url)) as target:
        await target.channels.create("mine", announce=False)
        async with Hub.open(_url(tmp_path / "a.db")) as source:
            with pytest.raises(ConflictError, match=r"already has 1 channel\(s\) \(mine\)"):
                await migrate(source, target)
        names = [c.name for c in target.channels.list(include_system=True)]
        assert names == ["$alerts", "$dlq", "$ops", "$tasks", "mine"]
        assert target.store.load_agents() == []


async def test_the_same_hub_or_a_bad_page_size_is_refused(tmp_path: Path) -> None:
    async with Hub.open(_url(tmp_path / "a.db")) as hub, Hub.open("memory://") as other:
        with pytest.raises(InvalidInputError, match="same hub"):
            await migrate(hub, hub)
        with pytest.raises(InvalidInputError, match="page_size"):
            await migrate(hub, other, page_size=0)


# -- the command ------------------------------------------------------------------------------


async def test_the_command_moves_an_embedded_hub_to_nats_and_postgres(
    tmp_path: Path, nats_server: NatsServer, postgres_url: str
) -> None:
    db = tmp_path / "hub.db"
    async with Hub.open(_url(db)) as hub:
        await fill(hub, bulk=30)
    args = ["--from", _url(db), "--to", nats_server.url, "--to-store", postgres_url, "--json"]
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fleetchat"),
        "migrate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Not measured: under `pytest --cov` a subprocess starts coverage from a .pth file, and
        # there asyncio's tasks raise another CancelledError class than asyncio.CancelledError
        # (suppress(asyncio.CancelledError) misses it: Hub.close fails). The in-process CLI
        # tests below measure the command.
        env={k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS")},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    stored = tables(db)
    assert summary["messages"] == sum(len(v) for v in stored["messages"].values())
    assert summary["memberships"] == len(stored["members"])
    assert (summary["agents"], summary["tokens"]) == (2, 2)
    assert {c["name"] for c in summary["per_channel"]} == set(stored["channels"])

    async with Hub(HubSettings(url=nats_server.url, store_url=postgres_url)) as hub:
        ids = [m["id"] for m in stored["messages"]["cell-1"]]
        assert [m.id for m in await hub.channels.history("cell-1")] == ids
        arm = await hub.subscribe("arm-1")  # a member since before: not flooded with history
        assert await arm.fetch(timeout=1.0) is None
        sent = await hub.publish("cell-1", "after the move", sender="planner")
        got = await arm.next(timeout=10.0)
        assert got.message.id == sent.id
        await got.ack()
        assert {a.id for a in hub.registry.list()} == {"arm-1", "cam-1"}


def test_the_command_prints_a_summary_and_refuses_a_non_empty_target(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"

    async def make() -> None:
        async with Hub.open(_url(a)) as hub:
            await fill(hub, bulk=2)

    asyncio.run(make())
    result = runner.invoke(app, ["migrate", "--from", _url(a), "--to", _url(b)])
    assert result.exit_code == 0, result.output
    assert "cell-1" in result.stdout
    assert "migrated 11 channel(s)" in result.stdout
    assert "2 task(s), 1 lease(s)" in result.stdout

    again = runner.invoke(app, ["migrate", "--from", _url(a), "--to", _url(b)])
    assert again.exit_code == 2
    assert again.stderr.count("\n") == 1
    assert again.stderr.startswith("error [conflict] the target already has 7 channel(s)")
    assert "--merge" in again.stderr

    merged = runner.invoke(app, ["migrate", "--from", _url(a), "--to", _url(b), "--merge"])
    assert merged.exit_code == 0, merged.output
    assert "skipped as already there" in merged.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from", "bogus://x"], "error [invalid_config] unknown backend URL 'bogus://x'"),
        (["--from", "sqlite://"], "error [invalid_config] 'sqlite://': write sqlite:///"),
        (["--from", "memory://"], "error [invalid_config] --from memory:// holds nothing"),
        (["--to", "nats://127.0.0.1:4222"], "error [invalid_config] --to nats://... needs"),
        (["--from", "sqlite:///nowhere/x.db"], "error [not_found] --from sqlite:///nowhere"),
        (["--to", "sqlite:///{src}"], "error [invalid_input] --from and --to are the same hub"),
        (
            ["--to", "nats://127.0.0.1:{port}", "--to-store", "postgresql://u@127.0.0.1:1/d"],
            "error [backend_unavailable] cannot connect to",
        ),
        (
            ["--to-store", "postgresql://u@127.0.0.1:1/d"],
            "error [invalid_config] a separate store (store_url) goes with the distributed bus",
        ),
    ],
)
def test_a_bad_url_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    src = tmp_path / "src.db"
    sqlite3.connect(src).close()
    given = {"--from": _url(src), "--to": _url(tmp_path / "dst.db")}
    for option, value in zip(args[::2], args[1::2], strict=True):
        given[option] = value.format(src=src, port=free_port())
    result = runner.invoke(app, ["migrate", *[x for kv in given.items() for x in kv]])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(expected), result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "dst.db").exists() or "store" in expected


def test_a_nats_source_without_a_store_says_its_agents_are_not_copied(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    result = runner.invoke(
        app, ["migrate", "--from", nats_server.url, "--to", _url(tmp_path / "b.db"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "note: no --from-store: the source's agents and tokens are not copied" in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["channels"], summary["agents"], summary["tokens"]) == (4, 0, 0)  # $ channels


def test_an_unexpected_failure_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("fleetchat.cli.migrate.migrate", broken)
    sqlite3.connect(tmp_path / "a.db").close()
    result = runner.invoke(
        app, ["migrate", "--from", _url(tmp_path / "a.db"), "--to", _url(tmp_path / "b.db")]
    )
    assert result.exit_code == 1
    assert result.stderr == "error [internal] RuntimeError: disk on fire\n"


def test_a_bad_log_level_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["migrate", "--from", "sqlite:///a.db", "--to", "sqlite:///b.db", "--log-level", "x"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error [invalid_input] --log-level 'x'")
