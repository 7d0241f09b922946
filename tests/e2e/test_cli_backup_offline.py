"""``fleetchat backup --db --out`` and ``fleetchat restore`` as a person types them (text
output), and their bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from fleetchat import Hub
from fleetchat.cli import app

runner = CliRunner()


def test_an_offline_backup_and_its_restore_print_what_they_did(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'cell.db'}"

    async def fill() -> None:
        async with Hub.open(source) as hub:
            await hub.channels.create("cell", announce=False)
            for i in range(3):
                await hub.publish("cell", {"n": i}, sender="plc")

    asyncio.run(fill())
    snapshot = tmp_path / "cell-snapshot.db"
    taken = runner.invoke(app, ["backup", "--db", source, "--out", str(snapshot)])
    assert taken.exit_code == 0, taken.output
    assert taken.stdout.startswith(f"backup {snapshot} (")
    assert "3 messages" in taken.stdout

    restored = runner.invoke(
        app, ["restore", str(snapshot), "--db", f"sqlite:///{tmp_path / 'new.db'}"]
    )
    assert restored.exit_code == 0, restored.output
    assert "every table matches" in restored.stdout
    assert " messages " in restored.stdout


def test_out_without_db_and_db_without_out_are_refused(tmp_path: Path) -> None:
    alone = runner.invoke(app, ["backup", "--out", str(tmp_path / "x.db")])
    assert alone.exit_code == 1
    assert "--out goes with --db" in alone.stderr
    missing = runner.invoke(app, ["backup", "--db", f"sqlite:///{tmp_path / 'a.db'}"])
    assert missing.exit_code == 1
    assert "--db needs --out FILE" in missing.stderr
