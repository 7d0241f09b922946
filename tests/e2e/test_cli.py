"""The command line, run the way a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetchat import __version__
from fleetchat.cli import app, main

runner = CliRunner()


def test_version_prints_the_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_demo_runs_a_small_cell_in_the_live_view_and_prints_the_report(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    args = ["demo", "--orders", "3", "--agents", "10", "--speed", "30", "--url", f"sqlite:///{db}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "factory cell: final report" in result.stdout
    assert "orders done" in result.stdout
    assert db.exists()


def test_demo_exits_non_zero_when_an_invariant_broke(monkeypatch: pytest.MonkeyPatch) -> None:
    import fleetchat.demo

    class Broken:
        ok = False

    async def broken_run(options: object) -> Broken:
        return Broken()

    monkeypatch.setattr(fleetchat.demo, "run_demo", broken_run)
    assert runner.invoke(app, ["demo", "--headless"]).exit_code == 1


def test_demo_refuses_a_cell_too_small_to_run() -> None:
    result = runner.invoke(app, ["demo", "--agents", "3"])
    assert result.exit_code == 2
    assert "--agents >= 8" in result.output


def test_errors_print_one_line_with_their_code_and_exit_non_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["fleetchat", "demo", "--db", "bogus://x"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "[invalid_config]" in err
    assert "Traceback" not in err


def test_the_installed_command_starts() -> None:
    exe = Path(sys.executable).parent / "fleetchat"
    out = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "demo" in out.stdout
