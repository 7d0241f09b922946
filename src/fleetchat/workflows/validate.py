"""Parse and validate a definition document: every problem at once, or a :class:`Definition`."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import jsonschema
import msgspec
import yaml

from fleetchat.errors import InvalidDefinitionError
from fleetchat.workflows.checks import FLOWING, check_document, implicit_next
from fleetchat.workflows.durations import parse_duration
from fleetchat.workflows.model import Definition
from fleetchat.workflows.schema import PATTERN_HINTS, WORKFLOW_SCHEMA
from fleetchat.workflows.sites import walk_steps

__all__ = ["content_hash", "load_document", "parse_definition", "validate_document"]

_VALIDATOR = jsonschema.Draft202012Validator(WORKFLOW_SCHEMA)
_TIMEOUT_FIELDS = ("schedule_to_start", "start_to_close", "heartbeat", "schedule_to_close")


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: ``until: 2026-05-01T08:00:00Z`` stays a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_document(
    document: str | bytes | dict[str, Any], *, fmt: Literal["yaml", "json"] | None = None
) -> dict[str, Any]:
    """The document as a dict: YAML or JSON text (``fmt=None``: YAML, a superset of JSON).

    Raises:
        InvalidDefinitionError: the text does not parse, or is not a mapping.
    """
    if isinstance(document, dict):
        return document
    try:
        text = document.decode() if isinstance(document, bytes) else document
    except UnicodeDecodeError as exc:
        raise _invalid([_problem("", None, f"not UTF-8 text: {exc}")]) from exc
    try:
        loaded = json.loads(text) if fmt == "json" else yaml.load(text, Loader=_Loader)
    except (ValueError, yaml.YAMLError) as exc:
        what = "JSON" if fmt == "json" else "YAML"
        raise _invalid([_problem("", None, f"not valid {what}: {exc}")]) from exc
    if not isinstance(loaded, dict):
        raise _invalid([_problem("", None, "a definition is a mapping (object) at the top")])
    return loaded


def content_hash(document: dict[str, Any]) -> str:
    """sha256 (hex) of the document's canonical JSON (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_document(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every problem of a loaded document: its JSON Schema, then the rules beyond it."""
    problems = [
        _problem(
            _pointer(error.absolute_path),
            _step_at(document, error.absolute_path),
            _schema_message(error),
        )
        for error in sorted(
            _VALIDATOR.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))
        )
    ]
    problems.extend(check_document(document))
    unique: list[dict[str, Any]] = []
    for problem in problems:
        if problem not in unique:
            unique.append(problem)
    return unique


def parse_definition(
    document: str | bytes | dict[str, Any], *, fmt: Literal["yaml", "json"] | None = None
) -> Definition:
    """Parse and validate a ``fleetchat.workflow/v1`` document.

    The result is normalised for the engine: durations are seconds, ``defaults`` are merged
    into each ``agent_task`` and ``sub_workflow`` step's ``timeout`` and ``retry`` (so those are
    the effective values, never None on those steps), a bare duration as ``timeout`` is its
    ``schedule_to_close``, ``start`` is set, and every flowing step's ``next`` names its
    successor (the following step of its scope, or ``end``).

    Args:
        document: YAML or JSON text, or an already loaded dict.
        fmt: ``"json"`` to parse strictly as JSON; None (or ``"yaml"``) parses YAML.

    Raises:
        InvalidDefinitionError: with ``details["problems"]``, every problem found.
    """
    loaded = load_document(document, fmt=fmt)
    problems = validate_document(loaded)
    if problems:
        raise _invalid(problems)
    return msgspec.convert(_normalise(loaded), Definition)


def _normalise(document: dict[str, Any]) -> dict[str, Any]:
    """A valid document in the shape of :class:`Definition` (see :func:`parse_definition`)."""
    doc: dict[str, Any] = json.loads(json.dumps(document, default=str))  # a copy to edit
    doc.pop("expression_language", None)
    doc["content_hash"] = content_hash(document)
    if "execution_timeout" in doc:
        doc["execution_timeout"] = parse_duration(doc["execution_timeout"])
    defaults = doc.setdefault("defaults", {})
    defaults["timeout"] = _timeouts(defaults.get("timeout", {}))
    defaults["retry"] = _retry(defaults.get("retry", {}))
    doc.setdefault("start", doc["steps"][0]["id"])
    for at in list(walk_steps(doc)):
        step = at.step
        step.pop("description", None)
        kind = step["type"]
        if kind == "wait" and "duration" in step:
            step["duration"] = parse_duration(step["duration"])
        if "timeout" in step:
            step["timeout"] = _timeouts(step["timeout"])
        if "retry" in step:
            step["retry"] = _retry(step["retry"])
        if kind in ("agent_task", "sub_workflow"):
            step["timeout"] = {**defaults["timeout"], **step.get("timeout", {})}
            step["retry"] = {**defaults["retry"], **step.get("retry", {})}
    for scope in _scopes(doc):
        for i, step in enumerate(scope):
            if step["type"] in FLOWING:
                following = scope[i + 1]["id"] if i + 1 < len(scope) else None
                step["next"] = implicit_next(step, following)
    return doc


def _scopes(doc: dict[str, Any]) -> list[list[dict[str, Any]]]:
    scopes = [doc["steps"]]
    for at in walk_steps(doc):
        if at.step["type"] == "parallel":
            scopes.extend(at.step["branches"].values())
        elif at.step["type"] == "map":
            scopes.append(at.step["steps"])
    return scopes


def _timeouts(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {"schedule_to_close": parse_duration(value)}
    return {k: parse_duration(v) for k, v in value.items() if k in _TIMEOUT_FIELDS}


def _retry(value: dict[str, Any]) -> dict[str, Any]:
    retry = dict(value)
    for key in ("initial_interval", "max_interval"):
        if key in retry:
            retry[key] = parse_duration(retry[key])
    return retry


def _schema_message(error: jsonschema.ValidationError) -> str:
    """The validator's message, in words for the patterns a reader cannot be expected to parse."""
    if error.validator == "pattern" and isinstance(error.validator_value, str):
        hint = PATTERN_HINTS.get(error.validator_value)
        if hint is not None:
            return f"{error.instance!r}: {hint}"
    if error.validator == "not":
        return f"{error.instance!r} is reserved"
    return error.message


def _problem(path: str, step: str | None, message: str) -> dict[str, Any]:
    return {"path": path, "step": step, "message": message}


def _invalid(problems: list[dict[str, Any]]) -> InvalidDefinitionError:
    first = problems[0]["message"]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return InvalidDefinitionError(f"invalid workflow definition: {first}{more}", problems=problems)


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _step_at(document: Any, path: Any) -> str | None:
    """The id of the innermost step on a path into the document."""
    node, found, trail = document, None, list(path)
    for i, token in enumerate(trail):
        try:
            node = node[token]
        except (KeyError, IndexError, TypeError):
            break
        in_list = i >= 1 and (trail[i - 1] == "steps" or (i >= 2 and trail[i - 2] == "branches"))
        if in_list and isinstance(node, dict) and isinstance(node.get("id"), str):
            found = node["id"]
    return found
