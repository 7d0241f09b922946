"""Content digests of a hub's state, table by table: what a backup's manifest records and what
a restore checks (docs/backups.md#digests).

A digest is the SHA-256 of the table's rows in a fixed order, each row its record as canonical
JSON (keys sorted) without the fields a copy legitimately changes: a message's ``seq`` (the
target numbers history itself), a channel's counters (``last_seq``, ``last_activity_at``) and the
compare-and-set ``version`` of tasks, leases and executions. The channels every hub makes for
itself (``$dlq``, ``$tasks``, ``$ops``, ``$alerts``) count by name and type only: each backend
makes them its own way. So two hubs on different backends holding the same state have the same
digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_delivery import DLQ_CHANNEL
from fleetchat.migration import PAGE_SIZE, refresh_store
from fleetchat.ops.journal import ALERTS_CHANNEL, OPS_CHANNEL
from fleetchat.tasks.service import TASKS_CHANNEL

if TYPE_CHECKING:
    from fleetchat.migration import Side

__all__ = ["HUB_CHANNELS", "TABLES", "TableDigest", "compare", "state_digests"]

TABLES = (
    "channels",
    "members",
    "messages",
    "agents",
    "tokens",
    "tasks",
    "leases",
    "definitions",
    "executions",
    "events",
)
"""The tables of a digest, in the order they are reported."""

HUB_CHANNELS = frozenset({DLQ_CHANNEL, TASKS_CHANNEL, OPS_CHANNEL, ALERTS_CHANNEL})
"""The system channels every hub makes for itself."""

_canonical = msgspec.json.Encoder(order="sorted").encode


class TableDigest(msgspec.Struct, kw_only=True, frozen=True):
    """One table's row count and content hash."""

    rows: int
    sha256: str


class _Table:
    def __init__(self) -> None:
        self.rows = 0
        self._hash = hashlib.sha256()

    def add(self, record: Any, *drop: str) -> None:
        row = msgspec.to_builtins(record)
        for name in drop:
            row.pop(name, None)
        self._hash.update(_canonical(row))
        self._hash.update(b"\n")
        self.rows += 1

    def add_all(self, records: Iterable[Any], *drop: str) -> None:
        for record in records:
            self.add(record, *drop)

    def digest(self) -> TableDigest:
        return TableDigest(rows=self.rows, sha256=self._hash.hexdigest())


async def state_digests(side: Side, *, page_size: int = PAGE_SIZE) -> dict[str, TableDigest]:
    """The digest of every table of ``side``'s state (see the module's docstring).

    Messages are read a page at a time; each channel's in seq order, channels by name.
    Ephemeral channels count with their definition and members, never with messages.
    """
    tables = {name: _Table() for name in TABLES}
    specs = sorted(side.bus.channels(), key=lambda c: c.name)
    for spec in specs:
        if spec.name in HUB_CHANNELS:
            tables["channels"].add([spec.name, spec.type])
        else:
            tables["channels"].add(spec, "last_seq", "last_activity_at")
        tables["members"].add_all([spec.name, m] for m in sorted(side.bus.members(spec.name)))
    for spec in specs:
        if spec.ephemeral:
            continue
        start = 1
        while page := await side.bus.history(spec.name, start_seq=start, limit=page_size):
            tables["messages"].add_all(page, "seq")
            start = page[-1].seq + 1
    store = side.store
    await refresh_store(store)
    tables["agents"].add_all(sorted(store.load_agents(), key=lambda a: a.id))
    tables["tokens"].add_all(sorted(store.load_tokens(), key=lambda t: t.sha256))
    tables["tasks"].add_all(sorted(await store.load_tasks(), key=lambda t: t.id), "version")
    leases = sorted(await store.load_resources(), key=lambda r: r.name)
    tables["leases"].add_all(leases, "version")
    definitions = await store.load_definitions()
    tables["definitions"].add_all(sorted(definitions, key=lambda d: (d.name, d.version)))
    for execution in sorted(await store.load_executions(), key=lambda e: e.id):
        tables["executions"].add(execution, "version")
        tables["events"].add_all(await store.load_execution_events(execution.id))
    return {name: table.digest() for name, table in tables.items()}


def compare(expected: dict[str, TableDigest], actual: dict[str, TableDigest]) -> list[str]:
    """The tables whose digests differ (or are missing on either side), in report order."""
    names = [*TABLES, *sorted((set(expected) | set(actual)) - set(TABLES))]
    return [n for n in names if (n in expected or n in actual) and expected.get(n) != actual.get(n)]
