"""Where steps and expressions sit in a definition document (a plain dict, maybe invalid).

Both the validator (on the submitted document) and :func:`compile_all` (on a parsed
definition turned back into builtins) walk the document through these two generators, so
they agree on what is an expression and which roots it may use. Nothing here assumes the
document is valid: wrong shapes are skipped (the JSON Schema reports them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from fleetchat.workflows.durations import parse_timestamp

__all__ = ["ExpressionSite", "StepAt", "expression_sites", "walk_steps"]

_BASE = frozenset({"input", "steps", "vars", "execution"})


class StepAt(NamedTuple):
    """One step of a document and where it is."""

    step: dict[str, Any]
    pointer: str
    """JSON Pointer of the step, e.g. ``/steps/2/branches/legal/0``."""
    scope: str
    """JSON Pointer of the list holding it (its scope)."""
    in_map: bool
    """Inside a map body (``item`` and ``index`` exist)."""


class ExpressionSite(NamedTuple):
    """One place that holds an expression (bare) or a template with ``${...}``."""

    step_id: str | None
    pointer: str
    value: Any
    template: bool
    roots: frozenset[str]


def walk_steps(document: Any) -> Iterator[StepAt]:
    """Every step dict at every depth, parents first."""
    if isinstance(document, dict):
        yield from _walk(document.get("steps"), "/steps", in_map=False)


def _walk(steps: Any, scope: str, *, in_map: bool) -> Iterator[StepAt]:
    if not isinstance(steps, list):
        return
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        pointer = f"{scope}/{i}"
        yield StepAt(step, pointer, scope, in_map)
        kind = step.get("type")
        if kind == "parallel" and isinstance(step.get("branches"), dict):
            for name, body in step["branches"].items():
                yield from _walk(body, f"{pointer}/branches/{_escape(str(name))}", in_map=in_map)
        elif kind == "map":
            yield from _walk(step.get("steps"), f"{pointer}/steps", in_map=True)


def catch_targets(document: Any) -> set[str]:
    """Ids that some catch leads to (the ``error`` root exists in those steps)."""
    targets: set[str] = set()
    for at in walk_steps(document):
        catches = at.step.get("catch")
        if isinstance(catches, list):
            targets.update(
                c["next"] for c in catches if isinstance(c, dict) and isinstance(c.get("next"), str)
            )
    return targets


def expression_sites(document: Any) -> Iterator[ExpressionSite]:
    """Every expression and template of a document, with the roots allowed there."""
    caught = catch_targets(document)
    for at in walk_steps(document):
        step = at.step
        step_id = step.get("id") if isinstance(step.get("id"), str) else None
        roots = _BASE
        if at.in_map:
            roots = roots | {"item", "index"}
        if step_id in caught:
            roots = roots | {"error"}
        for path, value, template, extra in _sites_of(step):
            yield ExpressionSite(step_id, at.pointer + path, value, template, roots | extra)


_NONE: frozenset[str] = frozenset()


def _sites_of(step: dict[str, Any]) -> Iterator[tuple[str, Any, bool, frozenset[str]]]:
    kind = step.get("type")
    if kind in ("agent_task", "sub_workflow") and "input" in step:
        yield "/input", step["input"], True, _NONE
    if kind == "agent_task" and isinstance(step.get("agent"), dict) and "id" in step["agent"]:
        yield "/agent/id", step["agent"]["id"], True, _NONE
    elif kind == "condition" and isinstance(step.get("cases"), list):
        for i, case in enumerate(step["cases"]):
            if isinstance(case, dict) and isinstance(case.get("when"), str):
                yield f"/cases/{i}/when", case["when"], False, _NONE
    elif kind == "wait":
        if isinstance(step.get("until"), str) and parse_timestamp(step["until"]) is None:
            yield "/until", step["until"], False, _NONE
        message = step.get("message")
        if isinstance(message, dict):
            if "channel" in message:
                yield "/message/channel", message["channel"], True, _NONE
            if isinstance(message.get("when"), str):
                yield "/message/when", message["when"], False, frozenset({"message"})
    elif kind == "set" and "values" in step:
        yield "/values", step["values"], True, _NONE
    elif kind == "fail" and "message" in step:
        yield "/message", step["message"], True, _NONE
    elif kind == "succeed" and "output" in step:
        yield "/output", step["output"], True, _NONE
    elif kind == "map" and isinstance(step.get("items"), str):
        yield "/items", step["items"], False, _NONE


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")
