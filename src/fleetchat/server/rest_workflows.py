"""The REST routes of workflows: the definition schema, definitions (register, list, get, graph,
deprecate) and executions (start, list, get, events, cancel, redrive).

A definition is posted as JSON, or as YAML text with ``Content-Type: application/yaml``; it is
answered 201 when new, 200 when the same content was registered already. Writes need a token
when auth is on (any agent's, as for tasks).
"""

from __future__ import annotations

from typing import Any, Literal, NoReturn, get_args

import msgspec
from aiohttp import web

from fleetchat.errors import (
    FleetchatError,
    InvalidInputError,
    MessageTooLargeError,
    NotFoundError,
)
from fleetchat.server import schemas_workflows as s
from fleetchat.server.rest_route import Ctx, Param, Route
from fleetchat.server.schemas import ErrorBody, ErrorInfo
from fleetchat.workflows.records import ExecutionStatus

__all__ = ["WORKFLOW_ROUTES"]

_STATUSES = get_args(ExecutionStatus)
_WF = "/v1/workflows/{name}"
_EX = "/v1/executions/{execution_id}"
_VERSION = Param("version", "string", "a version, or latest (default): the highest not deprecated")
_json = msgspec.json.Encoder()


def _answer(status: int, text: str, content_type: str) -> NoReturn:
    """Answer with another status or content type than the route's JSON at its one status.

    The route table's handler encodes what a handler returns as JSON under the route's status;
    aiohttp sends a raised HTTPException as the response, which lets these few answers differ.
    """
    cls = {200: web.HTTPOk, 400: web.HTTPBadRequest}[status]
    raise cls(text=text, content_type=content_type)


async def workflow_schema(ctx: Ctx) -> dict[str, Any]:
    from fleetchat.workflows.schema import WORKFLOW_SCHEMA

    return WORKFLOW_SCHEMA


async def _document(ctx: Ctx) -> dict[str, Any]:
    """The posted definition, parsed as YAML or JSON by its content type."""
    from fleetchat.workflows.validate import load_document

    limit = ctx.hub.settings.server.max_frame_bytes
    try:
        raw = await ctx.request.read()
    except web.HTTPRequestEntityTooLarge:
        raw = None
    if raw is None or len(raw) > limit:
        raise MessageTooLargeError(f"request body over {limit} bytes", limit=limit)
    fmt: Literal["yaml", "json"] = "yaml" if ctx.request.content_type in s.YAML_TYPES else "json"
    return load_document(raw, fmt=fmt)


async def register_workflow(ctx: Ctx) -> s.DefinitionRecord:
    try:
        document = await _document(ctx)
        name, version = document.get("name"), document.get("version")
        known = False
        if isinstance(name, str) and isinstance(version, str) and version != "latest":
            try:
                await ctx.hub.workflows.resolve(name, version)
                known = True
            except NotFoundError:
                pass
        record = await ctx.hub.workflows.register(document)
    except RecursionError:
        raise InvalidInputError("bad request body: nested too deeply") from None
    if known:
        _answer(200, _json.encode(record).decode(), "application/json")
    return record


async def list_workflows(ctx: Ctx) -> s.DefinitionList:
    return s.DefinitionList(definitions=ctx.hub.workflows.definitions())


def _version(ctx: Ctx) -> str:
    return ctx.request.query.get("version") or "latest"


async def get_workflow(ctx: Ctx) -> s.DefinitionRecord:
    return await ctx.hub.workflows.resolve(ctx.path("name"), _version(ctx))


async def workflow_graph(ctx: Ctx) -> None:
    graph = await ctx.hub.workflows.graph(ctx.path("name"), _version(ctx))
    _answer(200, graph, "text/plain")


async def deprecate_workflow(ctx: Ctx) -> s.DefinitionRecord:
    b: s.DeprecateBody = ctx.body
    return await ctx.hub.workflows.deprecate(ctx.path("name"), b.version, b.deprecated)


async def start_execution(ctx: Ctx) -> s.ExecutionRecord:
    b: s.StartBody = ctx.body
    try:
        return await ctx.hub.workflows.start(ctx.path("name"), b.input, version=b.version)
    except InvalidInputError as exc:
        if not isinstance(exc.details.get("problems"), list):
            raise
        # wire_details would turn the list of problems into its str: keep it a list
        _answer(400, _json.encode(_error_body(exc)).decode(), "application/json")


def _error_body(exc: FleetchatError) -> ErrorBody:
    details = {**exc.wire_details(), "problems": exc.details["problems"]}
    return ErrorBody(error=ErrorInfo(code=exc.code, message=exc.message, details=details))


async def list_executions(ctx: Ctx) -> s.ExecutionList:
    status = ctx.request.query.get("status") or None
    if status is not None and status not in _STATUSES:
        raise InvalidInputError(f"status must be one of {', '.join(_STATUSES)}", field="status")
    limit = ctx.query_int("limit")
    executions = await ctx.hub.workflows.list(
        status=status,
        name=ctx.request.query.get("workflow") or None,
        limit=100 if limit is None else limit,
    )
    return s.ExecutionList(executions=executions)


async def get_execution(ctx: Ctx) -> s.ExecutionRecord:
    return await ctx.hub.workflows.get(ctx.path("execution_id"))


async def execution_events(ctx: Ctx) -> s.EventList:
    return s.EventList(events=await ctx.hub.workflows.events(ctx.path("execution_id")))


async def cancel_execution(ctx: Ctx) -> s.ExecutionRecord:
    b: s.CancelBody = ctx.body
    return await ctx.hub.workflows.cancel(ctx.path("execution_id"), b.reason)


async def redrive_execution(ctx: Ctx) -> s.ExecutionRecord:
    return await ctx.hub.workflows.redrive(ctx.path("execution_id"))


WORKFLOW_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/schemas/workflow",
        "The JSON Schema of a fleetchat.workflow/v1 definition",
        workflow_schema,
        response=s.JSON_SCHEMA,
    ),
    Route(
        "POST",
        "/v1/workflows",
        "Register a definition: the body is the definition, as JSON or as YAML "
        "(Content-Type: application/yaml); 201 when new, 200 when already there",
        register_workflow,
        "agent",
        response=s.DefinitionRecord,
        status=201,
        raw_body="WorkflowDefinition",
    ),
    Route(
        "GET",
        "/v1/workflows",
        "List definitions, by name and version",
        list_workflows,
        response=s.DefinitionList,
    ),
    Route(
        "GET",
        _WF,
        "Get a definition",
        get_workflow,
        response=s.DefinitionRecord,
        query=(_VERSION,),
    ),
    Route(
        "GET",
        f"{_WF}/graph",
        "A definition as a Mermaid flowchart (text/plain)",
        workflow_graph,
        query=(_VERSION,),
    ),
    Route(
        "POST",
        f"{_WF}/deprecate",
        "Deprecate a version (no new starts) or allow it again",
        deprecate_workflow,
        "agent",
        s.DeprecateBody,
        s.DefinitionRecord,
    ),
    Route(
        "POST",
        f"{_WF}/executions",
        "Start an execution (the input must pass the input schema)",
        start_execution,
        "agent",
        s.StartBody,
        s.ExecutionRecord,
        status=201,
    ),
    Route(
        "GET",
        "/v1/executions",
        "List executions, oldest first",
        list_executions,
        response=s.ExecutionList,
        query=(
            Param("status", "string", "only executions in this status"),
            Param("workflow", "string", "only executions of this definition name"),
            Param("limit", "integer", "most executions (default 100, 1..10000)"),
        ),
    ),
    Route(
        "GET", _EX, "Get an execution and its step runs", get_execution, response=s.ExecutionRecord
    ),
    Route(
        "GET",
        f"{_EX}/events",
        "An execution's event log, oldest first",
        execution_events,
        response=s.EventList,
    ),
    Route(
        "POST",
        f"{_EX}/cancel",
        "Cancel a running execution (its tasks, branches and children stop)",
        cancel_execution,
        "agent",
        s.CancelBody,
        s.ExecutionRecord,
    ),
    Route(
        "POST",
        f"{_EX}/redrive",
        "Run a failed execution again from the step(s) that failed",
        redrive_execution,
        "agent",
        response=s.ExecutionRecord,
    ),
)
