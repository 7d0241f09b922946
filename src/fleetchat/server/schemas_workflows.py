"""Bodies of the workflow routes of the REST API (shared by the server and the SDK).

Definitions answer as :class:`~fleetchat.workflows.records.DefinitionRecord`, executions as
:class:`~fleetchat.workflows.records.ExecutionRecord` and their log as
:class:`~fleetchat.workflows.records.ExecutionEvent` (see docs/workflows.md).
"""

from __future__ import annotations

from typing import Any

import msgspec

from fleetchat.workflows.records import (
    DefinitionRecord,
    ExecutionEvent,
    ExecutionRecord,
    StepRun,
    Thread,
)

__all__ = [
    "JSON_SCHEMA",
    "YAML_TYPES",
    "CancelBody",
    "DefinitionList",
    "DefinitionRecord",
    "DeprecateBody",
    "EventList",
    "ExecutionEvent",
    "ExecutionList",
    "ExecutionRecord",
    "StartBody",
    "StepRun",
    "Thread",
]

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
"""Content types of a definition sent as YAML text (anything else is read as JSON)."""

JSON_SCHEMA = dict[str, Any]
"""The answer of ``GET /v1/schemas/workflow``: a JSON Schema (draft 2020-12)."""


class DeprecateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: str
    """The version to (un)deprecate (``latest``: the highest one not deprecated)."""
    deprecated: bool = True
    """False: allow new starts of the version again."""


class StartBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Any = None
    """The execution's input; checked against the definition's ``input_schema``."""
    version: str = "latest"
    """The version to run (``latest``: the highest one not deprecated)."""


class CancelBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: str | None = None


class DefinitionList(msgspec.Struct, kw_only=True):
    definitions: list[DefinitionRecord]


class ExecutionList(msgspec.Struct, kw_only=True):
    executions: list[ExecutionRecord]


class EventList(msgspec.Struct, kw_only=True):
    events: list[ExecutionEvent]
