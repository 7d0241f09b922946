"""The JSON Schema (Draft 2020-12) of a ``fleetchat.workflow/v1`` document.

It checks shapes only; the rules across fields (targets that resolve, reachability, cycles,
expressions, durations, retry sanity, timeouts) are in :mod:`fleetchat.workflows.checks`.
Served by the REST API at ``/v1/schemas/workflow``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PATTERN_HINTS", "WORKFLOW_SCHEMA"]

_ID = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME = r"^[a-z0-9][a-z0-9-]*$"
_WORKFLOW_REF = r"^[a-z0-9][a-z0-9-]*@(latest|\d+\.\d+\.\d+\S*)$"
_SEMVER = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)

#: What each pattern of the schema means, for problem messages.
PATTERN_HINTS: dict[str, str] = {
    _ID: "must be letters, digits and _, not starting with a digit (usable as steps.<id>)",
    _NAME: "must be lowercase letters, digits and -, starting with a letter or digit",
    _SEMVER: "must be a semantic version such as 1.2.0",
    _WORKFLOW_REF: "must be name@version (1.2.0) or name@latest",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


_COMMON: dict[str, Any] = {
    "id": _ref("step_id"),
    "type": {"type": "string"},
    "description": {"type": "string"},
    "max_visits": {"type": "integer", "minimum": 1},
}
_FLOW: dict[str, Any] = {"next": _ref("target"), "catch": _ref("catches")}


def _step(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "type", *required],
        "properties": {**_COMMON, **properties},
        "additionalProperties": False,
    }


_STEP_TYPES: dict[str, dict[str, Any]] = {
    "agent_task": _step(
        ["agent"],
        **_FLOW,
        agent=_ref("agent"),
        input=True,
        priority={"enum": ["critical", "high", "normal", "low"]},
        retry=_ref("retry"),
        timeout=_ref("timeouts"),
    ),
    "condition": _step(
        ["cases", "default"],
        catch=_ref("catches"),
        cases={
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["when", "next"],
                "properties": {"when": _ref("expression"), "next": _ref("target")},
                "additionalProperties": False,
            },
        },
        default=_ref("target"),
    ),
    "parallel": _step(
        ["branches"],
        **_FLOW,
        branches={
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": _ID},
            "additionalProperties": _ref("steps"),
        },
        join={"anyOf": [{"enum": ["all", "any"]}, {"type": "integer", "minimum": 1}]},
        tolerated_failures=_ref("tolerated"),
        fail_fast={"type": "boolean"},
    ),
    "wait": _step(
        [],
        **_FLOW,
        duration=_ref("duration"),
        until={"type": "string", "minLength": 1},
        message={
            "type": "object",
            "required": ["channel"],
            "properties": {
                "channel": {"type": "string", "minLength": 1},
                "when": _ref("expression"),
            },
            "additionalProperties": False,
        },
        timeout=_ref("timeouts"),
    ),
    "set": _step(["values"], **_FLOW, values={"type": "object", "minProperties": 1}),
    "fail": _step([], error={"type": "string", "minLength": 1}, message={"type": "string"}),
    "succeed": _step([], catch=_ref("catches"), output=True),
    "map": _step(
        ["items", "steps"],
        **_FLOW,
        items=_ref("expression"),
        steps=_ref("steps"),
        max_concurrency={"type": "integer", "minimum": 1},
        tolerated_failures=_ref("tolerated"),
    ),
    "sub_workflow": _step(
        ["workflow"],
        **_FLOW,
        workflow={"type": "string", "pattern": _WORKFLOW_REF},
        input=True,
        retry=_ref("retry"),
        timeout=_ref("timeouts"),
    ),
}

_TIMEOUT_FIELDS = ("schedule_to_start", "start_to_close", "heartbeat", "schedule_to_close")

#: The JSON Schema of a definition document.
WORKFLOW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://fleetchat.dev/schemas/fleetchat.workflow/v1",
    "title": "fleetchat.workflow/v1",
    "description": "A fleetchat workflow definition (see docs/workflows.md).",
    "type": "object",
    "required": ["name", "version", "steps"],
    "properties": {
        "schema": {"const": "fleetchat.workflow/v1"},
        "name": {"type": "string", "pattern": _NAME, "maxLength": 128},
        "version": {"type": "string", "pattern": _SEMVER},
        "description": {"type": "string"},
        "expression_language": {"const": "cel"},
        "input_schema": {"type": "object"},
        "defaults": {
            "type": "object",
            "properties": {"timeout": _ref("timeouts"), "retry": _ref("retry")},
            "additionalProperties": False,
        },
        "execution_timeout": _ref("duration"),
        "start": _ref("step_id"),
        "steps": _ref("steps"),
    },
    "additionalProperties": False,
    "$defs": {
        "step_id": {"type": "string", "pattern": _ID, "not": {"enum": ["end", "fail"]}},
        "target": {"type": "string", "pattern": _ID},
        "expression": {"type": "string", "minLength": 1},
        "duration": {
            "description": "250ms, 30s, 5m, 1h30m, 2d, ISO 8601 (PT5M) or a number of seconds",
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "number", "minimum": 0}],
        },
        "tolerated": {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
            ]
        },
        "timeouts": {
            "description": "the four timeouts, or one duration meaning schedule_to_close",
            "anyOf": [
                _ref("duration"),
                {
                    "type": "object",
                    "properties": {name: _ref("duration") for name in _TIMEOUT_FIELDS},
                    "additionalProperties": False,
                },
            ],
        },
        "retry": {
            "type": "object",
            "properties": {
                "max_attempts": {"type": "integer", "minimum": 1},
                "initial_interval": _ref("duration"),
                "backoff_coefficient": {"type": "number", "minimum": 1},
                "max_interval": _ref("duration"),
                "non_retryable": {"type": "array", "items": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        "catches": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["errors", "next"],
                "properties": {
                    "errors": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "next": _ref("target"),
                    "as": {"type": "string", "pattern": _ID},
                },
                "additionalProperties": False,
            },
        },
        "agent": {
            "type": "object",
            "properties": {
                "capabilities": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                },
                "id": {"type": "string", "minLength": 1},
                "auction": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "steps": {"type": "array", "minItems": 1, "items": _ref("step")},
        "step": {
            "type": "object",
            "required": ["id", "type"],
            "properties": {"type": {"enum": list(_STEP_TYPES)}},
            "allOf": [
                {
                    "if": {"required": ["type"], "properties": {"type": {"const": kind}}},
                    "then": _ref(f"step_{kind}"),
                }
                for kind in _STEP_TYPES
            ],
        },
        **{f"step_{kind}": schema for kind, schema in _STEP_TYPES.items()},
    },
}
