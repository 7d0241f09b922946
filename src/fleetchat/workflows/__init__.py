"""Workflows: the ``fleetchat.workflow/v1`` definition format, its validation, expressions and
graph (see docs/workflows.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetchat.workflows.durations import DurationError, parse_duration, parse_timestamp
from fleetchat.workflows.model import (
    CATCHABLE_ERRORS,
    ERROR_TYPES,
    AgentTarget,
    AgentTaskStep,
    Case,
    Catch,
    ConditionStep,
    Defaults,
    Definition,
    FailStep,
    MapStep,
    ParallelStep,
    Retry,
    SetStep,
    Step,
    SubWorkflowStep,
    SucceedStep,
    Timeouts,
    WaitMessage,
    WaitStep,
    find_step,
    iter_steps,
    step_index,
)

if TYPE_CHECKING:
    from fleetchat.workflows.expressions import (
        BASE_ROOTS,
        CONTEXT_ROOTS,
        ExpressionError,
        Expressions,
        compile_all,
    )
    from fleetchat.workflows.graph import to_mermaid
    from fleetchat.workflows.schema import WORKFLOW_SCHEMA
    from fleetchat.workflows.validate import parse_definition, validate_document

# These load cel-python, jsonschema and PyYAML (a few hundred ms): imported on first use, so
# the hub (which imports fleetchat.workflows.records) does not pay for them at start.
_LAZY = {
    "BASE_ROOTS": "expressions",
    "CONTEXT_ROOTS": "expressions",
    "ExpressionError": "expressions",
    "Expressions": "expressions",
    "compile_all": "expressions",
    "to_mermaid": "graph",
    "WORKFLOW_SCHEMA": "schema",
    "parse_definition": "validate",
    "validate_document": "validate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = [
    "BASE_ROOTS",
    "CATCHABLE_ERRORS",
    "CONTEXT_ROOTS",
    "ERROR_TYPES",
    "WORKFLOW_SCHEMA",
    "AgentTarget",
    "AgentTaskStep",
    "Case",
    "Catch",
    "ConditionStep",
    "Defaults",
    "Definition",
    "DurationError",
    "ExpressionError",
    "Expressions",
    "FailStep",
    "MapStep",
    "ParallelStep",
    "Retry",
    "SetStep",
    "Step",
    "SubWorkflowStep",
    "SucceedStep",
    "Timeouts",
    "WaitMessage",
    "WaitStep",
    "compile_all",
    "find_step",
    "iter_steps",
    "parse_definition",
    "parse_duration",
    "parse_timestamp",
    "step_index",
    "to_mermaid",
    "validate_document",
]
