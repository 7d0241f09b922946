"""A definition as a Mermaid flowchart (``fleetchat workflow graph``)."""

from __future__ import annotations

from fleetchat.workflows.model import (
    ConditionStep,
    Definition,
    FailStep,
    MapStep,
    ParallelStep,
    SetStep,
    Step,
    SubWorkflowStep,
    SucceedStep,
    WaitStep,
)

__all__ = ["to_mermaid"]

# Words Mermaid reads as syntax, so they cannot be node ids as they are.
_KEYWORDS = frozenset(
    {"end", "graph", "flowchart", "subgraph", "style", "class", "classDef", "click", "linkStyle"}
)
_INDENT = "    "


def to_mermaid(definition: Definition) -> str:
    """A Mermaid ``flowchart TD`` of the definition.

    Steps are nodes labelled with their id and type (a condition is a rhombus, a wait a
    stadium, a sub-workflow a subroutine, ``succeed``/``fail`` rounded); ``next`` edges are
    solid, condition cases are labelled with their expression and ``default``, catches are
    dashed and labelled with their error types. Parallel branches and map bodies are subgraphs.
    ``start``, ``end`` and ``fail`` are circles; inside a branch or a body, ``end`` (the end of
    that branch) draws no edge.
    """
    lines = ["flowchart TD", f"{_INDENT}__start__((start))"]
    edges = [f"{_INDENT}__start__ --> {_node_id(definition.start)}"]
    terminals: set[str] = set()
    _scope(definition.steps, 1, lines, edges, terminals, top=True)
    if "end" in terminals:
        lines.append(f"{_INDENT}__end__((end))")
    if "fail" in terminals:
        lines.append(f"{_INDENT}__fail__((fail))")
    return "\n".join(lines + edges) + "\n"


def _scope(
    steps: list[Step],
    depth: int,
    lines: list[str],
    edges: list[str],
    terminals: set[str],
    *,
    top: bool,
) -> None:
    pad = _INDENT * depth
    for step in steps:
        node = _node_id(step.id)
        if isinstance(step, ParallelStep | MapStep):
            detail = (
                f"parallel, join {step.join}"
                if isinstance(step, ParallelStep)
                else f"map over {step.items}"
            )
            lines.append(f'{pad}subgraph {node}["{_text(step.id)}<br/>{_text(detail)}"]')
            bodies = step.branches if isinstance(step, ParallelStep) else {"body": step.steps}
            for name, body in bodies.items():
                if isinstance(step, ParallelStep):
                    lines.append(f'{pad}{_INDENT}subgraph {node}__{name}["{_text(name)}"]')
                    _scope(body, depth + 2, lines, edges, terminals, top=False)
                    lines.append(f"{pad}{_INDENT}end")
                else:
                    _scope(body, depth + 1, lines, edges, terminals, top=False)
            lines.append(f"{pad}end")
        else:
            lines.append(f"{pad}{node}{_shape(step)}")
        for target, label, dashed in _edges(step):
            if target == "end" and not top:
                continue
            if target in ("end", "fail"):
                terminals.add(target)
                dest = f"__{target}__"
            else:
                dest = _node_id(target)
            arrow = "-.->" if dashed else "-->"
            text = f'|"{_text(label)}"|' if label else ""
            edges.append(f"{_INDENT}{node} {arrow}{text} {dest}")


def _edges(step: Step) -> list[tuple[str, str, bool]]:
    """(target, label, dashed) of every edge leaving a step."""
    out: list[tuple[str, str, bool]] = []
    if isinstance(step, ConditionStep):
        out.extend((case.next, case.when, False) for case in step.cases)
        out.append((step.default, "default", False))
    elif not isinstance(step, FailStep | SucceedStep) and step.next is not None:
        out.append((step.next, "", False))
    if isinstance(step, FailStep):
        out.append(("fail", "", False))
    elif isinstance(step, SucceedStep):
        out.append(("end", "", False))
    if not isinstance(step, FailStep):
        out.extend((catch.next, ", ".join(catch.errors), True) for catch in step.catch)
    return out


def _shape(step: Step) -> str:
    label = f'"{_text(step.id)}<br/>{step.__struct_config__.tag}"'
    if isinstance(step, ConditionStep):
        return "{" + label + "}"
    if isinstance(step, WaitStep):
        return f"([{label}])"
    if isinstance(step, SubWorkflowStep):
        return f"[[{label}]]"
    if isinstance(step, SetStep):
        return f"[/{label}/]"
    if isinstance(step, FailStep | SucceedStep):
        return f"({label})"
    return f"[{label}]"


def _node_id(step_id: str) -> str:
    return f"step_{step_id}" if step_id in _KEYWORDS else step_id


def _text(text: object) -> str:
    """Text safe inside a quoted Mermaid label."""
    return (
        str(text)
        .replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
    )
