"""Local CLI commands (tokens), the JSON log format and the serve loop, in-process."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import sys
from pathlib import Path

import aiohttp
from typer.testing import CliRunner

from fleetchat import HubSettings, ServerSettings
from fleetchat.cli import app
from fleetchat.cli.app import JsonFormatter, _configure_logging
from fleetchat.server.app import serve_forever
from fleetchat.server.auth import hash_token

runner = CliRunner()


def test_token_create_prints_a_token_stored_only_as_its_hash(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    result = runner.invoke(app, ["token", "create", "robot-7", "--admin", "--db", db])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("fct_")
    raw = (tmp_path / "hub.db").read_bytes()
    assert token.encode() not in raw
    assert hash_token(token).encode() in raw


def test_token_revoke_removes_every_token_of_the_agent(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    for _ in range(2):
        assert runner.invoke(app, ["token", "create", "robot-7", "--db", db]).exit_code == 0
    result = runner.invoke(app, ["token", "revoke", "robot-7", "--db", db])
    assert result.exit_code == 0, result.output
    assert "revoked 2 token(s) of robot-7" in result.stdout


def test_json_log_lines_carry_the_extra_context() -> None:
    record = logging.makeLogRecord(
        {"name": "fleetchat.x", "levelname": "WARNING", "msg": "slow %s", "args": ("member",)}
    )
    record.agent_id = "arm-1"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["msg"], line["agent_id"]) == ("warning", "slow member", "arm-1")
    assert "ValueError: boom" in line["exc"]


def test_configure_logging_installs_the_chosen_format() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        _configure_logging("info", "json")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        _configure_logging("warning", "text")
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


async def test_serve_forever_serves_until_stopped(tmp_path: Path, capsys: object) -> None:
    settings = HubSettings(url=f"sqlite:///{tmp_path / 'hub.db'}", server=ServerSettings(port=0))
    stop = asyncio.Event()
    threshold = gc.get_threshold()
    task = asyncio.ensure_future(serve_forever(None, settings, stop))
    from fleetchat.testing import assert_eventually

    out: list[str] = []

    def printed() -> bool:
        out.append(capsys.readouterr().out)  # type: ignore[attr-defined]
        return "serving http://" in "".join(out)

    await assert_eventually(printed)
    match = re.search(r"serving (http://[\d.]+:\d+)", "".join(out))
    assert match is not None
    try:
        async with aiohttp.ClientSession() as http, http.get(match[1] + "/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        gc.unfreeze()
        gc.set_threshold(*threshold)
