"""``fleetchat leases`` against a real server."""

from __future__ import annotations

import asyncio
import json

from click.testing import Result
from typer.testing import CliRunner

from fleetchat.cli import app
from tests.e2e.conftest import StartServer

runner = CliRunner()


async def fleetchat(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def test_leases_acquire_list_and_release_from_the_command_line(
    start_server: StartServer,
) -> None:
    running = await start_server(auth=False, url="memory://")
    hub = ("--hub", running.url)

    got = await fleetchat("leases", "acquire", "dock-1", "--as", "amr-1", "--json", *hub)
    assert got.exit_code == 0, got.output
    token = json.loads(got.stdout)["token"]
    listed = await fleetchat("leases", "list", *hub)
    assert "dock-1" in listed.stdout
    assert "amr-1" in listed.stdout
    renewed = await fleetchat(
        "leases", "renew", "dock-1", "--lease", str(token), "--as", "amr-1", *hub
    )
    assert renewed.exit_code == 0, renewed.output

    done = await fleetchat(
        "leases", "release", "dock-1", "--lease", str(token), "--as", "amr-1", *hub
    )

    assert done.exit_code == 0, done.output
    assert (await running.hub.leases.get("dock-1")).holder is None


async def test_leases_acquire_of_a_held_resource_prints_one_error_line(
    start_server: StartServer,
) -> None:
    running = await start_server(auth=False, url="memory://")
    await running.hub.leases.acquire("door", "amr-1")

    got = await fleetchat("leases", "acquire", "door", "--timeout", "0", "--hub", running.url)

    assert got.exit_code == 1
    assert got.stderr.strip().startswith("error [lease_timeout] ")
