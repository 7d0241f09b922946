"""In-memory backends: for tests, embedding, and the messages of ephemeral channels."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from fleetchat.backends.ports import CursorRecord
from fleetchat.models import AgentInfo, Channel, Message, TokenRecord
from fleetchat.tasks.records import ACTIVE_STATES, TaskRecord
from fleetchat.workflows.records import DefinitionRecord, ExecutionEvent, ExecutionRecord

if TYPE_CHECKING:
    from fleetchat.leases.state import Resource

__all__ = ["MemoryLog", "MemoryStore", "select_history"]


def _no_commit_hook(messages: list[Message]) -> None:
    return None


def select_history(
    messages: list[Message] | deque[Message],
    *,
    start_seq: int | None,
    end_seq: int | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> list[Message]:
    """Filter ``messages`` (in seq order) by the history query, oldest first."""
    out: list[Message] = []
    for m in messages:
        if start_seq is not None and m.seq < start_seq:
            continue
        if end_seq is not None and m.seq > end_seq:
            break
        if since is not None and m.created_at < since:
            continue
        if until is not None and m.created_at > until:
            break
        out.append(m)
        if len(out) >= limit:
            break
    return out


class _Ring:
    __slots__ = ("cap", "last_seq", "messages")

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.last_seq = 0
        self.messages: deque[Message] = deque()


class MemoryLog:
    """A ChannelLog held in memory. Nothing survives the process.

    ``append`` keeps at most the channel's ``retention_count`` messages, so a busy ephemeral
    channel's memory stays bounded between retention sweeps.
    """

    durable = False

    def __init__(self, default_cap: int | None = None) -> None:
        self.on_commit: Callable[[list[Message]], None] = _no_commit_hook
        self._default_cap = default_cap
        self._channels: dict[str, Channel] = {}
        self._rings: dict[str, _Ring] = {}
        self._caps: dict[str, int | None] = {}
        self._members: dict[tuple[str, str], None] = {}
        self._cursors: dict[tuple[str, str], CursorRecord] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def load_channels(self) -> list[Channel]:
        return list(self._channels.values())

    def load_members(self) -> list[tuple[str, str]]:
        return list(self._members)

    def load_cursors(self) -> list[CursorRecord]:
        return list(self._cursors.values())

    def last_seqs(self) -> dict[str, int]:
        return {name: r.last_seq for name, r in self._rings.items() if r.last_seq}

    def _ring(self, channel: str) -> _Ring:
        ring = self._rings.get(channel)
        if ring is None:
            ring = self._rings[channel] = _Ring(self._caps.get(channel, self._default_cap))
        return ring

    async def save_channel(self, channel: Channel) -> None:
        self._channels[channel.name] = channel
        # The ring itself is made on the first message (an empty deque costs 760 bytes, and
        # most inboxes stay empty).
        cap = channel.retention_count or self._default_cap
        self._caps[channel.name] = cap
        if channel.name in self._rings:
            self._rings[channel.name].cap = cap

    async def delete_channel(self, name: str) -> None:
        self._channels.pop(name, None)
        self._rings.pop(name, None)
        self._caps.pop(name, None)
        for key in [k for k in self._members if k[0] == name]:
            del self._members[key]
            self._cursors.pop((key[1], name), None)

    async def add_member(self, channel: str, member: str, cursor: CursorRecord) -> None:
        self._members[(channel, member)] = None
        self._cursors[(member, channel)] = cursor

    async def remove_member(self, channel: str, member: str) -> None:
        self._members.pop((channel, member), None)
        self._cursors.pop((member, channel), None)

    async def append(self, messages: list[Message], timeout: float = 5.0) -> None:
        self.append_now(messages)

    def append_now(self, messages: list[Message]) -> None:
        """Append and run the commit hook at once (memory needs no wait)."""
        for m in messages:
            ring = self._ring(m.channel)
            ring.messages.append(m)
            ring.last_seq = m.seq
            if ring.cap is not None and len(ring.messages) > ring.cap:
                ring.messages.popleft()
        self.on_commit(messages)

    def save_cursors(self, cursors: list[CursorRecord]) -> None:
        for c in cursors:
            if (c.channel, c.member) in self._members:
                self._cursors[(c.member, c.channel)] = c

    def first_seq(self, channel: str) -> int:
        ring = self._rings.get(channel)
        if ring is None:
            return 1
        return ring.messages[0].seq if ring.messages else ring.last_seq + 1

    def read(self, channel: str, after_seq: int, limit: int) -> list[Message]:
        ring = self._rings.get(channel)
        if ring is None or not ring.messages:
            return []
        msgs = ring.messages
        start = max(after_seq + 1 - msgs[0].seq, 0)
        return [msgs[i] for i in range(start, min(start + limit, len(msgs)))]

    def history(
        self,
        channel: str,
        *,
        start_seq: int | None,
        end_seq: int | None,
        since: float | None,
        until: float | None,
        limit: int,
    ) -> list[Message]:
        ring = self._rings.get(channel)
        if ring is None:
            return []
        msgs = ring.messages
        if start_seq is not None and msgs:
            # Seqs are dense in a ring, so jump straight to the first one asked for.
            skip = max(start_seq - msgs[0].seq, 0)
            msgs = deque(msgs[i] for i in range(skip, len(msgs)))
        return select_history(
            msgs, start_seq=start_seq, end_seq=end_seq, since=since, until=until, limit=limit
        )

    async def trim(self, channel: str, *, keep: int | None, older_than: float | None) -> int:
        ring = self._rings.get(channel)
        if ring is None:
            return 0
        msgs, dropped = ring.messages, 0
        while msgs and (
            (keep is not None and len(msgs) > keep)
            or (older_than is not None and msgs[0].created_at < older_than)
        ):
            msgs.popleft()
            dropped += 1
        return dropped


class MemoryStore:
    """A Store held in memory."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentInfo] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._resources: dict[str, Resource] = {}
        self._tasks: dict[str, TaskRecord] = {}
        self._task_keys: dict[str, str] = {}
        self._definitions: dict[tuple[str, str], DefinitionRecord] = {}
        self._executions: dict[str, ExecutionRecord] = {}
        self._events: dict[str, list[ExecutionEvent]] = {}
        self._probes: dict[str, float] = {}

    async def start(self) -> None:
        return None

    async def probe(self, node: str, now: float) -> None:
        self._probes[node] = now

    async def save_definition(self, record: DefinitionRecord) -> bool:
        key = (record.name, record.version)
        if key in self._definitions:
            return False
        self._definitions[key] = record
        return True

    async def update_definition(self, record: DefinitionRecord) -> None:
        if (record.name, record.version) in self._definitions:
            self._definitions[(record.name, record.version)] = record

    async def load_definitions(self) -> list[DefinitionRecord]:
        return [self._definitions[k] for k in sorted(self._definitions)]

    async def save_execution(
        self, record: ExecutionRecord, expected_version: int, events: Sequence[ExecutionEvent]
    ) -> bool:
        held = self._executions.get(record.id)
        if (held.version if held is not None else 0) != expected_version:
            return False
        # A copy: the engine keeps changing its own record objects.
        self._executions[record.id] = msgspec.structs.replace(
            record.copy(), version=expected_version + 1
        )
        self._events.setdefault(record.id, []).extend(events)
        return True

    async def load_execution(self, execution_id: str) -> ExecutionRecord | None:
        held = self._executions.get(execution_id)
        return None if held is None else held.copy()

    async def load_executions(
        self, *, status: str | None = None, name: str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        out = [
            e.copy()
            for e in self._executions.values()
            if (status is None or e.status == status) and (name is None or e.workflow == name)
        ]
        out.sort(key=lambda e: (e.created_at, e.id))
        return out if limit is None else out[:limit]

    async def load_execution_events(self, execution_id: str) -> list[ExecutionEvent]:
        return list(self._events.get(execution_id, ()))

    async def delete_execution(self, execution_id: str) -> None:
        self._executions.pop(execution_id, None)
        self._events.pop(execution_id, None)

    async def load_task(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    async def find_task(self, idempotency_key: str) -> TaskRecord | None:
        task_id = self._task_keys.get(idempotency_key)
        return None if task_id is None else self._tasks.get(task_id)

    async def load_tasks(
        self, *, active: bool = False, state: str | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        out = [
            t
            for t in self._tasks.values()
            if (not active or t.state in ACTIVE_STATES) and (state is None or t.state == state)
        ]
        out.sort(key=lambda t: (t.created_at, t.id))
        return out if limit is None else out[:limit]

    async def save_task(self, task: TaskRecord, expected_version: int) -> bool:
        held = self._tasks.get(task.id)
        if (held.version if held is not None else 0) != expected_version:
            return False
        key = task.idempotency_key
        if held is None and key is not None and key in self._task_keys:
            return False
        self._tasks[task.id] = msgspec.structs.replace(task, version=expected_version + 1)
        if key is not None:
            self._task_keys[key] = task.id
        return True

    async def close(self) -> None:
        return None

    async def load_resource(self, name: str) -> Resource | None:
        return self._resources.get(name)

    async def load_resources(self) -> list[Resource]:
        return list(self._resources.values())

    async def save_resource(self, resource: Resource, expected_version: int) -> bool:
        # Records are frozen, so holding the caller's (with the new version) is safe.
        held = self._resources.get(resource.name)
        if (held.version if held is not None else 0) != expected_version:
            return False
        self._resources[resource.name] = msgspec.structs.replace(
            resource, version=expected_version + 1
        )
        return True

    async def save_agent(self, agent: AgentInfo) -> None:
        self._agents[agent.id] = agent

    async def delete_agent(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)

    def load_agents(self) -> list[AgentInfo]:
        return list(self._agents.values())

    async def save_token(self, token: TokenRecord) -> None:
        self._tokens[token.sha256] = token

    async def delete_tokens(self, agent_id: str) -> int:
        gone = [h for h, t in self._tokens.items() if t.agent_id == agent_id]
        for h in gone:
            del self._tokens[h]
        return len(gone)

    def load_tokens(self) -> list[TokenRecord]:
        return list(self._tokens.values())
