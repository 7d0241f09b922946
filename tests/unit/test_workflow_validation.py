"""Workflow definitions: the parser, every validation rule, defaults merged, the examples."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fleetchat.errors import InvalidDefinitionError, InvalidInputError
from fleetchat.workflows import (
    WORKFLOW_SCHEMA,
    AgentTarget,
    AgentTaskStep,
    Case,
    Catch,
    ConditionStep,
    FailStep,
    MapStep,
    ParallelStep,
    Retry,
    SetStep,
    SubWorkflowStep,
    SucceedStep,
    Timeouts,
    WaitMessage,
    WaitStep,
    find_step,
    iter_steps,
    parse_definition,
    step_index,
)
from fleetchat.workflows.durations import DurationError, parse_duration
from fleetchat.workflows.validate import load_document

EXAMPLES = Path(__file__).parents[2] / "examples" / "workflows"

EVERY_STEP_TYPE = """
schema: fleetchat.workflow/v1
name: every-step
version: 1.0.0
description: one of each
input_schema: {type: object, properties: {orders: {type: array}}}
execution_timeout: 1h
defaults:
  timeout: {start_to_close: 5m, heartbeat: 30s}
  retry: {max_attempts: 4, initial_interval: 2s, max_interval: 1m}
steps:
  - id: pick
    type: agent_task
    agent: {capabilities: {pick: 0.8}, auction: true}
    input: {order: "${input.orders[0]}", note: "order ${input.orders[0]}"}
    priority: high
    timeout: {schedule_to_start: 30s}
    retry: {max_attempts: 2, non_retryable: [fleetchat.agent_rejected]}
    catch: [{errors: [fleetchat.timeout], next: oops, as: pick_error}]
  - id: check
    type: condition
    max_visits: 3
    cases: [{when: "steps.pick.output.ok == true", next: both}]
    default: pick
  - id: both
    type: parallel
    join: 1
    tolerated_failures: 50%
    fail_fast: false
    branches:
      left: [{id: note, type: set, values: {seen: "${steps.pick.output}"}}]
      right: [{id: nap, type: wait, duration: 250ms}]
  - id: each
    type: map
    items: input.orders
    max_concurrency: 2
    tolerated_failures: 1
    steps: [{id: ship, type: agent_task, agent: {id: "robot-${index}"}, input: "${item}"}]
  - id: approval
    type: wait
    message: {channel: approvals, when: "message.body.ok"}
    timeout: 2h
  - id: child
    type: sub_workflow
    workflow: other@latest
    input: {n: "${size(input.orders)}"}
  - id: later
    type: wait
    until: 2030-01-01T00:00:00Z
  - id: done
    type: succeed
    output: "${vars.seen}"
  - id: oops
    type: fail
    error: fleetchat.agent_error
    message: "pick failed: ${error.message}"
"""


def minimal(**top: Any) -> dict[str, Any]:
    """A valid definition of one agent task, with top-level fields replaced."""
    doc: dict[str, Any] = {
        "schema": "fleetchat.workflow/v1",
        "name": "mini",
        "version": "1.0.0",
        "defaults": {"timeout": {"start_to_close": "1m"}},
        "steps": [{"id": "a", "type": "agent_task", "agent": {"id": "r1"}, "input": {}}],
    }
    doc.update(top)
    return doc


def with_steps(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return minimal(steps=list(steps), **top)


def task(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "agent_task", "agent": {"id": "r1"}, **fields}


def problems_of(document: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidDefinitionError) as caught:
        parse_definition(document)
    problems: list[dict[str, Any]] = caught.value.details["problems"]
    return problems


def the_problem(document: Any) -> dict[str, Any]:
    problems = problems_of(document)
    assert len(problems) == 1, problems
    return problems[0]


# --- a valid definition ------------------------------------------------------------------


def test_every_step_type_parses_from_yaml_with_defaults_merged() -> None:
    d = parse_definition(EVERY_STEP_TYPE)

    assert (d.name, d.version, d.start, d.execution_timeout) == (
        "every-step",
        "1.0.0",
        "pick",
        3600.0,
    )
    assert d.steps[0] == AgentTaskStep(
        id="pick",
        next="check",
        agent=AgentTarget(capabilities={"pick": 0.8}, auction=True),
        input={"order": "${input.orders[0]}", "note": "order ${input.orders[0]}"},
        priority="high",
        timeout=Timeouts(schedule_to_start=30.0, start_to_close=300.0, heartbeat=30.0),
        retry=Retry(
            max_attempts=2,
            initial_interval=2.0,
            max_interval=60.0,
            non_retryable=["fleetchat.agent_rejected"],
        ),
        catch=[Catch(errors=["fleetchat.timeout"], next="oops", as_="pick_error")],
    )
    assert d.steps[1] == ConditionStep(
        id="check",
        max_visits=3,
        cases=[Case(when="steps.pick.output.ok == true", next="both")],
        default="pick",
    )
    assert d.steps[2] == ParallelStep(
        id="both",
        next="each",
        join=1,
        tolerated_failures="50%",
        fail_fast=False,
        branches={
            "left": [SetStep(id="note", next="end", values={"seen": "${steps.pick.output}"})],
            "right": [WaitStep(id="nap", next="end", duration=0.25)],
        },
    )
    ship = d.steps[3].steps[0] if isinstance(d.steps[3], MapStep) else None
    assert isinstance(ship, AgentTaskStep)
    assert (ship.agent.id, ship.input, ship.next) == ("robot-${index}", "${item}", "end")
    assert ship.timeout == Timeouts(start_to_close=300.0, heartbeat=30.0)
    assert ship.retry == Retry(max_attempts=4, initial_interval=2.0, max_interval=60.0)
    assert d.steps[4] == WaitStep(
        id="approval",
        next="child",
        message=WaitMessage(channel="approvals", when="message.body.ok"),
        timeout=Timeouts(schedule_to_close=7200.0),
    )
    assert d.steps[5] == SubWorkflowStep(
        id="child",
        next="later",
        workflow="other@latest",
        input={"n": "${size(input.orders)}"},
        timeout=Timeouts(start_to_close=300.0, heartbeat=30.0),
        retry=Retry(max_attempts=4, initial_interval=2.0, max_interval=60.0),
    )
    assert d.steps[6] == WaitStep(id="later", next="done", until="2030-01-01T00:00:00Z")
    assert d.steps[7] == SucceedStep(id="done", output="${vars.seen}")
    assert d.steps[8] == FailStep(
        id="oops", error="fleetchat.agent_error", message="pick failed: ${error.message}"
    )


def test_the_same_definition_in_json_parses_to_the_same_structs() -> None:
    as_json = json.dumps(load_document(EVERY_STEP_TYPE))

    from_json = parse_definition(as_json, fmt="json")

    assert from_json.steps == parse_definition(EVERY_STEP_TYPE).steps


def test_content_hash_is_the_same_for_the_same_document_in_yaml_json_and_dict() -> None:
    doc = minimal()

    hashes = {
        parse_definition(doc).content_hash,
        parse_definition(json.dumps(doc), fmt="json").content_hash,
        parse_definition(yaml.safe_dump(doc)).content_hash,
    }

    assert len(hashes) == 1
    assert parse_definition(minimal(description="x")).content_hash not in hashes


def test_start_defaults_to_the_first_step_and_next_to_the_following_one() -> None:
    d = parse_definition(with_steps(task("a"), task("b")))

    assert (d.start, d.steps[0].next, d.steps[1].next) == ("a", "b", "end")


def test_a_step_without_retry_gets_the_default_retry() -> None:
    step = parse_definition(minimal()).steps[0]

    assert isinstance(step, AgentTaskStep)
    assert step.retry == Retry()


def test_iter_steps_gives_every_step_with_its_scope_path() -> None:
    d = parse_definition(EVERY_STEP_TYPE)

    scopes = {step.id: scope for scope, step in iter_steps(d)}

    assert scopes["pick"] == ("steps",)
    assert scopes["note"] == ("steps", "both", "left")
    assert scopes["ship"] == ("steps", "each", "body")
    assert len(scopes) == 12


def test_find_step_finds_nested_steps_and_raises_for_unknown_ids() -> None:
    d = parse_definition(EVERY_STEP_TYPE)

    assert find_step(d, "nap") == step_index(d)["nap"]
    with pytest.raises(KeyError):
        find_step(d, "nowhere")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_definitions_validate(path: Path) -> None:
    d = parse_definition(path.read_text())

    assert d.name == path.stem


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(WORKFLOW_SCHEMA)


# --- documents that do not load ------------------------------------------------------------


def test_invalid_yaml_is_one_problem_at_the_root() -> None:
    problem = the_problem("steps: [unclosed")

    assert (problem["path"], problem["step"]) == ("", None)
    assert problem["message"].startswith("not valid YAML")


def test_text_that_is_not_json_with_fmt_json_is_a_problem() -> None:
    with pytest.raises(InvalidDefinitionError, match="not valid JSON"):
        parse_definition(b"name: x", fmt="json")


def test_a_document_that_is_not_a_mapping_is_a_problem() -> None:
    assert the_problem("[1, 2]")["message"] == "a definition is a mapping (object) at the top"


def test_invalid_definition_error_is_invalid_input_and_keeps_problems_on_the_wire() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_definition(minimal(name="Bad"))

    wire = caught.value.to_dict()
    assert wire["code"] == "invalid_definition"
    assert wire["details"]["problems"] == [
        {
            "path": "/name",
            "step": None,
            "message": "'Bad': must be lowercase letters, digits and -, starting with a letter "
            "or digit",
        }
    ]


# --- one rule at a time --------------------------------------------------------------------

SCHEMA_CASES = [
    ("bad name", minimal(name="Not_OK"), "/name", None, "lowercase"),
    ("version not semver", minimal(version="1.2"), "/version", None, "semantic version"),
    ("unknown top field", minimal(colour="red"), "", None, "'colour' was unexpected"),
    ("wrong schema", minimal(schema="hub.workflow/v1"), "/schema", None, "fleetchat.workflow/v1"),
    ("no steps", minimal(steps=[]), "/steps", None, "should be non-empty"),
    (
        "unknown step type",
        with_steps({"id": "a", "type": "teleport"}),
        "/steps/0/type",
        "a",
        "is not one of",
    ),
    ("reserved id", with_steps(task("end")), "/steps/0/id", "end", "'end' is reserved"),
    ("bad id", with_steps(task("pick-up")), "/steps/0/id", "pick-up", "usable as steps.<id>"),
    (
        "field of another step type",
        with_steps(task("a", duration="5s")),
        "/steps/0",
        "a",
        "'duration' was unexpected",
    ),
    (
        "max_attempts below 1",
        with_steps(task("a", retry={"max_attempts": 0})),
        "/steps/0/retry/max_attempts",
        "a",
        "less than the minimum of 1",
    ),
    (
        "backoff below 1",
        with_steps(task("a", retry={"backoff_coefficient": 0.5})),
        "/steps/0/retry/backoff_coefficient",
        "a",
        "less than the minimum of 1",
    ),
    (
        "bad sub-workflow reference",
        with_steps({"id": "s", "type": "sub_workflow", "workflow": "other"}),
        "/steps/0/workflow",
        "s",
        "name@version",
    ),
    (
        "bad tolerated failures",
        with_steps(
            {
                "id": "m",
                "type": "map",
                "items": "input.x",
                "steps": [task("t")],
                "tolerated_failures": "lots",
            }
        ),
        "/steps/0/tolerated_failures",
        "m",
        "is not valid under any",
    ),
]

RULE_CASES = [
    (
        "duplicate id",
        with_steps(task("a"), task("a")),
        "/steps/1/id",
        "a",
        "duplicate step id 'a' (also at /steps/0)",
    ),
    (
        "duplicate id across scopes",
        with_steps(
            {"id": "p", "type": "parallel", "branches": {"x": [task("a")]}},
            task("a"),
        ),
        "/steps/1/id",
        "a",
        "duplicate step id 'a' (also at /steps/0/branches/x/0)",
    ),
    ("start unknown", minimal(start="zz"), "/start", None, "start 'zz' is not a top-level step"),
    (
        "next unknown",
        with_steps(task("a", next="zz")),
        "/steps/0/next",
        "a",
        "'zz' is not a step of the top-level steps",
    ),
    (
        "case next unknown",
        with_steps(
            {
                "id": "c",
                "type": "condition",
                "cases": [{"when": "true", "next": "zz"}],
                "default": "end",
            }
        ),
        "/steps/0/cases/0/next",
        "c",
        "'zz' is not a step",
    ),
    (
        "default unknown",
        with_steps(
            {
                "id": "c",
                "type": "condition",
                "cases": [{"when": "true", "next": "end"}],
                "default": "zz",
            }
        ),
        "/steps/0/default",
        "c",
        "'zz' is not a step",
    ),
    (
        "catch next unknown",
        with_steps(task("a", catch=[{"errors": ["fleetchat.all"], "next": "zz"}])),
        "/steps/0/catch/0/next",
        "a",
        "'zz' is not a step",
    ),
    (
        "next into another scope",
        with_steps(
            {"id": "p", "type": "parallel", "branches": {"x": [task("b", next="a")]}}, task("a")
        ),
        "/steps/0/branches/x/0/next",
        "b",
        "'a' is not a step of scope /steps/0/branches/x",
    ),
    (
        "unreachable step",
        with_steps(task("a", next="end"), task("b")),
        "/steps/1",
        "b",
        "step 'b' is unreachable from 'a'",
    ),
    (
        "unguarded cycle",
        with_steps(task("a"), task("b", next="a")),
        "/steps/0",
        "a",
        "steps a, b form a cycle with no max_visits",
    ),
    (
        "unguarded self loop",
        with_steps(task("a", next="a")),
        "/steps/0",
        "a",
        "steps a form a cycle",
    ),
    (
        "expression does not compile",
        with_steps(
            {
                "id": "c",
                "type": "condition",
                "cases": [{"when": "input.x >", "next": "end"}],
                "default": "end",
            }
        ),
        "/steps/0/cases/0/when",
        "c",
        "does not compile",
    ),
    (
        "unknown root",
        with_steps(task("a", input={"x": "${inputs.x}"})),
        "/steps/0/input",
        "a",
        "uses 'inputs', not available here",
    ),
    (
        "unknown step in steps.<id>",
        with_steps(task("a", input="${steps.nobody.output}")),
        "/steps/0/input",
        "a",
        "names step 'nobody', which does not exist",
    ),
    (
        "message root outside wait.message",
        with_steps(task("a", input="${message.body}")),
        "/steps/0/input",
        "a",
        "uses 'message'",
    ),
    (
        "item root outside a map",
        with_steps(task("a", input="${item}")),
        "/steps/0/input",
        "a",
        "uses 'item'",
    ),
    (
        "error root in a step no catch leads to",
        with_steps(task("a", input="${error.type}")),
        "/steps/0/input",
        "a",
        "uses 'error'",
    ),
    (
        "unterminated template",
        with_steps(task("a", input="${input.x")),
        "/steps/0/input",
        "a",
        "unterminated ${...}",
    ),
    (
        "bad duration",
        with_steps({"id": "w", "type": "wait", "duration": "5 parsecs"}),
        "/steps/0/duration",
        "w",
        "not a duration: '5 parsecs'",
    ),
    (
        "bad timeout duration",
        with_steps(task("a", timeout={"heartbeat": "soon"})),
        "/steps/0/timeout/heartbeat",
        "a",
        "not a duration: 'soon'",
    ),
    (
        "bad execution timeout",
        minimal(execution_timeout="-5s"),
        "/execution_timeout",
        None,
        "not a duration",
    ),
    (
        "max interval below initial",
        with_steps(task("a", retry={"initial_interval": "10s", "max_interval": "1s"})),
        "/steps/0/retry",
        "a",
        "max_interval (1 s) is below initial_interval (10 s)",
    ),
    (
        "max interval below the default initial",
        minimal(defaults={"timeout": {"start_to_close": 5}, "retry": {"max_interval": 0.5}}),
        "/defaults/retry",
        None,
        "max_interval (0.5 s) is below initial_interval (1 s)",
    ),
    (
        "agent task without a timeout",
        minimal(defaults={"timeout": {"heartbeat": "10s"}}),
        "/steps/0",
        "a",
        "an agent_task needs timeout.start_to_close or timeout.schedule_to_close",
    ),
    (
        "wait with two conditions",
        with_steps({"id": "w", "type": "wait", "duration": 5, "until": "2030-01-01T00:00:00Z"}),
        "/steps/0",
        "w",
        "exactly one of duration, until, message (found: duration, until)",
    ),
    (
        "wait with none",
        with_steps({"id": "w", "type": "wait"}),
        "/steps/0",
        "w",
        "(found: none)",
    ),
    (
        "wait timeout other than schedule_to_close",
        with_steps({"id": "w", "type": "wait", "duration": 5, "timeout": {"heartbeat": 1}}),
        "/steps/0/timeout",
        "w",
        "a wait takes only schedule_to_close",
    ),
    (
        "runtime caught",
        with_steps(task("a", catch=[{"errors": ["fleetchat.runtime"], "next": "end"}])),
        "/steps/0/catch/0/errors/0",
        "a",
        "'fleetchat.runtime' cannot be caught",
    ),
    (
        "unknown error type caught",
        with_steps(task("a", catch=[{"errors": ["oops"], "next": "end"}])),
        "/steps/0/catch/0/errors/0",
        "a",
        "'oops' is not an error type",
    ),
    (
        "join above branches",
        with_steps({"id": "p", "type": "parallel", "join": 3, "branches": {"x": [task("b")]}}),
        "/steps/0/join",
        "p",
        "join 3 is more than the 1 branches",
    ),
    (
        "agent with both capabilities and id",
        with_steps(
            {"id": "a", "type": "agent_task", "agent": {"id": "r", "capabilities": {"x": 1}}}
        ),
        "/steps/0/agent",
        "a",
        "exactly one of capabilities, id",
    ),
    (
        "auction by id",
        with_steps({"id": "a", "type": "agent_task", "agent": {"id": "r", "auction": True}}),
        "/steps/0/agent",
        "a",
        "an auction needs capabilities",
    ),
    (
        "tolerated over 100 percent",
        with_steps(
            {
                "id": "p",
                "type": "parallel",
                "tolerated_failures": "150%",
                "branches": {"x": [task("b")]},
            }
        ),
        "/steps/0/tolerated_failures",
        "p",
        "over 100%",
    ),
]


@pytest.mark.parametrize(
    ("document", "path", "step", "message"),
    [case[1:] for case in SCHEMA_CASES + RULE_CASES],
    ids=[case[0] for case in SCHEMA_CASES + RULE_CASES],
)
def test_each_rule_reports_its_problem_with_path_and_step(
    document: dict[str, Any], path: str, step: str | None, message: str
) -> None:
    problem = the_problem(copy.deepcopy(document))

    assert (problem["path"], problem["step"]) == (path, step)
    assert message in problem["message"]


def test_a_cycle_through_a_step_with_max_visits_is_allowed() -> None:
    d = parse_definition(with_steps(task("a", max_visits=3), task("b", next="a")))

    assert d.steps[1].next == "a"


def test_context_roots_are_allowed_where_they_exist() -> None:
    parse_definition(
        with_steps(
            task("a", catch=[{"errors": ["fleetchat.all"], "next": "b"}]),
            task("b", input="${error.type}", next="m"),
            {
                "id": "m",
                "type": "map",
                "items": "input.xs",
                "steps": [task("t", input={"i": "${index}", "v": "${item.name}"})],
            },
            {"id": "w", "type": "wait", "message": {"channel": "c", "when": "message.body.x == 1"}},
        )
    )


def test_macro_variables_are_not_taken_for_roots() -> None:
    parse_definition(with_steps(task("a", input="${input.xs.filter(x, x > 1).map(y, y * 2)}")))


def test_a_definition_breaking_several_rules_gets_every_problem_at_once() -> None:
    document = {
        "name": "Bad_Name",
        "version": "1",
        "steps": [
            task("a", next="zz", input="${nope.x}"),
            task("a", timeout={"start_to_close": "forever"}),
            {"id": "w", "type": "wait", "duration": 5, "until": "input.at"},
            {
                "id": "c",
                "type": "condition",
                "cases": [{"when": "input.x ==", "next": "c"}],
                "default": "c",
            },
            {"id": "x", "type": "teleport"},
        ],
    }

    found = {(p["path"], p["step"]) for p in problems_of(document)}

    assert found >= {
        ("/name", None),
        ("/version", None),
        ("/steps/4/type", "x"),
        ("/steps/1/id", "a"),
        ("/steps/0/next", "a"),
        ("/steps/0/input", "a"),
        ("/steps/0", "a"),
        ("/steps/1/timeout/start_to_close", "a"),
        ("/steps/2", "w"),
        ("/steps/3/cases/0/when", "c"),
        ("/steps/3", "c"),
    }


# --- durations and retry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        ("PT5M", 300.0),
        ("P1DT2H", 93600.0),
        ("PT0.5S", 0.5),
        ("12", 12.0),
        (7, 7.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration_reads_every_form(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("junk", ["", "5 min", "P", "PT", "-1s", "1h-5m", -3, True, "nan", None])
def test_parse_duration_rejects_junk(junk: Any) -> None:
    with pytest.raises(DurationError):
        parse_duration(junk)


def test_retry_delay_grows_by_the_coefficient_up_to_max_interval() -> None:
    retry = Retry(initial_interval=1.0, backoff_coefficient=2.0, max_interval=5.0)

    assert [retry.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_retry_delay_is_capped_at_100_times_initial_without_max_interval() -> None:
    assert Retry(initial_interval=0.5, backoff_coefficient=10.0).delay(50) == 50.0


def test_retry_delay_does_not_overflow_for_huge_attempt_numbers() -> None:
    assert (
        Retry(initial_interval=1.0, backoff_coefficient=10.0, max_interval=30.0).delay(10_000)
        == 30.0
    )


def test_a_document_that_is_not_utf8_is_an_invalid_definition() -> None:
    with pytest.raises(InvalidDefinitionError) as info:
        load_document(b"name: \xc1\xc1", fmt="yaml")
    assert "not UTF-8 text" in info.value.details["problems"][0]["message"]
