"""The agent registry: capabilities, capacity, load, heartbeats, status, matching."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.errors import AgentNotFoundError, InvalidInputError
from fleetchat.models import AgentEvent, AgentInfo, AgentStatus
from fleetchat.registry.matching import check_capabilities, check_required, rank_agents
from fleetchat.types import Clock, check_agent_id

if TYPE_CHECKING:
    from fleetchat.backends.ports import Store
    from fleetchat.config import RegistrySettings

__all__ = ["AgentMatch", "AgentRegistry", "EventStream"]

log = logging.getLogger(__name__)


class AgentMatch(msgspec.Struct, kw_only=True):
    """One result of find_best_agents."""

    agent: AgentInfo
    score: float
    """Weighted match score in 0..1."""


class EventStream:
    """Registry events as an async iterator; bounded (oldest dropped when full)."""

    def __init__(self, owner: AgentRegistry, maxlen: int = 10_000) -> None:
        self._owner = owner
        self._items: deque[AgentEvent] = deque(maxlen=maxlen)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _put(self, event: AgentEvent) -> None:
        self._items.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> AgentEvent:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()

    async def next(self, timeout: float) -> AgentEvent:
        """The next event; TimeoutError if none within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def close(self) -> None:
        self._closed = True
        if self in self._owner._streams:
            self._owner._streams.remove(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise InvalidInputError("capacity must be a positive integer", field="capacity")
    return capacity


def _check_unit(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInputError(f"{field} must be a number in 0..1", field=field)
    return float(value)


def _check_str_map(value: object, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInputError(f"{field} must map strings to strings", field=field)
    return dict(value)


def _check_resources(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidInputError("resources must be a mapping with string keys", field="resources")
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"resources are not JSON-encodable: {exc}", field="resources"
        ) from None
    return dict(value)


class AgentRegistry:
    """Registered agents. Capabilities and capacity change live; heartbeats keep agents online.

    An agent that misses ``missed_heartbeats`` heartbeats goes offline (an ``offline`` event);
    its next heartbeat brings it back (``online``).
    """

    def __init__(self, store: Store, clock: Clock, settings: RegistrySettings) -> None:
        self._store = store
        self._clock = clock
        self.settings = settings
        self._agents: dict[str, AgentInfo] = {}
        self._streams: list[EventStream] = []
        self._task: asyncio.Task[None] | None = None
        # Set by RegistrySync on a hub of several nodes: told every change made here, and
        # the heartbeats taken here since it last looked.
        self.on_change: Callable[[str, AgentInfo], None] | None = None
        self.beats: dict[str, float] | None = None

    async def start(self) -> None:
        now = self._clock.time()
        for agent in self._store.load_agents():
            # After a restart every agent gets a full heartbeat window to come back.
            agent.last_heartbeat = now
            self._agents[agent.id] = agent
        self._task = asyncio.get_running_loop().create_task(self._monitor(), name="heartbeats")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for stream in list(self._streams):
            stream.close()

    # -- records --------------------------------------------------------------------------

    async def register(
        self,
        agent_id: str,
        *,
        capabilities: Mapping[str, float] | None = None,
        capacity: int = 1,
        performance: float | None = None,
        labels: Mapping[str, str] | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> AgentInfo:
        """Register ``agent_id`` (or replace its record: registering again is an update).

        ``performance`` defaults to the agent's earned score (1.0 for a new agent).
        """
        check_agent_id(agent_id)
        now = self._clock.time()
        old = self._agents.get(agent_id)
        agent = AgentInfo(
            id=agent_id,
            capabilities=check_capabilities(capabilities or {}),
            capacity=_check_capacity(capacity),
            performance=(
                (old.performance if old else 1.0)
                if performance is None
                else _check_unit(performance, "performance")
            ),
            labels=_check_str_map(labels or {}, "labels"),
            resources=_check_resources(resources or {}),
            active_tasks=old.active_tasks if old else 0,
            registered_at=old.registered_at if old else now,
            last_heartbeat=now,
        )
        await self._store.save_agent(agent)
        self._agents[agent_id] = agent
        self._emit("updated" if old else "registered", agent)
        return agent

    async def update(
        self,
        agent_id: str,
        *,
        capabilities: Mapping[str, float] | None = None,
        capacity: int | None = None,
        performance: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> AgentInfo:
        """Change an agent's capabilities, capacity, performance or labels, live."""
        agent = self.get(agent_id)
        changes: dict[str, Any] = {}
        if capabilities is not None:
            changes["capabilities"] = check_capabilities(capabilities)
        if capacity is not None:
            changes["capacity"] = _check_capacity(capacity)
        if performance is not None:
            changes["performance"] = _check_unit(performance, "performance")
        if labels is not None:
            changes["labels"] = _check_str_map(labels, "labels")
        updated = msgspec.structs.replace(agent, **changes)
        await self._store.save_agent(updated)
        self._agents[agent_id] = updated
        self._emit("updated", updated)
        return updated

    async def deregister(self, agent_id: str) -> None:
        agent = self.get(agent_id)
        await self._store.delete_agent(agent_id)
        del self._agents[agent_id]
        self._emit("deregistered", agent)

    async def set_draining(self, agent_id: str, draining: bool = True) -> AgentInfo:
        """A draining agent finishes what it has and gets nothing new."""
        agent = self.get(agent_id)
        agent.draining = bool(draining)
        await self._store.save_agent(agent)
        self._emit("updated", agent)
        return agent

    def set_load(self, agent_id: str, active_tasks: int) -> AgentInfo:
        """Record how many tasks the agent runs now (the task scheduler keeps this)."""
        agent = self.get(agent_id)
        if isinstance(active_tasks, bool) or not isinstance(active_tasks, int) or active_tasks < 0:
            raise InvalidInputError(
                "active_tasks must be a non-negative integer", field="active_tasks"
            )
        agent.active_tasks = active_tasks
        return agent

    def heartbeat(self, agent_id: str, *, resources: Mapping[str, Any] | None = None) -> AgentInfo:
        """The agent is alive; ``resources`` (battery, position, ...) are merged in."""
        agent = self.get(agent_id)
        if resources is not None:
            agent.resources = {**agent.resources, **_check_resources(resources)}
        agent.last_heartbeat = self._clock.time()
        if self.beats is not None:
            self.beats[agent_id] = agent.last_heartbeat
        if not agent.online:
            agent.online = True
            self._emit("online", agent)
        return agent

    def mark_offline(self, agent_id: str) -> None:
        """The agent's last connection dropped: offline now, not after missed heartbeats."""
        agent = self._agents.get(agent_id)
        if agent is not None and agent.online:
            agent.online = False
            self._emit("offline", agent)

    def get(self, agent_id: str) -> AgentInfo:
        check_agent_id(agent_id)
        agent = self._agents.get(agent_id)
        if agent is None:
            raise AgentNotFoundError(f"no agent {agent_id!r}", agent_id=agent_id)
        return agent

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def list(self, *, status: AgentStatus | None = None) -> builtins.list[AgentInfo]:
        agents = sorted(self._agents.values(), key=lambda a: a.id)
        return agents if status is None else [a for a in agents if self.status(a) == status]

    def status(self, agent: AgentInfo | str) -> AgentStatus:
        """offline, draining, busy (load at or over the threshold) or available."""
        if isinstance(agent, str):
            agent = self.get(agent)
        if not agent.online:
            return "offline"
        if agent.draining:
            return "draining"
        if agent.load() >= self.settings.load_threshold:
            return "busy"
        return "available"

    def find_best_agents(
        self,
        required: Mapping[str, float],
        *,
        min_confidence: float | None = None,
        limit: int | None = None,
    ) -> builtins.list[AgentMatch]:
        """Agents able to take a job needing ``required`` ({capability: weight}), best first.

        Score = sum(weight x proficiency over the required capabilities the agent has) /
        sum(weights); only agents online, not draining, with load below the threshold and a
        score of at least ``min_confidence`` (default 0.8). Ties: performance, then lower load.
        """
        req = check_required(required)
        floor = (
            self.settings.min_confidence
            if min_confidence is None
            else _check_unit(min_confidence, "min_confidence")
        )
        ranked = rank_agents(
            self._agents.values(),
            req,
            min_confidence=floor,
            load_threshold=self.settings.load_threshold,
        )
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidInputError("limit must be a positive integer", field="limit")
            ranked = ranked[:limit]
        return [AgentMatch(agent=a, score=s) for a, s in ranked]

    # -- events and liveness --------------------------------------------------------------

    def events(self) -> EventStream:
        """A new stream of every registry event from now on."""
        stream = EventStream(self)
        self._streams.append(stream)
        return stream

    def _emit(self, kind: str, agent: AgentInfo, *, local: bool = True) -> None:
        if local and self.on_change is not None:
            self.on_change(kind, agent)
        if not self._streams:
            return
        event = AgentEvent(kind=kind, agent_id=agent.id, at=self._clock.time(), agent=agent)  # type: ignore[arg-type]
        for stream in self._streams:
            stream._put(event)

    # -- changes made on other nodes (RegistrySync) ----------------------------------------

    def apply_remote(self, kind: str, agent: AgentInfo) -> None:
        """A change another node made (and stored): take it, tell the local event streams."""
        if kind == "deregistered":
            if self._agents.pop(agent.id, None) is not None:
                self._emit(kind, agent, local=False)
            return
        self._agents[agent.id] = agent
        self._emit(kind, agent, local=False)

    def apply_beats(self, beats: Mapping[str, float]) -> None:
        """Heartbeats other nodes took: agents seen there are alive here too."""
        for agent_id, at in beats.items():
            agent = self._agents.get(agent_id)
            if agent is None or at <= agent.last_heartbeat:
                continue
            agent.last_heartbeat = at
            if not agent.online:
                agent.online = True
                self._emit("online", agent, local=False)

    def check_liveness(self) -> builtins.list[str]:
        """Mark agents that missed their heartbeats offline; returns their ids."""
        s = self.settings
        deadline = self._clock.time() - s.heartbeat_interval * s.missed_heartbeats
        gone = []
        for agent in self._agents.values():
            if agent.online and agent.last_heartbeat < deadline:
                agent.online = False
                gone.append(agent.id)
                log.info("agent offline", extra={"agent_id": agent.id})
                self._emit("offline", agent)
        return gone

    def _next_check(self) -> float:
        """Seconds until the oldest heartbeat of an online agent runs out (at most half an
        interval): an agent is offline as soon as its last heartbeat is too old, not at the
        next tick after that."""
        s = self.settings
        tick = s.heartbeat_interval / 2
        beats = [a.last_heartbeat for a in self._agents.values() if a.online]
        if not beats:
            return tick
        due = min(beats) + s.heartbeat_interval * s.missed_heartbeats - self._clock.time()
        return min(max(due, 0.001), tick)

    async def _monitor(self) -> None:
        while True:
            await self._clock.sleep(self._next_check())
            try:
                self.check_liveness()
            except Exception:  # pragma: no cover - defensive: the loop must survive
                log.exception("heartbeat check failed")
