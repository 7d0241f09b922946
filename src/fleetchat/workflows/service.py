"""WorkflowService: ``hub.workflows``. Definitions, executions, and the engine's glue.

Any node registers definitions and starts, reads, cancels or redrives executions (each a
compare-and-set on the stored record); the engine that runs them lives on the leading node
(:mod:`fleetchat.workflows.engine`) and hears of an execution started elsewhere by a bus
broadcast, or within its 5 s check at the latest.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec
from jsonschema import Draft202012Validator

from fleetchat.background import Background
from fleetchat.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from fleetchat.types import new_id
from fleetchat.workflows.engine import WorkflowEngine
from fleetchat.workflows.expressions import Expressions, compile_all
from fleetchat.workflows.glue import EngineGlue, execution_channel
from fleetchat.workflows.graph import to_mermaid
from fleetchat.workflows.interpreter import Interpreter
from fleetchat.workflows.model import Definition
from fleetchat.workflows.records import DefinitionRecord, ExecutionEvent, ExecutionRecord
from fleetchat.workflows.validate import load_document, parse_definition

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus, Store
    from fleetchat.chat.channels import ChannelRegistry
    from fleetchat.hub import Hub
    from fleetchat.types import Clock

__all__ = ["WorkflowService", "execution_channel"]

log = logging.getLogger(__name__)

_BROADCAST = "workflows"
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?")


def _semver_key(version: str) -> tuple[int, int, int, int, str]:
    m = _SEMVER.match(version)
    if m is None:
        return (0, 0, 0, 0, version)
    major, minor, patch, pre = m.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


class WorkflowService(EngineGlue):
    """Built and owned by the Hub."""

    def __init__(self, hub: Hub, store: Store, bus: Bus, clock: Clock) -> None:
        self._hub = hub
        self.store = store
        self._bus = bus
        self._clock = clock
        self.tasks = hub.tasks
        self._channels: ChannelRegistry = hub.channels
        self._definitions: dict[tuple[str, str], DefinitionRecord] = {}
        self._parsed: dict[str, tuple[Definition, Expressions]] = {}  # by content hash
        self._work = Background()
        self.retention = hub.settings.workflows.retention
        self.engine = WorkflowEngine(self, clock)
        bus.on_broadcast(_BROADCAST, self._on_broadcast)

    async def open(self, leading: bool) -> None:
        """Load the definitions; run the engine if this node leads (called by the Hub)."""
        await self._reload()
        self.tasks.watchers.append(self._task_changed)
        self.tasks.remote_watchers.append(self._task_changed_elsewhere)
        self.lead(leading)

    async def close(self) -> None:
        await self.engine.stop()
        await self._work.drain(1.0)

    def lead(self, leading: bool) -> None:
        self._spawn(self.engine.start() if leading else self.engine.stop())

    def _spawn(self, coro: Any) -> None:
        self._work.spawn(coro)

    # -- definitions ------------------------------------------------------------------------

    async def register(
        self, document: str | bytes | dict[str, Any], *, fmt: str | None = None
    ) -> DefinitionRecord:
        """Validate and store a definition. The same content again under its (name, version)
        is a no-op; other content under a registered (name, version) is a ConflictError.

        Raises:
            InvalidDefinitionError: every problem found, with its path and step.
            ConflictError: (name, version) exists with other content.
        """
        definition = parse_definition(document, fmt=fmt)  # type: ignore[arg-type]
        raw = document if isinstance(document, dict) else load_document(document, fmt=fmt)  # type: ignore[arg-type]
        record = DefinitionRecord(
            name=definition.name,
            version=definition.version,
            content_hash=definition.content_hash,
            document=raw,
            created_at=self._clock.time(),
        )
        existing = await self._existing(definition.name, definition.version)
        if existing is None and await self.store.save_definition(record):
            existing = record
        existing = existing or await self._existing(definition.name, definition.version)
        assert existing is not None
        if existing.content_hash != record.content_hash:
            raise ConflictError(
                f"workflow {definition.name}@{definition.version} is registered with other "
                "content: give the changed definition a new version",
                workflow=definition.name,
                version=definition.version,
            )
        self._definitions[(existing.name, existing.version)] = existing
        self._parsed[definition.content_hash] = (definition, compile_all(definition))
        return existing

    async def _reload(self) -> None:
        """Read the definitions from the store (another node may have registered some)."""
        for record in await self.store.load_definitions():
            self._definitions[(record.name, record.version)] = record

    async def _existing(self, name: str, version: str) -> DefinitionRecord | None:
        if (name, version) not in self._definitions:
            await self._reload()
        return self._definitions.get((name, version))

    def definitions(self) -> builtins.list[DefinitionRecord]:
        return sorted(self._definitions.values(), key=lambda d: (d.name, _semver_key(d.version)))

    async def resolve(self, name: str, version: str = "latest") -> DefinitionRecord:
        """The definition ``name@version`` (``latest``: the highest version not deprecated)."""
        if version == "latest":
            known = [d for d in self.definitions() if d.name == name and not d.deprecated]
            if not known:
                await self._reload()
                known = [d for d in self.definitions() if d.name == name and not d.deprecated]
            if not known:
                raise NotFoundError(f"no workflow {name!r}", workflow=name)
            return known[-1]
        record = await self._existing(name, version)
        if record is None:
            raise NotFoundError(f"no workflow {name}@{version}", workflow=name, version=version)
        return record

    async def deprecate(self, name: str, version: str, deprecated: bool = True) -> DefinitionRecord:
        """A deprecated version starts no new executions; running ones finish."""
        record = await self.resolve(name, version)
        updated = msgspec.structs.replace(record, deprecated=bool(deprecated))
        await self.store.update_definition(updated)
        self._definitions[(name, record.version)] = updated
        return updated

    def parsed(self, record: DefinitionRecord) -> tuple[Definition, Expressions]:
        found = self._parsed.get(record.content_hash)
        if found is None:
            definition = parse_definition(record.document)
            found = self._parsed[record.content_hash] = (definition, compile_all(definition))
        return found

    async def definition_for(self, execution: ExecutionRecord) -> Definition:
        record = await self.resolve(execution.workflow, execution.workflow_version)
        return self.parsed(record)[0]

    def expressions_for(self, definition: Definition) -> Expressions:
        return self._parsed[definition.content_hash][1]

    async def graph(self, name: str, version: str = "latest") -> str:
        """The definition as a Mermaid flowchart."""
        return to_mermaid(self.parsed(await self.resolve(name, version))[0])

    # -- executions -------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        input: Any = None,
        *,
        version: str = "latest",
        execution_id: str | None = None,
        parent: str | None = None,
    ) -> ExecutionRecord:
        """Start ``name@version`` with ``input``; returns the new execution (running).

        Raises:
            NotFoundError: no such workflow. ConflictError: the version is deprecated.
            InvalidInputError: the input fails the definition's input schema (nothing started).
        """
        record = await self.resolve(name, version)
        if record.deprecated:
            raise ConflictError(
                f"workflow {name}@{record.version} is deprecated: start another version",
                workflow=name,
                version=record.version,
            )
        definition, _ = self.parsed(record)
        if definition.input_schema is not None:
            problems = [
                {"path": "/" + "/".join(str(p) for p in e.absolute_path), "message": e.message}
                for e in Draft202012Validator(definition.input_schema).iter_errors(input)
            ]
            if problems:
                raise InvalidInputError(
                    f"the input fails the input schema of {name}@{record.version}: "
                    + "; ".join(f"{p['path']}: {p['message']}" for p in problems),
                    field="input",
                    problems=problems,
                )
        now = self._clock.time()
        execution = ExecutionRecord(
            id=execution_id or new_id(),
            workflow=record.name,
            workflow_version=record.version,
            content_hash=record.content_hash,
            input=input,
            parent=parent,
            created_at=now,
            updated_at=now,
            deadline=None
            if definition.execution_timeout is None
            else now + definition.execution_timeout,
        )
        if self._hub.tracer is not None:
            self._hub.tracer.execution(execution)
        if not await self.store.save_execution(execution, 0, []):
            existing = await self.store.load_execution(execution.id)
            if existing is not None and execution_id is not None:
                return existing  # a child started again after a crash: the same one
            raise ConflictError(f"execution {execution.id!r} exists", execution=execution.id)
        execution = msgspec.structs.replace(execution, version=1)
        await self._open_channel(execution.id)
        self._tell_engine(execution)
        return execution

    async def get(self, execution_id: str) -> ExecutionRecord:
        record = await self.store.load_execution(execution_id)
        if record is None:
            raise NotFoundError(f"no execution {execution_id!r}", execution=execution_id)
        return record

    async def list(
        self, *, status: str | None = None, name: str | None = None, limit: int = 100
    ) -> builtins.list[ExecutionRecord]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidInputError("limit must be 1..10000", field="limit")
        return await self.store.load_executions(status=status, name=name, limit=limit)

    async def events(self, execution_id: str) -> builtins.list[ExecutionEvent]:
        await self.get(execution_id)
        return await self.store.load_execution_events(execution_id)

    async def cancel(self, execution_id: str, reason: str | None = None) -> ExecutionRecord:
        """Cancel a running execution: its tasks, branches and child executions stop.

        Raises:
            NotFoundError: no such execution. ConflictError: it has finished already.
        """
        record = await self.get(execution_id)
        if record.finished:
            raise ConflictError(
                f"execution {execution_id!r} is {record.status} already",
                execution=execution_id,
                status=record.status,
            )
        return await self._change(execution_id, lambda i: i.cancel(reason or "cancelled"))

    async def redrive(self, execution_id: str) -> ExecutionRecord:
        """Run a failed execution again from the step(s) that failed."""
        record = await self.get(execution_id)
        if record.status != "failed":
            raise ConflictError(
                f"execution {execution_id!r} is {record.status}: only a failed one is redriven",
                execution=execution_id,
            )
        return await self._change(execution_id, lambda i: i.redrive(), finished=True)

    async def wait(self, execution_id: str, timeout: float = 30.0) -> ExecutionRecord:
        """Poll until the execution finishes (or ``timeout`` seconds pass); the record."""
        async with asyncio.timeout(timeout):
            while True:
                record = await self.get(execution_id)
                if record.finished:
                    return record
                await asyncio.sleep(0.05)

    async def _change(
        self, execution_id: str, fn: Any, *, finished: bool = False
    ) -> ExecutionRecord:
        if self.engine.active:
            await self.engine.apply(execution_id, fn, finished=finished)
            return await self.get(execution_id)
        for _ in range(20):  # on a follower: the same, by compare-and-set
            record = await self.get(execution_id)
            definition = await self.definition_for(record)
            interp = Interpreter(
                definition, self.expressions_for(definition), record, self._clock.time()
            )
            fn(interp)
            if not interp.events:
                return record
            if await self.store.save_execution(record, record.version, interp.events):
                saved = msgspec.structs.replace(record, version=record.version + 1)
                self.published(saved, interp.events)
                self._tell_engine(saved)
                return saved
        raise ConflictError(f"execution {execution_id!r} keeps changing", execution=execution_id)

    def _tell_engine(self, record: ExecutionRecord) -> None:
        if self.engine.active:
            self._spawn(self.engine.resume(record))
        else:
            self._bus.broadcast(_BROADCAST, record.id.encode())

    def _on_broadcast(self, data: bytes) -> None:
        if self.engine.active:
            self._spawn(self._resume_id(data.decode()))

    async def _resume_id(self, execution_id: str) -> None:
        record = await self.store.load_execution(execution_id)
        if record is not None:
            self.engine.running.pop(execution_id, None)
            await self.engine.resume(record)
