"""CEL expressions (cel-python) in definitions: compiled once, evaluated to plain Python values.

Two forms appear in a definition. A *bare* expression (``cases[].when``, ``map.items``,
``wait.until``, ``wait.message.when``) is CEL text. A *template* (``agent_task.input``,
``set.values``, ``succeed.output``, ...) is any JSON value whose strings may hold ``${...}``:
a string that is exactly one ``${...}`` takes the result's type, text mixed with ``${...}``
becomes a string, ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from fleetchat.workflows.durations import parse_timestamp
from fleetchat.workflows.sites import expression_sites

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
]

#: Roots every expression may use.
BASE_ROOTS: frozenset[str] = frozenset({"input", "steps", "vars", "execution"})
#: Roots that exist only in some places: ``message`` in ``wait.message.when``, ``error`` in a
#: step that a catch leads to, ``item`` and ``index`` inside a map body.
CONTEXT_ROOTS: frozenset[str] = frozenset({"message", "error", "item", "index"})

# Names CEL resolves by itself (type names) and the comprehension macros that bind a variable.
_BUILTIN_IDENTS = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_CACHE_LIMIT = 4096


class ExpressionError(Exception):
    """An expression failed at run time (a missing field, a type mismatch, division by zero).

    The engine fails the step with this error type; a ``catch`` can handle it.
    """

    type: ClassVar[str] = "fleetchat.expression"

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"expression {source!r} failed: {detail}")
        self.source = source
        self.detail = detail


class _Program:
    __slots__ = ("roots", "runner", "source", "step_refs")

    def __init__(
        self, source: str, runner: celpy.Runner, roots: frozenset[str], refs: frozenset[str]
    ) -> None:
        self.source = source
        self.runner = runner
        self.roots = roots
        self.step_refs = refs


_programs: dict[str, _Program] = {}
_envs: list[celpy.Environment] = []  # built on first use: it compiles CEL's grammar (~0.2 s)


def _environment() -> celpy.Environment:
    if not _envs:
        _envs.append(celpy.Environment())
    return _envs[0]


def _compile(source: str) -> _Program:
    """The program for ``source``, compiled once per process (raises ``CELParseError``)."""
    program = _programs.get(source)
    if program is None:
        env = _environment()
        ast = env.compile(source)
        roots, refs = _references(ast)
        program = _Program(source, env.program(ast), roots, refs)
        if len(_programs) >= _CACHE_LIMIT:
            _programs.pop(next(iter(_programs)))
        _programs[source] = program
    return program


def _references(ast: lark.Tree[Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The free root names of an expression, and the step ids it names as ``steps.<id>``."""
    bound: set[str] = set()
    names: set[str] = set()
    refs: set[str] = set()
    for tree in ast.iter_subtrees():
        if tree.data == "member_dot_arg" and str(tree.children[1]) in _MACROS:
            args = tree.children[2]
            if isinstance(args, lark.Tree) and args.children:
                first = args.children[0]
                if isinstance(first, lark.Tree):
                    bound.update(str(t.children[0]) for t in first.find_data("ident"))
        elif tree.data == "primary" and isinstance(tree.children[0], lark.Tree):
            ident = tree.children[0]
            if ident.data == "ident":
                names.add(str(ident.children[0]))
        elif tree.data == "member_dot" and _is_steps_root(tree.children[0]):
            refs.add(str(tree.children[1]))
    return frozenset(names - bound - _BUILTIN_IDENTS), frozenset(refs)


def _is_steps_root(node: lark.Tree[Any] | lark.Token) -> bool:
    if not isinstance(node, lark.Tree) or node.data != "member" or len(node.children) != 1:
        return False
    primary = node.children[0]
    if not isinstance(primary, lark.Tree) or primary.data != "primary":
        return False
    ident = primary.children[0]
    return isinstance(ident, lark.Tree) and ident.data == "ident" and ident.children[0] == "steps"


def check_expression(
    source: str, roots: Iterable[str], step_ids: Iterable[str] | None = None
) -> list[str]:
    """Problems with one bare expression: a syntax error, an unknown root, an unknown step.

    Args:
        source: CEL text.
        roots: the root names allowed where the expression appears.
        step_ids: when given, ``steps.<id>`` must name one of them.
    """
    try:
        program = _compile(source)
    except CELParseError as exc:
        where = f" at line {exc.line}, column {exc.column}" if exc.line is not None else ""
        return [f"expression {source!r} does not compile{where}: {exc.args[0].splitlines()[0]}"]
    allowed = set(roots)
    problems = [
        f"expression {source!r} uses {name!r}, not available here "
        f"(available: {', '.join(sorted(allowed))})"
        for name in sorted(program.roots - allowed)
    ]
    if step_ids is not None and "steps" in program.roots:
        known = set(step_ids)
        problems.extend(
            f"expression {source!r} names step {ref!r}, which does not exist"
            for ref in sorted(program.step_refs - known)
        )
    return problems


def split_template(text: str) -> list[str | tuple[str]]:
    """A template string in parts: literal text, and ``(source,)`` for each ``${...}``.

    Raises:
        ValueError: a ``${`` without its closing ``}``.
    """
    parts: list[str | tuple[str]] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append((text[i + 2 : end].strip(),))
            i = end + 1
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _closing_brace(text: str, i: int) -> int:
    depth, quote = 1, ""
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unterminated ${{...}} in {text!r}")


def template_sources(template: Any) -> Iterator[str]:
    """Every expression source in a template (raises ValueError on an unterminated one)."""
    if isinstance(template, str):
        if "${" in template:
            for part in split_template(template):
                if isinstance(part, tuple):
                    yield part[0]
    elif isinstance(template, Mapping):
        for value in template.values():
            yield from template_sources(value)
    elif isinstance(template, list | tuple):
        for value in template:
            yield from template_sources(value)


class Expressions:
    """The compiled expressions of one definition (see :func:`compile_all`).

    Activations map root names to plain Python values (dicts, lists, str, int, float, bool,
    None, ``datetime`` for timestamps, ``timedelta`` for durations). Only the roots an
    expression uses are converted to CEL, once per :meth:`render` call.
    """

    def __init__(self, sources: Iterable[str] = ()) -> None:
        self._programs = {source: _compile(source) for source in sources}

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

    def _program(self, source: str) -> _Program:
        program = self._programs.get(source)
        if program is None:
            try:
                program = self._programs[source] = _compile(source)
            except CELParseError as exc:
                raise ExpressionError(source, "does not compile") from exc
        return program

    def _evaluate(self, source: str, activation: Mapping[str, Any], memo: dict[str, Any]) -> Any:
        program = self._program(source)
        try:
            for root in program.roots:
                if root not in memo and root in activation:
                    memo[root] = json_to_cel(activation[root])
            result = program.runner.evaluate(memo)
        except CELEvalError as exc:
            raise ExpressionError(source, _eval_detail(exc)) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(source, f"{type(exc).__name__}: {exc}") from exc
        return to_python(result, source)

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
                else _as_text(self._evaluate(part[0], activation, memo))
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
    import msgspec

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


def to_python(value: Any, source: str = "") -> Any:
    """A CEL value as plain Python (raises ExpressionError for an error value)."""
    if value is None:
        return None
    if isinstance(value, CELEvalError):
        raise ExpressionError(source, _eval_detail(value))
    if isinstance(value, celtypes.BoolType | bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, celtypes.MapType | dict):
        return {to_python(k, source): to_python(v, source) for k, v in value.items()}
    if isinstance(value, celtypes.ListType | list):
        return [to_python(v, source) for v in value]
    if isinstance(value, dt.datetime):
        return dt.datetime.fromtimestamp(value.timestamp(), tz=value.tzinfo or dt.UTC)
    if isinstance(value, dt.timedelta):
        return dt.timedelta(seconds=value.total_seconds())
    if isinstance(value, bytes):
        return bytes(value)
    return str(value)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return json.dumps(value, default=str, ensure_ascii=False)


def _eval_detail(exc: CELEvalError) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split(" (in activation", 1)[0]
