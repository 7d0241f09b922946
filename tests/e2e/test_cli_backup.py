"""``fleetchat backup`` against a ``fleetchat serve`` process, then ``fleetchat restore`` into a
new database, each command a process of its own as from a shell."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from fleetchat import Hub
from fleetchat.server.auth import Authenticator
from tests.integration.test_server_restart import FLEETCHAT, START_TIMEOUT, ServeProcess


async def cli(*args: str) -> tuple[int, str, str]:
    """Run ``fleetchat ARGS``; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(FLEETCHAT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(START_TIMEOUT * 3):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _ok_json(*args: str) -> Any:
    code, out, err = await cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_backup_of_a_served_hub_then_restore_into_a_new_database(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    db_url = f"sqlite:///{db}"
    async with Hub.open(db_url) as hub:
        await hub.channels.create("cell", announce=False)
        for i in range(25):
            await hub.publish("cell", {"n": i}, sender="planner")
        await hub.registry.register("arm", capabilities={"weld": 1.0})
        await hub.tasks.submit({"weld": 1.0}, payload={"seam": 4})
        auth = Authenticator(hub.store, hub.clock, enabled=True)
        admin = await auth.create("ops", admin=True)
        worker = await auth.create("arm")
    server = await ServeProcess.start(db_url, tmp_path / "serve.log")
    try:
        remote = ("--hub", server.url, "--token", admin)
        taken = await _ok_json("backup", *remote)
        assert Path(taken["file"]).parent == tmp_path / "hub.db.backups"
        assert taken["counts"]["messages"] >= 25
        assert taken["counts"]["tasks"] == 1
        assert taken["bytes"] == await asyncio.to_thread(os.path.getsize, taken["file"])
        code, out, _ = await cli("backup", "list", *remote)
        assert code == 0
        assert Path(taken["file"]).name in out
        assert f"1 backup(s) in {tmp_path / 'hub.db.backups'}" in out
        code, _, err = await cli("backup", "--hub", server.url, "--token", worker)
        assert code == 1
        assert err.startswith("error [forbidden] ")
    finally:
        assert await server.stop() == 0

    target = tmp_path / "restored.db"
    code, out, err = await cli("restore", taken["file"], "--db", f"sqlite:///{target}")
    assert code == 0, err
    assert "every table matches" in out
    assert "messages" in out
    assert f"messages     {taken['counts']['messages']}" in out
    again = await cli("restore", taken["file"], "--db", f"sqlite:///{target}", "--json")
    assert again[0] == 1
    assert again[2].startswith("error [conflict] ")
    async with Hub.open(f"sqlite:///{target}") as restored:
        history = await restored.channels.history("cell", limit=100)
        assert [m.body["n"] for m in history] == list(range(25))
        assert [t.payload for t in await restored.tasks.list()] == [{"seam": 4}]


async def test_backup_of_a_stopped_hub_and_a_bad_file(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    async with Hub.open(db_url) as hub:
        await hub.channels.create("cell", announce=False)
        await hub.publish("cell", "hello", sender="x")
    out_file = tmp_path / "offline.db"
    taken = await _ok_json("backup", "--db", db_url, "--out", str(out_file))
    assert taken["file"] == str(out_file)
    assert taken["counts"]["channels"] >= 2
    code, _, err = await cli("restore", str(tmp_path / "hub.db"), "--db", "sqlite:///x.db")
    assert code == 1
    assert err.startswith("error [invalid_input] ")
    assert "not a fleetchat backup" in err
    assert not await asyncio.to_thread(os.path.exists, "x.db")
