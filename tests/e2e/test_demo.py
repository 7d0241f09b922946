"""``fleetchat demo --headless`` run as CI runs it: a subprocess, judged by its RESULT line.

The run is the issue's (50 orders, seed 7) at x10 speed, so it takes about 30 s on two cores.
One run serves every test of the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]

ARGS = ["demo", "--headless", "--orders", "50", "--seed", "7", "--speed", "10"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Any]:
    exe = Path(sys.executable).parent / "fleetchat"
    out = subprocess.run(
        [str(exe), *ARGS],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path_factory.mktemp("demo"),
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out, json.loads(lines[-1].removeprefix("RESULT "))


def test_the_demo_exits_zero_with_every_invariant_kept(run: tuple[Any, Any]) -> None:
    out, result = run
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert result["ok"]
    assert result["problems"] == []


def test_every_order_finished_exactly_once(run: tuple[Any, Any]) -> None:
    _, result = run
    assert result["orders"] == result["orders_done"] == 50
    assert result["orders_exactly_once"]
    assert result["tasks_done"] == result["tasks"] == result["task_states"]["succeeded"]


def test_the_task_of_the_robot_that_died_was_reassigned_and_ran_elsewhere(
    run: tuple[Any, Any],
) -> None:
    _, result = run
    assert len(result["deaths"]) == 1
    assert result["reassigned_by_reason"]["agent_lost"] >= 1
    assert len(result["recovery_s"]) >= 1
    assert all(0 <= r < 5 for r in result["recovery_s"])


def test_declined_offers_went_to_the_next_candidate(run: tuple[Any, Any]) -> None:
    _, result = run
    assert result["declines"] >= 1  # the robot that starts flat declines until charged
    assert result["reassigned_by_reason"]["rejected"] >= 1


def test_the_contested_dock_never_had_two_robots_at_once(run: tuple[Any, Any]) -> None:
    _, result = run
    assert result["dock_waiting_max"] >= 1  # somebody queued behind a charging robot
    assert result["dock_grants"] >= 3
    assert result["dock_overlaps"] == 0
    assert result["dock_tokens_increasing"]


def test_the_headless_output_is_plain_lines(run: tuple[Any, Any]) -> None:
    out, result = run
    assert "\x1b[" not in out.stdout  # no terminal codes for CI logs
    assert " fault " in out.stdout
    assert " recover " in out.stdout
    assert 0 < result["latency_p50_s"] <= result["latency_p99_s"]
    assert 0.95 <= result["quality"] <= 1.0 + 1e-9


def test_the_failure_detector_recorded_each_death_as_recovered(run: tuple[Any, Any]) -> None:
    _, result = run
    assert result["deaths"]
    lost = {i["agent"]: i for i in result["incidents"]}
    for death in result["deaths"]:
        assert lost[death]["ok"] is True
        assert lost[death]["took"] >= 0
    assert result["health"] in ("ok", "warn")
