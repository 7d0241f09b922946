"""The operations journal: records read back by type across pages, a post that fails is logged
and not raised, and each record in one line for ``fleetchat events``."""

from __future__ import annotations

import pytest

from fleetchat import Hub
from fleetchat.cli.ops import _summary
from fleetchat.config import HubSettings
from fleetchat.ops.journal import OPS_CHANNEL
from fleetchat.testing import FakeClock


async def test_records_of_one_type_are_found_across_pages(clock: FakeClock) -> None:
    async with Hub(HubSettings(url="memory://"), clock=clock) as hub:
        journal = hub.ops.journal
        await journal.record("config", {"n": 0})
        for i in range(1500):  # more than one page of history
            await journal.record("backup", {"n": i})
        configs = await journal.read(kind="config", limit=10)
        backups = await journal.read(kind="backup", limit=3)
        assert await journal.read("$nothing-here") == []

    assert [r["n"] for r in configs] == [0]
    assert [r["n"] for r in backups] == [1497, 1498, 1499]
    assert backups[0]["seq"] < backups[-1]["seq"]


async def test_a_record_that_cannot_be_posted_is_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with Hub(HubSettings(url="memory://"), clock=clock) as hub:
        await hub.bus.delete_channel(OPS_CHANNEL)
        await hub.ops.journal.record("config", {"n": 1})
    assert "ops record not posted" in caplog.text


@pytest.mark.parametrize(
    ("record", "line"),
    [
        (
            {
                "type": "incident",
                "failure": "agent_lost",
                "agent": "amr-6",
                "ok": True,
                "recovered_at": 2.0,
                "took": 0.021,
                "tasks": {"t1": {}},
            },
            "agent_lost amr-6: recovered in 21 ms, 1 task(s) moved",
        ),
        (
            {
                "type": "incident",
                "failure": "member_stalled",
                "member": "picker",
                "ok": True,
                "recovered_at": 1.0,
                "parked": 8,
            },
            "member_stalled picker: recovered, 8 parked",
        ),
        ({"type": "incident", "failure": "backlog", "ok": False}, "backlog: open"),
        (
            {
                "type": "incident",
                "failure": "agent_lost",
                "agent": "x",
                "ok": False,
                "recovered_at": 9.0,
                "took": 20.0,
            },
            "agent_lost x: FAILED in 20000 ms",
        ),
        (
            {
                "type": "config",
                "source": "file",
                "applied": [{"path": "a.b", "old": 1, "new": 2}],
                "restart_required": [{"path": "url", "old": "x", "new": "y"}],
            },
            "file: a.b 1 -> 2; url (restart)",
        ),
        (
            {"type": "scaling", "pool": "arms", "from": 1, "to": 3, "reason": "queued", "ok": True},
            "arms 1 -> 3 (queued)",
        ),
        (
            {
                "type": "scaling",
                "pool": "arms",
                "from": 1,
                "to": 3,
                "reason": "queued",
                "ok": False,
                "error": "exit 1",
            },
            "arms 1 -> 3 (queued) FAILED: exit 1",
        ),
        ({"type": "degraded", "message": "slow disk"}, "slow disk"),
        ({"type": "other", "seq": 4, "at": 1.0, "x": 1}, '{"x":1}'),
    ],
)
def test_each_record_reads_as_one_line(record: dict[str, object], line: str) -> None:
    assert _summary(record) == line
