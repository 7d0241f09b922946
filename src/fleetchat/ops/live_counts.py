"""Counts the metrics read at scrape time, kept live from the services' watchers so a scrape
never scans the store: tasks by state and workflow step events (docs/observability.md).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from fleetchat.tasks.records import ACTIVE_STATES, TERMINAL_STATES, TaskRecord
from fleetchat.workflows.model import Definition, step_index

if TYPE_CHECKING:
    from fleetchat.tasks.service import TaskService
    from fleetchat.types import Clock
    from fleetchat.workflows.engine import WorkflowEngine
    from fleetchat.workflows.records import ExecutionEvent

__all__ = ["FOLLOWER_RESEED", "RESEED_AFTER", "StepCounts", "TaskCounts"]

RESEED_AFTER = 300.0
"""Seconds after which the leader, having heard of other nodes' task changes, reads the
unfinished tasks again (a broadcast may be lost); a hub of one node never needs to."""
FOLLOWER_RESEED = 60.0
"""Seconds after which a node that does not lead reads the unfinished tasks again: the leader
does not broadcast its own changes (offers, timeouts), so a follower's counts age."""
_READ_LIMIT = 200  # more changes from other nodes than this: one full read instead


class TaskCounts:
    """Unfinished tasks by state, and tasks finished and submitted on this node.

    Seeded once from the store (the unfinished tasks only), then kept current by the
    TaskService's watchers: a change saved here costs a dict update; a change saved on another
    node (known by id and version only) is read at the next :meth:`refresh`.
    """

    def __init__(self, tasks: TaskService, clock: Clock) -> None:
        self._tasks = tasks
        self._clock = clock
        self._active: dict[str, tuple[str, int]] = {}  # task id -> (state, version)
        self.active = Counter[str]({s: 0 for s in sorted(ACTIVE_STATES)})
        """Unfinished tasks by state (queued, offered, accepted, running)."""
        self.finished = Counter[str]({s: 0 for s in sorted(TERMINAL_STATES)})
        """Tasks that reached each final state through this node, since it started."""
        self.submitted = 0
        """Tasks submitted through this node since it started."""
        self._remote: dict[str, int] = {}  # changed elsewhere: id -> newest version heard
        self._touched: set[str] | None = None  # while seeding: ids the watchers updated
        self._seeded_at: float | None = None
        self._leading = False  # whether this node led at the last seed
        self._heard_remote = False
        tasks.watchers.append(self._saved)
        tasks.remote_watchers.append(self._changed_elsewhere)

    def close(self) -> None:
        """Stop watching the TaskService."""
        if self._saved in self._tasks.watchers:
            self._tasks.watchers.remove(self._saved)
        if self._changed_elsewhere in self._tasks.remote_watchers:
            self._tasks.remote_watchers.remove(self._changed_elsewhere)

    async def refresh(self, leading: bool) -> None:
        """Make the counts current. The leader hears of every change, so it reads the
        unfinished tasks only the first time, when it starts leading, and every
        ``RESEED_AFTER`` once other nodes changed tasks (a broadcast may be lost); a follower
        reads them every ``FOLLOWER_RESEED``. In between, the changes other nodes announced
        are read one by one."""
        now = self._clock.monotonic()
        age = None if self._seeded_at is None else now - self._seeded_at
        limit = RESEED_AFTER if leading else FOLLOWER_RESEED
        stale = age is None or (age > limit and (self._heard_remote or not leading))
        if stale or leading != self._leading or len(self._remote) > _READ_LIMIT:
            await self._seed(now, leading)
            return
        pending, self._remote = self._remote, {}
        for task_id in pending:
            task = await self._tasks.find(task_id)
            if task is not None:
                self._apply(task)

    async def _seed(self, now: float, leading: bool) -> None:
        self._touched = set()
        self._remote.clear()
        try:
            loaded = await self._tasks.load_active()
        finally:
            touched, self._touched = self._touched, None
        self._active = {k: v for k, v in self._active.items() if k in touched}
        for task in loaded:
            if task.id not in touched:
                self._active[task.id] = (task.state, task.version)
        self.active = Counter[str]({s: 0 for s in sorted(ACTIVE_STATES)})
        self.active.update(state for state, _ in self._active.values())
        self._seeded_at = now
        self._leading = leading
        self._heard_remote = False

    def _saved(self, task: TaskRecord) -> None:
        # A task is saved in a final state once: no transition leaves one.
        if task.terminal:
            self.finished[task.state] += 1
        elif task.version == 1:
            self.submitted += 1
        self._apply(task)

    def _changed_elsewhere(self, task_id: str, version: int) -> None:
        known = self._active.get(task_id)
        if known is None or known[1] < version:
            self._heard_remote = True
            self._remote[task_id] = max(version, self._remote.get(task_id, 0))

    def _apply(self, task: TaskRecord) -> None:
        known = self._active.get(task.id)
        if known is not None and known[1] >= task.version:
            return
        if self._touched is not None:
            self._touched.add(task.id)
        if known is not None:
            self.active[known[0]] -= 1
        if task.terminal:
            self._active.pop(task.id, None)
        else:
            self._active[task.id] = (task.state, task.version)
            self.active[task.state] += 1


class StepCounts:
    """Workflow events counted by the engine's saves on this node: step events by step type
    and outcome (``scheduled``, ``completed``, ``failed``, ``retrying`` ...), and executions by
    outcome (``started``, ``completed``, ``failed``, ``cancelled``, ``error``)."""

    def __init__(self, engine: WorkflowEngine) -> None:
        self._engine = engine
        self.steps = Counter[tuple[str, str]]()
        """(step type, outcome) -> events."""
        self.executions = Counter[str]()
        """Outcome -> events."""
        self._types: dict[tuple[str, str], dict[str, str]] = {}  # definition -> step -> type
        engine.event_watchers.append(self._saved)

    def close(self) -> None:
        """Stop watching the engine."""
        if self._saved in self._engine.event_watchers:
            self._engine.event_watchers.remove(self._saved)

    def _saved(self, definition: Definition, events: list[ExecutionEvent]) -> None:
        for event in events:
            kind, _, outcome = event.type.partition(".")
            if kind == "execution":
                self.executions[outcome] += 1
            elif kind == "step" and event.step is not None:
                self.steps[(self._type(definition, event.step), outcome)] += 1

    def _type(self, definition: Definition, step: str) -> str:
        key = (definition.name, definition.version)
        types = self._types.get(key)
        if types is None:
            index = step_index(definition)
            types = {k: str(type(v).__struct_config__.tag) for k, v in index.items()}
            self._types[key] = types
        return types.get(step, "unknown")
