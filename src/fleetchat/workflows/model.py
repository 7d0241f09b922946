"""The parsed form of a ``fleetchat.workflow/v1`` definition: frozen msgspec structs.

Build them with :func:`fleetchat.workflows.parse_definition`, never by hand: the parser
validates the document, turns every duration into seconds, merges ``defaults`` into each
``agent_task`` and ``sub_workflow`` step (so ``step.timeout`` and ``step.retry`` are the
effective values), fills ``start`` and every flowing step's ``next`` and stamps
``content_hash``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import msgspec

__all__ = [
    "CATCHABLE_ERRORS",
    "ERROR_TYPES",
    "AgentTarget",
    "AgentTaskStep",
    "Case",
    "Catch",
    "ConditionStep",
    "Defaults",
    "Definition",
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
    "find_step",
    "iter_steps",
    "step_index",
]

#: The schema identifier of this format.
SCHEMA_ID = "fleetchat.workflow/v1"

#: Every error type a step can fail with. ``fleetchat.runtime`` (a fault of the engine) cannot
#: be caught; ``fleetchat.all`` in a catch matches every catchable type.
ERROR_TYPES: tuple[str, ...] = (
    "fleetchat.timeout",
    "fleetchat.heartbeat_timeout",
    "fleetchat.agent_unavailable",
    "fleetchat.agent_error",
    "fleetchat.agent_rejected",
    "fleetchat.validation",
    "fleetchat.expression",
    "fleetchat.branch_failed",
    "fleetchat.loop_limit",
    "fleetchat.cancelled",
    "fleetchat.failed",
    "fleetchat.runtime",
    "fleetchat.all",
)

#: The error types a ``catch`` may name.
CATCHABLE_ERRORS: frozenset[str] = frozenset(ERROR_TYPES) - {"fleetchat.runtime"}

#: ``next`` targets that are not step ids.
TERMINALS: frozenset[str] = frozenset({"end", "fail"})


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    """The four timeouts of a step, in seconds (None: no limit)."""

    schedule_to_start: float | None = None
    """From scheduling to an agent's claim."""
    start_to_close: float | None = None
    """From the claim to the result, for each attempt."""
    heartbeat: float | None = None
    """The longest allowed gap between progress reports."""
    schedule_to_close: float | None = None
    """The whole step, retries included."""


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """How a failed attempt is retried (Temporal's field names)."""

    max_attempts: int = 3
    """Attempts in all, the first included (1: no retry)."""
    initial_interval: float = 1.0
    """Seconds before the first retry."""
    backoff_coefficient: float = 2.0
    """Each retry waits this many times longer than the one before (>= 1)."""
    max_interval: float | None = None
    """The longest wait between attempts, in seconds (None: 100 x ``initial_interval``)."""
    non_retryable: list[str] = msgspec.field(default_factory=list)
    """Error types that fail the step at once, without retrying."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed, before the next."""
        cap = self.max_interval if self.max_interval is not None else 100 * self.initial_interval
        exponent = max(attempt, 1) - 1
        try:
            wait = self.initial_interval * self.backoff_coefficient**exponent
        except OverflowError:
            return cap
        return min(wait, cap)


class Defaults(msgspec.Struct, frozen=True, kw_only=True):
    """Timeout and retry merged into every ``agent_task`` and ``sub_workflow`` step."""

    timeout: Timeouts = msgspec.field(default_factory=Timeouts)
    retry: Retry = msgspec.field(default_factory=Retry)


class Catch(msgspec.Struct, frozen=True, kw_only=True):
    """Where a step's error goes once its retries are exhausted (first match wins)."""

    errors: list[str]
    """Error types that match (``fleetchat.all``: every catchable one)."""
    next: str
    """The step (in the same scope), ``end`` or ``fail`` to go to."""
    as_: str | None = msgspec.field(default=None, name="as")
    """Also store the error in ``vars.<as>`` (it is always in ``steps.<id>.error``)."""


class AgentTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Who runs an agent task: exactly one of ``capabilities`` and ``id``."""

    capabilities: dict[str, float] | None = None
    """Required capabilities and their weights; the best free agent takes the task."""
    id: str | None = None
    """A named agent (may be a ``${...}`` template)."""
    auction: bool = False
    """Auction the task among agents with the capabilities instead of picking the best."""


class Case(msgspec.Struct, frozen=True, kw_only=True):
    when: str
    """A CEL expression giving a bool."""
    next: str


class WaitMessage(msgspec.Struct, frozen=True, kw_only=True):
    channel: str
    """The channel to watch (may be a ``${...}`` template)."""
    when: str | None = None
    """A CEL expression over ``message`` that must hold (None: the first message)."""


class _Step(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    id: str
    next: str | None = None
    """``end``, ``fail`` or a step id in the same scope (None: the next step in the list)."""
    max_visits: int | None = None
    """Loop guard: entering the step more often fails it with ``fleetchat.loop_limit``."""


class AgentTaskStep(_Step, tag="agent_task", frozen=True, kw_only=True):
    agent: AgentTarget
    input: Any = None
    """The task's payload; strings may hold ``${...}`` expressions."""
    priority: Literal["critical", "high", "normal", "low"] = "normal"
    retry: Retry | None = None
    timeout: Timeouts | None = None
    catch: list[Catch] = msgspec.field(default_factory=list)


class ConditionStep(_Step, tag="condition", frozen=True, kw_only=True):
    cases: list[Case]
    default: str
    catch: list[Catch] = msgspec.field(default_factory=list)


class ParallelStep(_Step, tag="parallel", frozen=True, kw_only=True):
    branches: dict[str, list[Step]]
    join: Literal["all", "any"] | int = "all"
    """``all``, ``any`` or at least this many branches."""
    tolerated_failures: int | str = 0
    """Branch failures that still let the join succeed: a count or ``"N%"``."""
    fail_fast: bool = True
    """Cancel the other branches as soon as the join can no longer succeed."""
    catch: list[Catch] = msgspec.field(default_factory=list)


class WaitStep(_Step, tag="wait", frozen=True, kw_only=True):
    duration: float | None = None
    """Seconds to wait."""
    until: str | None = None
    """An RFC 3339 timestamp or a CEL expression giving one."""
    message: WaitMessage | None = None
    timeout: Timeouts | None = None
    """Only ``schedule_to_close`` applies: the longest wait (then ``fleetchat.timeout``)."""
    catch: list[Catch] = msgspec.field(default_factory=list)


class SetStep(_Step, tag="set", frozen=True, kw_only=True):
    values: dict[str, Any]
    """Rendered and stored into ``vars``."""
    catch: list[Catch] = msgspec.field(default_factory=list)


class FailStep(_Step, tag="fail", frozen=True, kw_only=True):
    error: str = "fleetchat.failed"
    message: str = ""


class SucceedStep(_Step, tag="succeed", frozen=True, kw_only=True):
    output: Any = None
    """The execution's output (rendered)."""
    catch: list[Catch] = msgspec.field(default_factory=list)


class MapStep(_Step, tag="map", frozen=True, kw_only=True):
    items: str
    """A CEL expression giving a list."""
    steps: list[Step]
    """The body, run once per item with the roots ``item`` and ``index``."""
    max_concurrency: int | None = None
    tolerated_failures: int | str = 0
    catch: list[Catch] = msgspec.field(default_factory=list)


class SubWorkflowStep(_Step, tag="sub_workflow", frozen=True, kw_only=True):
    workflow: str
    """``name@version`` or ``name@latest``."""
    input: Any = None
    retry: Retry | None = None
    timeout: Timeouts | None = None
    catch: list[Catch] = msgspec.field(default_factory=list)


Step = (
    AgentTaskStep
    | ConditionStep
    | ParallelStep
    | WaitStep
    | SetStep
    | FailStep
    | SucceedStep
    | MapStep
    | SubWorkflowStep
)


class Definition(msgspec.Struct, frozen=True, kw_only=True):
    """A validated workflow definition."""

    schema: str = SCHEMA_ID
    name: str
    version: str
    description: str = ""
    input_schema: dict[str, Any] | None = None
    defaults: Defaults = msgspec.field(default_factory=Defaults)
    execution_timeout: float | None = None
    """Seconds for the whole execution (None: no limit)."""
    start: str
    steps: list[Step]
    content_hash: str
    """sha256 (hex) of the canonical JSON of the submitted document."""


def iter_steps(definition: Definition) -> Iterator[tuple[tuple[str, ...], Step]]:
    """Every step at every depth, with its scope path, parents before their children.

    The scope path is ``("steps",)`` at the top, ``("steps", <parallel id>, <branch>)`` in a
    parallel branch and ``("steps", <map id>, "body")`` in a map body (longer when nested).
    """
    yield from _iter_scope(("steps",), definition.steps)


def _iter_scope(
    scope: tuple[str, ...], steps: list[Step]
) -> Iterator[tuple[tuple[str, ...], Step]]:
    for step in steps:
        yield scope, step
        if isinstance(step, ParallelStep):
            for branch, body in step.branches.items():
                yield from _iter_scope((*scope, step.id, branch), body)
        elif isinstance(step, MapStep):
            yield from _iter_scope((*scope, step.id, "body"), step.steps)


def find_step(definition: Definition, step_id: str) -> Step:
    """The step with this id, at any depth (ids are unique in a definition).

    Raises:
        KeyError: no step has this id.
    """
    for _, step in iter_steps(definition):
        if step.id == step_id:
            return step
    raise KeyError(step_id)


def step_index(definition: Definition) -> dict[str, Step]:
    """Every step by id, at every depth (build it once and keep it)."""
    return {step.id: step for _, step in iter_steps(definition)}
