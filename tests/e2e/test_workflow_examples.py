"""The two example workflows run end to end with one command each, as a user would run them
against ``fleetchat serve``: here a hub with auth off (as the examples expect) on a free port."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer

EXAMPLES = Path(__file__).parents[2] / "examples" / "workflows"


async def run_example(script: str, url: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        "--hub",
        url,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize(
    ("script", "summary"),
    [
        ("factory_order.py", "3/3 orders completed"),
        ("customer_service.py", "4/4 tickets answered in under 8 s"),
    ],
)
async def test_an_example_workflow_runs_to_the_end(
    start_server: StartServer, script: str, summary: str
) -> None:
    server = await start_server(auth=False)
    code, out = await run_example(script, server.url)
    assert code == 0, out
    assert summary in out
    if script == "customer_service.py":
        assert "t-4: completed by human" in out  # the vague ticket was escalated
        assert "t-3: completed by refund" in out
