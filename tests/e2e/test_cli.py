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


def test_demo_runs_a_fleet_and_prints_the_delivery_metrics(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = runner.invoke(app, ["demo", "--seconds", "4.5", "--db", f"sqlite:///{db}"])
    assert result.exit_code == 0, result.output
    assert "delivery metrics" in result.stdout
    assert "dead letters: {'legacy-plc'" in result.stdout.replace("\n", " ")
    assert db.exists()


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
