"""CEL expressions (cel-python) in definitions: compiled once, evaluated to plain Python values.

Two forms appear in a definition. A *bare* expression (``cases[].when``, ``map.items``,
``wait.until``, ``wait.message.when``) is CEL text. A *template* (``agent_task.input``,
``set.values``, ``succeed.output``, ...) is any JSON value whose strings may hold ``${...}``:
a string that is exactly one ``${...}`` takes the result's type, text mixed with ``${...}``
becomes a string, ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from fleetchat.workflows.cel import (
    ExpressionError,
    Program,
    check_expression,
    compile_program,
    eval_detail,
    to_cel,
    to_python,
)
from fleetchat.workflows.durations import parse_timestamp
from fleetchat.workflows.sites import expression_sites
from fleetchat.workflows.templates import as_text, split_template, template_sources

if TYPE_CHECKING:
    from fleetchat.workflows.model import Definition

__all__ = [
    "BASE_ROOTS",
    "CONTEXT_ROOTS",
    "ExpressionError",
    "Expressions",
    "check_expression",
    "compile_all",
    "split_template",
    "template_sources",
]

#: Roots every expression may use.
BASE_ROOTS: frozenset[str] = frozenset({"input", "steps", "vars", "execution"})
#: Roots that exist only in some places: ``message`` in ``wait.message.when``, ``error`` in a
#: step that a catch leads to, ``item`` and ``index`` inside a map body.
CONTEXT_ROOTS: frozenset[str] = frozenset({"message", "error", "item", "index"})


class Expressions:
    """The compiled expressions of one definition (see :func:`compile_all`).

    Activations map root names to plain Python values (dicts, lists, str, int, float, bool,
    None, ``datetime`` for timestamps, ``timedelta`` for durations). Only the roots an
    expression uses are converted to CEL, once per :meth:`render` call.
    """

    def __init__(self, sources: Iterable[str] = ()) -> None:
        self._programs = {source: compile_program(source) for source in sources}

    def __len__(self) -> int:
        return len(self._programs)

    def __contains__(self, source: object) -> bool:
        return source in self._programs

    def evaluate(self, source: str, activation: Mapping[str, Any]) -> Any:
        """The value of a bare expression, as plain Python.

        Raises:
            ExpressionError: the expression failed (or does not compile).
        """
        return self._evaluate(source, activation, {})

    def render(self, template: Any, activation: Mapping[str, Any]) -> Any:
        """A template with every ``${...}`` replaced (see the module docstring).

        Raises:
            ExpressionError: an expression failed.
        """
        return self._render(template, activation, {})

    def until(self, until: str, activation: Mapping[str, Any]) -> dt.datetime:
        """The instant a ``wait.until`` names: its timestamp, or its expression's value.

        Raises:
            ExpressionError: the expression failed or gave no timestamp.
        """
        stamp = parse_timestamp(until)
        if stamp is not None:
            return stamp
        value = self.evaluate(until, activation)
        if isinstance(value, str):
            stamp = parse_timestamp(value)
        elif isinstance(value, dt.datetime):
            stamp = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        if stamp is None:
            raise ExpressionError(until, f"gave {value!r}, not a timestamp")
        return stamp

    def _program(self, source: str) -> Program:
        program = self._programs.get(source)
        if program is None:
            try:
                program = self._programs[source] = compile_program(source)
            except CELParseError as exc:
                raise ExpressionError(source, "does not compile") from exc
        return program

    def _evaluate(self, source: str, activation: Mapping[str, Any], memo: dict[str, Any]) -> Any:
        program = self._program(source)
        try:
            context = {}
            for root in program.roots:
                if root in activation:
                    context[root] = self._convert(root, program, activation[root], memo)
            result = program.runner.evaluate(context)
        except CELEvalError as exc:
            raise ExpressionError(source, eval_detail(exc)) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(source, f"{type(exc).__name__}: {exc}") from exc
        return to_python(result, source)

    @staticmethod
    def _convert(root: str, program: Program, value: Any, memo: dict[str, Any]) -> Any:
        """A root as CEL, memoised for one render. Of ``steps``, only the entries the
        expression names are converted (the whole history would cost ~0.1 ms a step)."""
        if root != "steps" or program.step_refs is None or not isinstance(value, Mapping):
            if root not in memo:
                memo[root] = to_cel(value)
            return memo[root]
        entries = memo.setdefault("steps:", {})
        for ref in program.step_refs:
            if ref not in entries and ref in value:
                entries[ref] = to_cel(value[ref])
        return celtypes.MapType(
            {celtypes.StringType(ref): entries[ref] for ref in program.step_refs if ref in entries}
        )

    def _render(self, template: Any, activation: Mapping[str, Any], memo: dict[str, Any]) -> Any:
        if isinstance(template, str):
            if "${" not in template:
                return template
            try:
                parts = split_template(template)
            except ValueError as exc:
                raise ExpressionError(template, str(exc)) from exc
            if len(parts) == 1 and isinstance(parts[0], tuple):
                return self._evaluate(parts[0][0], activation, memo)
            return "".join(
                part
                if isinstance(part, str)
                else as_text(self._evaluate(part[0], activation, memo))
                for part in parts
            )
        if isinstance(template, Mapping):
            return {k: self._render(v, activation, memo) for k, v in template.items()}
        if isinstance(template, list | tuple):
            return [self._render(v, activation, memo) for v in template]
        return template


def compile_all(definition: Definition) -> Expressions:
    """Compile every expression of a (validated) definition once.

    Raises:
        ExpressionError: an expression does not compile (never for a parsed definition).
    """
    document = msgspec.to_builtins(definition)
    sources: list[str] = []
    for site in expression_sites(document):
        if site.template:
            sources.extend(template_sources(site.value))
        elif isinstance(site.value, str):
            sources.append(site.value)
    expressions = Expressions()
    for source in sources:
        expressions._program(source)
    return expressions
