"""The SQLite write backlog under more publishers than it holds, in a child process.

A child process, because the failure this guards against (fixed in 72b230c) is a busy loop in
SqliteDatabase.write_messages that never yields to the event loop: in-process it would freeze
the test run itself, since no asyncio timeout can fire; here it fails within seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHILD = """
import asyncio, sys
from fleetchat import BackpressureError, Hub, HubSettings, StorageSettings

async def main(path):
    settings = HubSettings(url=f"sqlite:///{path}", storage=StorageSettings(max_pending_writes=4))
    async with Hub(settings) as hub:
        await hub.channels.create("c", announce=False)
        results = await asyncio.gather(
            *[hub.publish("c", n, sender="p") for n in range(10)], return_exceptions=True
        )
        ok = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(e, BackpressureError) for e in errors), errors
        print("published", len(ok), "backpressure", len(errors), flush=True)

asyncio.run(main(sys.argv[1]))
"""


def test_publishers_beyond_the_write_backlog_wait_instead_of_hanging(tmp_path: Path) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "backlog.db")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=6,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(
            "10 concurrent publishes with max_pending_writes=4 did not finish in 6 s: the "
            "process hangs (busy loop in SqliteDatabase.write_messages)"
        ) from None
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith("published "), proc.stdout.decode()
