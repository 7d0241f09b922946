"""Copying a hub's data from one backend to another: what ``fleetchat migrate`` runs.

The usual move is from an embedded hub (a SQLite file) to the distributed mode (NATS JetStream
for the bus, PostgreSQL for the store), but any pair of backends works, in either direction.
:func:`migrate` does the work on two started hubs and is usable from Python (it is also
importable from :mod:`fleetchat.cli.migrate`, where the command opens the hubs from URLs and
prints a summary).

What is copied, in this order:

1. channel definitions, ``$dlq`` and the inboxes ``@agent`` included (the target assigns new
   seqs, so a copied definition starts at ``last_seq`` 0);
2. the stored history of every durable channel, oldest first, page by page, through the
   target's bus with each message's id, sender, kind, body, priority, created_at, expires_at,
   correlation_id and headers (seqs are the target's); a message whose id the target already
   holds is skipped, never stored twice;
3. memberships, after the history, so members do not receive the copied history as new
   deliveries;
4. agent records and token records (tokens are stored hashed and copied as such);
5. task records (every state, with their attempts and results) and lease resources (holder,
   fencing token, waiters), each at version 1 on the target;
6. workflow definitions (every version, deprecated ones too) and executions (every status, at
   version 1 on the target) with their event logs.

:func:`migrate` copies between two started hubs; :func:`copy_state` does the same between any
two :class:`Side` s (a bus and a store), which is how backups copy a hub into a snapshot file
and back (:mod:`fleetchat.ops.backup`) without starting a hub's services on either end.

Not copied: deliveries in flight and unacknowledged state (member cursors, retry counts,
per-member queues). Drain the source first. See docs/migrate.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from fleetchat.errors import (
    ChannelExistsError,
    ConflictError,
    InvalidInputError,
)
from fleetchat.models import Channel, Message

if TYPE_CHECKING:
    from fleetchat.backends.ports import Store
    from fleetchat.hub import Hub

__all__ = [
    "PAGE_SIZE",
    "TARGET_NOT_EMPTY",
    "ChannelCopy",
    "ChannelSide",
    "MigrationReport",
    "Progress",
    "Side",
    "copy_state",
    "migrate",
    "refresh_store",
]

PAGE_SIZE = 1000
"""Messages read and written per round trip (the source's ``history_limit``, 1,000 by default,
caps it). Large pages matter on a NATS source, where each read costs the rest of the channel."""
TARGET_NOT_EMPTY = "target_not_empty"
"""``details["reason"]`` of the ConflictError raised for a target that already has channels."""

_encode = msgspec.json.Encoder().encode
_decode_channel = msgspec.json.Decoder(Channel).decode


class ChannelCopy(msgspec.Struct, kw_only=True):
    """What the migration did for one channel."""

    name: str
    type: str
    ephemeral: bool = False
    created: bool = False
    """False when the target had the channel already (``$dlq``, or with ``merge``)."""
    messages: int = 0
    """Messages copied."""
    skipped: int = 0
    """Messages the target already held (same id): not copied again."""
    members: int = 0
    """Memberships added."""
    members_existing: int = 0
    """Memberships the target had already."""


class MigrationReport(msgspec.Struct, kw_only=True):
    """The outcome of :func:`migrate`."""

    channels: list[ChannelCopy] = []
    agents: int = 0
    agents_skipped: int = 0
    """Agents the target had already (its record is kept)."""
    tokens: int = 0
    tokens_skipped: int = 0
    """Tokens the target had already."""
    tasks: int = 0
    tasks_skipped: int = 0
    """Tasks the target had already (same id or idempotency key)."""
    leases: int = 0
    leases_skipped: int = 0
    """Lease resources the target had already."""
    definitions: int = 0
    definitions_skipped: int = 0
    """Workflow definitions (name and version) the target had already."""
    executions: int = 0
    executions_skipped: int = 0
    """Workflow executions the target had already (same id)."""
    events: int = 0
    """Events of the copied executions."""
    seconds: float = 0.0

    @property
    def messages(self) -> int:
        return sum(c.messages for c in self.channels)

    @property
    def messages_skipped(self) -> int:
        return sum(c.skipped for c in self.channels)

    @property
    def memberships(self) -> int:
        return sum(c.members for c in self.channels)

    def to_dict(self) -> dict[str, Any]:
        """Totals, then one entry per channel: what ``fleetchat migrate --json`` prints."""
        return {
            "channels": len(self.channels),
            "channels_created": sum(c.created for c in self.channels),
            "messages": self.messages,
            "messages_skipped": self.messages_skipped,
            "memberships": self.memberships,
            "memberships_existing": sum(c.members_existing for c in self.channels),
            "agents": self.agents,
            "agents_skipped": self.agents_skipped,
            "tokens": self.tokens,
            "tokens_skipped": self.tokens_skipped,
            "tasks": self.tasks,
            "tasks_skipped": self.tasks_skipped,
            "leases": self.leases,
            "leases_skipped": self.leases_skipped,
            "definitions": self.definitions,
            "definitions_skipped": self.definitions_skipped,
            "executions": self.executions,
            "executions_skipped": self.executions_skipped,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "per_channel": msgspec.to_builtins(self.channels),
        }


Progress = Callable[[str, int], None]
"""Called with what is being copied (a channel name, ``memberships``, ``agents and tokens``,
``workflows``) and the number of messages copied so far in all."""


class ChannelSide(Protocol):
    """What a copy reads and writes of channels: a :class:`~fleetchat.backends.ports.Bus`
    has it all, and so does a snapshot file (:class:`fleetchat.ops.snapshot.SnapshotFile`)."""

    def channels(self) -> list[Channel]: ...

    def channel(self, name: str) -> Channel | None: ...

    def members(self, channel: str) -> list[str]: ...

    async def history(
        self, channel: str, *, start_seq: int | None = None, limit: int = 1000
    ) -> list[Message]: ...

    async def create_channel(self, channel: Channel) -> Channel: ...

    async def publish(self, messages: list[Message], timeout: float) -> list[Message]: ...

    async def add_member(self, channel: str, member: str) -> bool: ...


@dataclass(frozen=True)
class Side:
    """One end of a copy: channels (with history and members) and a store."""

    bus: ChannelSide
    store: Store
    publish_timeout: float = 5.0
    """Seconds a write of copied messages may wait for the target."""

    @classmethod
    def of(cls, hub: Hub) -> Side:
        """A started hub's bus and store."""
        return cls(hub.bus, hub.store, hub.settings.chat.publish_timeout)


async def migrate(
    source: Hub,
    target: Hub,
    *,
    merge: bool = False,
    page_size: int = PAGE_SIZE,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy channels, history, memberships, agents, tokens, tasks, leases and workflows from
    ``source`` to ``target``.

    Both hubs must be started. The source is only read (beyond what starting a hub does, such
    as a SQLite hub's retention sweep). Drain and stop the source's agents first: deliveries in
    flight and unacknowledged state are not copied.

    Args:
        merge: add to a target that already has channels (other than ``$dlq``). A channel the
            target has keeps its definition; messages whose id it holds are skipped; agents and
            tokens it has keep their record. Also the way to resume a migration that stopped.
        page_size: messages per history read and per publish to the target (capped by the
            source's ``history_limit``).
        progress: told what is being copied, with the running count of messages.

    Raises:
        ConflictError: the target has channels and ``merge`` is off (``details["reason"]`` is
            ``"target_not_empty"``); nothing was written.
        InvalidInputError: ``source`` is ``target``, or ``page_size`` is not positive.
        BackendError: a backend failed; what was copied so far stays (resume with ``merge``).
    """
    if source is target:
        raise InvalidInputError("the source and the target are the same hub")
    _check_page_size(page_size)
    page_size = min(page_size, source.settings.chat.history_limit)
    return await copy_state(
        Side.of(source), Side.of(target), merge=merge, page_size=page_size, progress=progress
    )


def _check_page_size(page_size: object) -> None:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise InvalidInputError("page_size must be a positive integer", field="page_size")


async def copy_state(
    source: Side,
    target: Side,
    *,
    merge: bool = False,
    page_size: int = PAGE_SIZE,
    progress: Progress | None = None,
) -> MigrationReport:
    """What :func:`migrate` does, between two sides; the same arguments and errors.

    The copy yields to the event loop between pages, so a hub serving meanwhile keeps serving.
    """
    _check_page_size(page_size)
    started = time.monotonic()
    present = sorted(c.name for c in target.bus.channels() if not c.name.startswith("$"))
    if present and not merge:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise ConflictError(
            f"the target already has {len(present)} channel(s) ({shown}); "
            "migrate into an empty hub, or give --merge to add to it",
            reason=TARGET_NOT_EMPTY,
            channels=len(present),
        )
    report = MigrationReport()
    tell = progress or (lambda what, copied: None)
    specs = sorted(source.bus.channels(), key=lambda c: c.name)
    for spec in specs:
        report.channels.append(await _copy_definition(spec, target.bus))
    copied = 0
    for spec, entry in zip(specs, report.channels, strict=True):
        if spec.ephemeral:
            continue  # never stored: nothing to copy
        tell(spec.name, copied)
        copied = await _copy_history(source, target, entry, page_size, copied, tell)
    # A membership starts after the newest stored message: the copied history is not
    # delivered to the members again.
    tell("memberships", copied)
    for entry in report.channels:
        for member in sorted(source.bus.members(entry.name)):
            if await target.bus.add_member(entry.name, member):
                entry.members += 1
            else:
                entry.members_existing += 1
    tell("agents and tokens", copied)
    await _copy_records(source.store, target.store, report)
    tell("workflows", copied)
    await _copy_workflows(source.store, target.store, report)
    report.seconds = time.monotonic() - started
    return report


async def _copy_definition(spec: Channel, bus: ChannelSide) -> ChannelCopy:
    entry = ChannelCopy(name=spec.name, type=spec.type, ephemeral=spec.ephemeral)
    if bus.channel(spec.name) is not None:
        return entry
    copy = _decode_channel(_encode(spec))  # a copy of its own: buses keep and update specs
    copy.last_seq = 0  # the target numbers the copied history itself
    with contextlib.suppress(ChannelExistsError):  # created meanwhile by someone else
        await bus.create_channel(copy)
        entry.created = True
    return entry


async def _ids(side: Side, channel: str, page_size: int) -> set[str]:
    """The ids of every message ``side`` holds in ``channel``."""
    ids: set[str] = set()
    async for page in _pages(side, channel, page_size):
        ids.update(m.id for m in page)
    return ids


async def _pages(side: Side, channel: str, page_size: int) -> AsyncIterator[list[Message]]:
    """The history of ``channel``, oldest first, a page at a time (seqs may have gaps)."""
    start = 1
    while True:
        page = await side.bus.history(channel, start_seq=start, limit=page_size)
        if not page:
            return
        yield page
        start = page[-1].seq + 1
        await asyncio.sleep(0)  # a page read from SQLite does not yield: let the hub run


async def _copy_history(
    source: Side, target: Side, entry: ChannelCopy, page_size: int, copied: int, tell: Progress
) -> int:
    # A channel the target had (always $dlq, others with merge) may hold some of these
    # messages already: by id. NATS would drop a repeat only within its 2-minute window.
    known = set() if entry.created else await _ids(target, entry.name, page_size)
    timeout = target.publish_timeout
    async for page in _pages(source, entry.name, page_size):
        fresh = [_clone(m) for m in page if m.id not in known]
        entry.skipped += len(page) - len(fresh)
        if fresh:
            await target.bus.publish(fresh, timeout)
            entry.messages += len(fresh)
            copied += len(fresh)
        tell(entry.name, copied)
    return copied


def _clone(m: Message) -> Message:
    """``m`` as a new publish: every field kept but the seq, which the target assigns."""
    return Message(
        id=m.id,
        channel=m.channel,
        sender=m.sender,
        kind=m.kind,
        body=m.body,
        priority=m.priority,
        created_at=m.created_at,
        expires_at=m.expires_at,
        correlation_id=m.correlation_id,
        headers=dict(m.headers),
    )


async def refresh_store(store: Store) -> None:
    """Reload a store that caches its records (PostgreSQL): the hub's registry works on the
    cached objects, so they may hold live state (heartbeats) rather than what is stored."""
    refresh = getattr(store, "refresh", None)
    if refresh is not None:
        await refresh()


async def _copy_records(source: Store, target: Store, report: MigrationReport) -> None:
    await refresh_store(source)
    await refresh_store(target)
    have = {a.id for a in target.load_agents()}
    for agent in sorted(source.load_agents(), key=lambda a: a.id):
        if agent.id in have:
            report.agents_skipped += 1
        else:
            await target.save_agent(agent)
            report.agents += 1
    hashes = {t.sha256 for t in target.load_tokens()}
    for token in sorted(source.load_tokens(), key=lambda t: t.sha256):
        if token.sha256 in hashes:
            report.tokens_skipped += 1
        else:
            await target.save_token(token)
            report.tokens += 1
    for task in await source.load_tasks():
        if await target.save_task(msgspec.structs.replace(task, version=0), 0):
            report.tasks += 1
        else:
            report.tasks_skipped += 1
    for resource in await source.load_resources():
        if await target.save_resource(msgspec.structs.replace(resource, version=0), 0):
            report.leases += 1
        else:
            report.leases_skipped += 1


async def _copy_workflows(source: Store, target: Store, report: MigrationReport) -> None:
    for definition in await source.load_definitions():
        if await target.save_definition(definition):
            report.definitions += 1
        else:
            report.definitions_skipped += 1
    for execution in await source.load_executions():
        events = await source.load_execution_events(execution.id)
        if await target.save_execution(msgspec.structs.replace(execution, version=0), 0, events):
            report.executions += 1
            report.events += len(events)
        else:
            report.executions_skipped += 1
