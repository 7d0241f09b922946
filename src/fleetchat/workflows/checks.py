"""The rules of a definition beyond its JSON Schema, run on the submitted document.

Each check appends problems (``{"path", "step", "message"}``) and never raises, whatever the
document's shape: wrong shapes are the schema's to report, so the checks skip them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fleetchat.workflows.durations import DurationError, parse_duration
from fleetchat.workflows.expressions import check_expression, template_sources
from fleetchat.workflows.model import CATCHABLE_ERRORS, TERMINALS
from fleetchat.workflows.sites import StepAt, expression_sites, walk_steps

__all__ = ["FLOWING", "check_document", "implicit_next"]

#: Step types that go on to ``next`` (or the following step) when they complete.
FLOWING = frozenset({"agent_task", "parallel", "wait", "set", "map", "sub_workflow"})
_TIMEOUT_FIELDS = ("schedule_to_start", "start_to_close", "heartbeat", "schedule_to_close")

Problem = dict[str, Any]


def check_document(document: dict[str, Any]) -> list[Problem]:
    """Every problem the schema cannot see (see docs/workflows.md, "Validation")."""
    out: list[Problem] = []
    steps = list(walk_steps(document))
    ids = _check_ids(steps, out)
    scopes: dict[str, list[StepAt]] = {}
    for at in steps:
        scopes.setdefault(at.scope, []).append(at)
    for scope, members in scopes.items():
        start = document.get("start") if scope == "/steps" else None
        _check_scope(members, start if isinstance(start, str) else None, out)
    _check_durations(document, steps, out)
    for at in steps:
        _check_step(at, out)
    for site in expression_sites(document):
        _check_site(site.value, site.template, site.roots, ids, site.pointer, site.step_id, out)
    return out


def _add(out: list[Problem], path: str, step: Any, message: str) -> None:
    out.append({"path": path, "step": step if isinstance(step, str) else None, "message": message})


def _check_ids(steps: list[StepAt], out: list[Problem]) -> set[str]:
    seen: dict[str, str] = {}
    for at in steps:
        sid = at.step.get("id")
        if not isinstance(sid, str):
            continue
        if sid in seen:
            _add(out, f"{at.pointer}/id", sid, f"duplicate step id {sid!r} (also at {seen[sid]})")
        else:
            seen[sid] = at.pointer
    return set(seen)


def implicit_next(step: dict[str, Any], following: str | None) -> str:
    """Where a flowing step goes: its ``next``, else the following step, else ``end``."""
    target = step.get("next")
    return target if isinstance(target, str) else (following or "end")


def _targets(step: dict[str, Any], following: str | None) -> Iterator[tuple[str, Any]]:
    """(JSON Pointer suffix, target) of every edge leaving a step."""
    kind = step.get("type")
    if kind in FLOWING:
        yield "/next", implicit_next(step, following)
    if kind == "condition":
        for i, case in enumerate(_list(step.get("cases"))):
            if isinstance(case, dict):
                yield f"/cases/{i}/next", case.get("next")
        yield "/default", step.get("default")
    for i, catch in enumerate(_list(step.get("catch"))):
        if isinstance(catch, dict):
            yield f"/catch/{i}/next", catch.get("next")


def _check_scope(members: list[StepAt], start: str | None, out: list[Problem]) -> None:
    order = [m.step.get("id") for m in members]
    local: dict[str, StepAt] = {}
    for sid, member in zip(order, members, strict=True):
        if isinstance(sid, str):
            local.setdefault(sid, member)
    edges: dict[str, list[str]] = {sid: [] for sid in local}
    for i, at in enumerate(members):
        following = order[i + 1] if i + 1 < len(order) else None
        sid = at.step.get("id")
        for suffix, target in _targets(at.step, following if isinstance(following, str) else None):
            if not isinstance(target, str) or target in TERMINALS:
                continue
            if target not in local:
                where = "the top-level steps" if at.scope == "/steps" else f"scope {at.scope}"
                _add(out, at.pointer + suffix, sid, f"{target!r} is not a step of {where}")
            elif isinstance(sid, str):
                edges[sid].append(target)
    if start is not None and start not in local:
        _add(out, "/start", None, f"start {start!r} is not a top-level step")
    else:
        first = start or next((sid for sid in order if isinstance(sid, str)), None)
        reached = _reach(first, edges)
        for sid, at in local.items():
            if sid not in reached:
                _add(out, at.pointer, sid, f"step {sid!r} is unreachable from {first!r}")
    # A duplicated id is reported already; its edges would only make up cycles.
    duplicated = {sid for sid in local if order.count(sid) > 1}
    unguarded = {
        sid for sid, at in local.items() if not at.step.get("max_visits") and sid not in duplicated
    }
    for cycle in _cycles(unguarded, edges):
        ordered = [sid for sid in local if sid in cycle]
        _add(
            out,
            local[ordered[0]].pointer,
            ordered[0],
            f"steps {', '.join(ordered)} form a cycle with no max_visits on any of them "
            "(set max_visits on one as a loop guard)",
        )


def _reach(first: str | None, edges: dict[str, list[str]]) -> set[str]:
    reached: set[str] = set()
    todo = [first] if first is not None else []
    while todo:
        sid = todo.pop()
        if sid not in reached:
            reached.add(sid)
            todo.extend(edges.get(sid, ()))
    return reached


def _cycles(nodes: set[str], edges: dict[str, list[str]]) -> list[set[str]]:
    """Strongly connected components of the subgraph on ``nodes`` that hold a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; scopes are small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in edges.get(node, ()):
            if succ not in nodes:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(component)

    for node in nodes:
        if node not in index:
            visit(node)
    return found


def _duration(value: Any, path: str, step: Any, out: list[Problem]) -> float | None:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None  # the schema reports it
    try:
        return parse_duration(value)
    except DurationError as exc:
        _add(out, path, step, str(exc))
        return None


def _timeouts(value: Any, path: str, step: Any, out: list[Problem]) -> dict[str, float]:
    if not isinstance(value, dict):
        seconds = _duration(value, path, step, out)
        return {} if seconds is None else {"schedule_to_close": seconds}
    parsed = {k: _duration(value.get(k), f"{path}/{k}", step, out) for k in _TIMEOUT_FIELDS}
    return {k: v for k, v in parsed.items() if v is not None}


def _retry(value: Any, path: str, step: Any, out: list[Problem]) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    retry = dict(value)
    for key in ("initial_interval", "max_interval"):
        if key in retry:
            retry[key] = _duration(retry[key], f"{path}/{key}", step, out)
    return retry


def _check_durations(document: dict[str, Any], steps: list[StepAt], out: list[Problem]) -> None:
    if "execution_timeout" in document:
        _duration(document["execution_timeout"], "/execution_timeout", None, out)
    defaults = document.get("defaults")
    if not isinstance(defaults, dict):
        defaults = {}
    base_timeout = _timeouts(defaults.get("timeout", {}), "/defaults/timeout", None, out)
    base_retry = _retry(defaults.get("retry"), "/defaults/retry", None, out)
    _check_retry(base_retry, "/defaults/retry", None, out)
    for at in steps:
        step, sid = at.step, at.step.get("id")
        kind = step.get("type")
        if kind == "wait" and "duration" in step:
            _duration(step["duration"], f"{at.pointer}/duration", sid, out)
        own_timeout = _timeouts(step.get("timeout", {}), f"{at.pointer}/timeout", sid, out)
        own_retry = _retry(step.get("retry"), f"{at.pointer}/retry", sid, out)
        if kind == "wait" and set(own_timeout) - {"schedule_to_close"}:
            _add(out, f"{at.pointer}/timeout", sid, "a wait takes only schedule_to_close")
        if kind not in ("agent_task", "sub_workflow"):
            continue
        if own_retry:
            _check_retry({**base_retry, **own_retry}, f"{at.pointer}/retry", sid, out)
        timeouts = {**base_timeout, **own_timeout}
        if kind == "agent_task" and not {"start_to_close", "schedule_to_close"} & set(timeouts):
            _add(
                out,
                at.pointer,
                sid,
                "an agent_task needs timeout.start_to_close or timeout.schedule_to_close "
                "(on the step or in defaults.timeout)",
            )


def _check_retry(retry: dict[str, Any], path: str, step: Any, out: list[Problem]) -> None:
    initial, cap = retry.get("initial_interval", 1.0), retry.get("max_interval")
    if isinstance(initial, float) and isinstance(cap, float) and cap < initial:
        _add(out, path, step, f"max_interval ({cap:g} s) is below initial_interval ({initial:g} s)")


def _check_step(at: StepAt, out: list[Problem]) -> None:
    step, sid, kind = at.step, at.step.get("id"), at.step.get("type")
    for i, catch in enumerate(_list(step.get("catch"))):
        for j, error in enumerate(_list(catch.get("errors") if isinstance(catch, dict) else None)):
            if isinstance(error, str) and error not in CATCHABLE_ERRORS:
                why = "cannot be caught" if error == "fleetchat.runtime" else "is not an error type"
                _add(out, f"{at.pointer}/catch/{i}/errors/{j}", sid, f"{error!r} {why}")
    if kind == "wait":
        given = [k for k in ("duration", "until", "message") if k in step]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            _add(
                out,
                at.pointer,
                sid,
                f"a wait needs exactly one of duration, until, message (found: {found})",
            )
    elif kind == "parallel":
        branches = step.get("branches")
        count = len(branches) if isinstance(branches, dict) else 0
        join = step.get("join")
        if isinstance(join, int) and not isinstance(join, bool) and count and join > count:
            _add(out, f"{at.pointer}/join", sid, f"join {join} is more than the {count} branches")
    elif kind == "agent_task" and isinstance(step.get("agent"), dict):
        agent = step["agent"]
        if ("capabilities" in agent) == ("id" in agent):
            _add(out, f"{at.pointer}/agent", sid, "agent needs exactly one of capabilities, id")
        elif agent.get("auction") and "capabilities" not in agent:
            _add(out, f"{at.pointer}/agent", sid, "an auction needs capabilities, not an id")
    tolerated = step.get("tolerated_failures")
    if isinstance(tolerated, str) and tolerated.endswith("%") and _percent(tolerated) > 100:
        _add(out, f"{at.pointer}/tolerated_failures", sid, "tolerated_failures is over 100%")


def _check_site(
    value: Any,
    template: bool,
    roots: frozenset[str],
    ids: set[str],
    path: str,
    step: Any,
    out: list[Problem],
) -> None:
    try:
        sources = list(template_sources(value)) if template else [value]
    except ValueError as exc:
        _add(out, path, step, str(exc))
        return
    for source in sources:
        for message in check_expression(source, roots, ids):
            _add(out, path, step, message)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _percent(text: str) -> float:
    try:
        return float(text[:-1])
    except ValueError:
        return 0.0
