"""Workflows over REST: ``HubClient.workflows`` (under /v1/workflows and /v1/executions).

    async with HubClient("http://hub:8765", token=...) as hub:
        await hub.workflows.register(Path("factory-order.yaml"))
        run = await hub.workflows.start("factory-order", {"order_id": "o-7", ...})
        done = await hub.workflows.wait(run.id, timeout=600)
        print(done.status, done.output)

``register`` sends a YAML file as it is (the hub parses it); ``graph`` answers Mermaid text.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import msgspec

from fleetchat.client.polling import poll_until
from fleetchat.client.wire import HubUnavailableError
from fleetchat.server import schemas_workflows as s

if TYPE_CHECKING:
    from fleetchat.client.rest import HubClient
    from fleetchat.workflows.records import DefinitionRecord, ExecutionEvent, ExecutionRecord

__all__ = ["WorkflowClient"]


def _workflow(name: str, action: str = "") -> str:
    return f"/v1/workflows/{quote(name, safe='')}" + (f"/{action}" if action else "")


def _execution(execution_id: str, action: str = "") -> str:
    return f"/v1/executions/{quote(execution_id, safe='')}" + (f"/{action}" if action else "")


class WorkflowClient:
    """Workflow definitions and executions on a hub."""

    def __init__(self, rest: HubClient) -> None:
        self._rest = rest

    # -- definitions ------------------------------------------------------------------------

    async def register(self, document: str | bytes | dict[str, Any] | Path) -> DefinitionRecord:
        """Register a definition: a dict, YAML or JSON text, or the Path of a ``.yaml`` /
        ``.yml`` / ``.json`` file. The same content again returns the registered record.

        Raises:
            InvalidDefinitionError: ``details["problems"]`` lists every problem found.
            ConflictError: the (name, version) is registered with other content.
        """
        if isinstance(document, Path):
            text: str | bytes = await asyncio.to_thread(document.read_bytes)
            yaml = document.suffix.lower() != ".json"
        elif isinstance(document, dict):
            text, yaml = json.dumps(document), False
        else:
            text, yaml = document, True  # YAML is a superset of JSON
        data = text.encode() if isinstance(text, str) else text
        raw = await self._send(
            "POST", "/v1/workflows", data, "application/yaml" if yaml else "application/json"
        )
        return msgspec.json.decode(raw, type=s.DefinitionRecord)

    async def definitions(self) -> list[DefinitionRecord]:
        """Every registered definition, by name and version."""
        out = await self._rest._call("GET", "/v1/workflows", s.DefinitionList)
        return out.definitions

    async def get(self, name: str, version: str = "latest") -> DefinitionRecord:
        """The definition ``name@version`` (``latest``: the highest not deprecated)."""
        params = {"version": version}
        return await self._rest._call("GET", _workflow(name), s.DefinitionRecord, params=params)

    async def graph(self, name: str, version: str = "latest") -> str:
        """The definition as a Mermaid flowchart."""
        path = _workflow(name, "graph") + f"?version={quote(version, safe='')}"
        return (await self._send("GET", path)).decode()

    async def deprecate(self, name: str, version: str, deprecated: bool = True) -> DefinitionRecord:
        """Block new starts of ``name@version`` (``deprecated=False``: allow them again)."""
        body = s.DeprecateBody(version=version, deprecated=deprecated)
        path = _workflow(name, "deprecate")
        return await self._rest._call("POST", path, s.DefinitionRecord, body=body)

    # -- executions -------------------------------------------------------------------------

    async def start(
        self, name: str, input: Any = None, *, version: str = "latest"
    ) -> ExecutionRecord:
        """Start ``name@version`` with ``input``; the new execution (running).

        Raises:
            InvalidInputError: the input fails the input schema (``details["problems"]``);
                nothing was started.
            NotFoundError: no such workflow. ConflictError: the version is deprecated.
        """
        body = s.StartBody(input=input, version=version)
        path = _workflow(name, "executions")
        return await self._rest._call("POST", path, s.ExecutionRecord, body=body)

    async def execution(self, execution_id: str) -> ExecutionRecord:
        """An execution as stored now, with its step runs. NotFoundError if there is none."""
        return await self._rest._call("GET", _execution(execution_id), s.ExecutionRecord)

    async def executions(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Executions, oldest first; only those in ``status`` / of ``workflow`` when given."""
        params = {"status": status, "workflow": workflow, "limit": limit}
        out = await self._rest._call("GET", "/v1/executions", s.ExecutionList, params=params)
        return out.executions

    async def events(self, execution_id: str) -> list[ExecutionEvent]:
        """The execution's event log, oldest first."""
        path = _execution(execution_id, "events")
        return (await self._rest._call("GET", path, s.EventList)).events

    async def cancel(self, execution_id: str, reason: str | None = None) -> ExecutionRecord:
        """Cancel a running execution: its tasks, branches and child executions stop."""
        body = s.CancelBody(reason=reason)
        path = _execution(execution_id, "cancel")
        return await self._rest._call("POST", path, s.ExecutionRecord, body=body)

    async def redrive(self, execution_id: str) -> ExecutionRecord:
        """Run a failed execution again from its failed step(s). ConflictError unless failed."""
        path = _execution(execution_id, "redrive")
        return await self._rest._call("POST", path, s.ExecutionRecord)

    async def wait(self, execution_id: str, timeout: float | None = None) -> ExecutionRecord:
        """Poll until the execution has finished (any status but running) and return it;
        ``timeout`` None waits as long as it takes.

        Raises:
            RequestTimeoutError: still running after ``timeout`` seconds (also a TimeoutError).
        """
        return await poll_until(
            lambda: self.execution(execution_id),
            lambda record: record.finished,
            timeout,
            f"execution {execution_id!r}",
            execution=execution_id,
        )

    async def _send(
        self, method: str, path: str, data: bytes | None = None, content_type: str | None = None
    ) -> bytes:
        """A call whose body or answer is not JSON (YAML in, Mermaid out): the raw answer."""
        from fleetchat.client.rest import _error

        rest = self._rest
        await rest.start()
        assert rest._session is not None
        headers = {"Content-Type": content_type} if content_type else None
        try:
            async with rest._session.request(
                method, f"{rest.base}{path}", data=data, headers=headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise HubUnavailableError(
                f"cannot reach the hub at {rest.base}: {exc or type(exc).__name__}", url=rest.base
            ) from exc
        if status >= 400:
            raise _error(status, raw)
        return raw
