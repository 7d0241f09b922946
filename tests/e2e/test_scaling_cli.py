"""``fleetchat scaling`` against a real server whose autoscaler runs a command pool (a real
shell command writing the count it is given)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from fleetchat.cli import app
from fleetchat.ops.settings import PoolSettings, ScalingSettings
from fleetchat.testing import assert_eventually
from tests.e2e.conftest import RunningServer, StartServer

runner = CliRunner()


async def fleetchat(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def with_pool(start_server: StartServer, tmp_path: Path) -> RunningServer:
    running = await start_server(auth=False, url="memory://")
    pool = PoolSettings(
        actuator="command",
        command=["sh", "-c", f'echo "$1" > {tmp_path / "count"}', "resize", "{count}"],
        min=1,
        max=4,
    )
    settings = ScalingSettings(interval=600.0, cpu_high=1.0, pools={"render": pool})
    running.hub.ops.scaling.reconfigure(settings)
    await assert_eventually(lambda: running.hub.ops.scaling.rounds > 0)
    return running


async def test_scaling_shows_the_pools_and_set_resizes_one(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await with_pool(start_server, tmp_path)
    hub = ("--hub", running.url)

    shown = await fleetchat("scaling", *hub)
    assert shown.exit_code == 0, shown.output
    assert "render" in shown.stdout
    assert "1..4" in shown.stdout
    resized = await fleetchat("scaling", "set", "render", "3", *hub)
    assert resized.exit_code == 0, resized.output
    assert "pool render: 1 -> 3" in resized.stdout
    assert (tmp_path / "count").read_text().strip() == "3"
    status = json.loads((await fleetchat("scaling", "--json", *hub)).stdout)
    assert (status["pools"][0]["current"], status["pools"][0]["desired"]) == (3, 3)


async def test_scaling_events_lists_them_as_a_table_and_as_json(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await with_pool(start_server, tmp_path)
    await running.hub.ops.scaling.scale("render", 2)
    hub = ("--hub", running.url)

    table = await fleetchat("scaling", "events", *hub)
    assert table.exit_code == 0, table.output
    assert "manual" in table.stdout
    got = json.loads((await fleetchat("scaling", "events", "--json", "--limit", "1", *hub)).stdout)
    assert [(e["kind"], e["from"], e["to"], e["ok"]) for e in got] == [("manual", 1, 2, True)]


async def test_a_bad_resize_prints_one_error_line(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await with_pool(start_server, tmp_path)
    got = await fleetchat("scaling", "set", "render", "9", "--hub", running.url)
    assert got.exit_code == 1
    assert got.stderr.strip() == "error [invalid_input] count must be 1..4 for pool render"
    unknown = await fleetchat("scaling", "set", "nope", "1", "--hub", running.url)
    assert unknown.stderr.strip() == "error [not_found] no scaling pool 'nope'"


async def test_scaling_without_pools_says_so(start_server: StartServer) -> None:
    running = await start_server(auth=False, url="memory://")
    got = await fleetchat("scaling", "--hub", running.url)
    assert got.exit_code == 0, got.output
    assert got.stdout.startswith("no scaling pools configured")
