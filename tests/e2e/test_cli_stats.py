"""``fleetchat stats`` and ``GET /v1/stats`` against a real ``fleetchat serve`` subprocess.

The server is the installed console script on a fresh SQLite file and a free port; the command
runs through typer's CliRunner in a worker thread (it runs its own event loop, as from a
shell) while the test's loop makes the traffic over REST.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fleetchat.cli import app
from fleetchat.client import HubClient

FLEETCHAT = Path(sys.executable).parent / "fleetchat"
_SERVING = re.compile(r"fleetchat hub serving (https?://[^\s:]+:\d+):")

runner = CliRunner()


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``fleetchat serve`` on port 0 (auth off) for the tests of this module."""
    db = tmp_path_factory.mktemp("stats") / "hub.db"
    proc = subprocess.Popen(
        [str(FLEETCHAT), "serve", "--port", "0", "--db", f"sqlite:///{db}", "--no-auth"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = _SERVING.search(proc.stdout.readline())
        assert match is not None, "fleetchat serve did not start"
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()


async def fleetchat(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def stats_json(hub_url: str) -> dict[str, Any]:
    result = await fleetchat("stats", "--json", "--hub", hub_url)
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


async def test_stats_json_counts_the_traffic_made_over_rest(hub_url: str) -> None:
    before = await stats_json(hub_url)
    async with HubClient(hub_url) as rest:
        await rest.create_channel("cell-stats", announce=False)
        for i in range(3):
            await rest.publish("cell-stats", {"n": i}, sender="plc-1")
        lease = await rest.leases.acquire("dock-stats", holder="amr-1", ttl=60)
        try:
            after = await stats_json(hub_url)
        finally:
            await lease.release()
    published = after["deliveries"]["published"] - before["deliveries"]["published"]
    assert published == 3
    assert after["leases"]["held"] == before["leases"]["held"] + 1
    assert after["channels"] == before["channels"] + 1
    assert after["node"]["leader"] is True
    assert after["tasks"]["active"]["queued"] == 0
    assert after["node"]["uptime_seconds"] >= before["node"]["uptime_seconds"]


async def test_stats_prints_a_table(hub_url: str) -> None:
    result = await fleetchat("stats", "--hub", hub_url)
    assert result.exit_code == 0, result.output
    for heading in ("node", "deliveries", "tasks", "allocation", "leases", "agents", "scaling"):
        assert re.search(rf"^\s*{heading}\s", result.stdout, re.MULTILINE), heading
    assert "leader, epoch" in result.stdout


async def test_stats_watch_reads_again_every_interval(hub_url: str) -> None:
    result = await fleetchat("stats", "--json", "--watch", "0.05", "--count", "3", "--hub", hub_url)
    assert result.exit_code == 0, result.output
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(readings) == 3
    times = [r["at"] for r in readings]
    assert times == sorted(times)
    assert times[0] < times[-1]


async def test_stats_watch_table_redraws_until_the_count(hub_url: str) -> None:
    result = await fleetchat("stats", "--watch", "0.05", "--count", "2", "--hub", hub_url)
    assert result.exit_code == 0, result.output
    assert "deliveries" in result.stdout


async def test_a_bad_interval_and_an_unreachable_hub_are_one_line_errors(hub_url: str) -> None:
    bad = await fleetchat("stats", "--watch", "0", "--hub", hub_url)
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error [invalid_input] --watch")
    gone = await fleetchat("stats", "--hub", "http://127.0.0.1:1")
    assert gone.exit_code == 1
    assert gone.stderr.startswith("error [")
    assert "Traceback" not in gone.output
