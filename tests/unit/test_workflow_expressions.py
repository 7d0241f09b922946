"""CEL expressions in workflow definitions: typed results, templates, roots, run-time errors."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from fleetchat.workflows import ExpressionError, Expressions, compile_all, parse_definition
from fleetchat.workflows.expressions import check_expression, split_template

ACTIVATION: dict[str, Any] = {
    "input": {"order": "o-7", "qty": 3, "price": 2.5, "rush": True, "parts": ["a", "b"]},
    "steps": {"pick": {"output": {"bin": 7, "ok": True}, "error": None, "attempts": 1}},
    "vars": {"tries": 2, "none": None},
    "execution": {"id": "ex-1", "started_at": dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.UTC)},
}


@pytest.fixture
def x() -> Expressions:
    return Expressions()


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("input.qty", 3),
        ("input.price * 2.0", 5.0),
        ("input.order", "o-7"),
        ("input.rush", True),
        ("vars.none", None),
        ("input.parts", ["a", "b"]),
        ("steps.pick.output", {"bin": 7, "ok": True}),
        ("size(input.parts) + vars.tries", 4),
        ("input.parts.map(p, p + '!')", ["a!", "b!"]),
        ("input.qty > 2 ? 'big' : 'small'", "big"),
        ("has(input.rush)", True),
        ("'a' in input.parts", True),
    ],
)
def test_evaluate_returns_plain_python_values(x: Expressions, source: str, value: Any) -> None:
    result = x.evaluate(source, ACTIVATION)

    assert result == value
    assert type(result) is type(value)


def test_evaluate_turns_cel_containers_into_dicts_and_lists(x: Expressions) -> None:
    result = x.evaluate("{'a': [1, 2.5, true, null]}", ACTIVATION)

    assert result == {"a": [1, 2.5, True, None]}
    assert [type(v) for v in result["a"]] == [int, float, bool, type(None)]
    assert type(result) is dict


def test_evaluate_gives_timestamps_as_aware_datetimes(x: Expressions) -> None:
    result = x.evaluate("execution.started_at + duration('90s')", ACTIVATION)

    assert result == dt.datetime(2026, 5, 1, 8, 1, 30, tzinfo=dt.UTC)
    assert type(result) is dt.datetime


def test_evaluate_gives_durations_as_timedeltas_and_bytes_as_bytes(x: Expressions) -> None:
    assert x.evaluate("duration('90s')", ACTIVATION) == dt.timedelta(seconds=90)
    assert x.evaluate("b'ab'", ACTIVATION) == b"ab"


def test_the_package_names_what_it_does_not_have() -> None:
    import fleetchat.workflows as package

    with pytest.raises(AttributeError):
        _ = package.no_such_name


def test_a_single_expression_template_keeps_the_result_type(x: Expressions) -> None:
    assert x.render("${input.qty}", ACTIVATION) == 3
    assert x.render("${ input.parts }", ACTIVATION) == ["a", "b"]


def test_text_mixed_with_expressions_is_interpolated(x: Expressions) -> None:
    rendered = x.render("order ${input.order} x${input.qty} rush=${input.rush}", ACTIVATION)

    assert rendered == "order o-7 x3 rush=true"


def test_dicts_and_lists_are_rendered_recursively(x: Expressions) -> None:
    template = {
        "order": "${input.order}",
        "lines": [{"bin": "${steps.pick.output.bin}"}, "plain", 5],
        "when": "${execution.started_at}",
        "note": "at ${execution.started_at}",
    }

    assert x.render(template, ACTIVATION) == {
        "order": "o-7",
        "lines": [{"bin": 7}, "plain", 5],
        "when": dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.UTC),
        "note": "at 2026-05-01T08:00:00Z",
    }


def test_braces_inside_an_expression_do_not_end_it(x: Expressions) -> None:
    assert x.render("${ {'k': '}'}.k }", ACTIVATION) == "}"


def test_double_dollar_is_a_literal(x: Expressions) -> None:
    assert x.render("cost $${input.qty}", ACTIVATION) == "cost ${input.qty}"


def test_split_template_rejects_an_unterminated_expression() -> None:
    with pytest.raises(ValueError, match="unterminated"):
        split_template("a ${input.x")


def test_unknown_roots_are_rejected_at_compile_time() -> None:
    assert check_expression("inputs.x + vars.y", {"input", "vars"}) == [
        "expression 'inputs.x + vars.y' uses 'inputs', not available here (available: input, vars)"
    ]


def test_syntax_errors_are_rejected_at_compile_time() -> None:
    (problem,) = check_expression("input.x +", {"input"})

    assert "does not compile" in problem


def test_a_missing_field_at_run_time_is_an_expression_error(x: Expressions) -> None:
    with pytest.raises(ExpressionError) as caught:
        x.evaluate("input.nope", ACTIVATION)

    assert caught.value.type == "fleetchat.expression"
    assert caught.value.source == "input.nope"
    assert "nope" in caught.value.detail


@pytest.mark.parametrize("source", ["input.qty / 0", "input.qty + 'a'", "input.order.x", "root.x"])
def test_run_time_failures_are_expression_errors(x: Expressions, source: str) -> None:
    with pytest.raises(ExpressionError):
        x.evaluate(source, ACTIVATION)


def test_evaluating_text_that_does_not_compile_is_an_expression_error(x: Expressions) -> None:
    with pytest.raises(ExpressionError, match="does not compile"):
        x.evaluate("input.qty +", ACTIVATION)


def test_a_failing_expression_inside_a_template_is_an_expression_error(x: Expressions) -> None:
    with pytest.raises(ExpressionError, match=r"input\.nope"):
        x.render({"a": ["ok ${input.nope}"]}, ACTIVATION)


def test_until_takes_a_timestamp_or_an_expression(x: Expressions) -> None:
    at = dt.datetime(2026, 5, 1, 8, 5, tzinfo=dt.UTC)

    assert x.until("2026-05-01T08:05:00Z", ACTIVATION) == at
    assert x.until("execution.started_at + duration('5m')", ACTIVATION) == at
    assert x.until("'2026-05-01T08:05:00Z'", ACTIVATION) == at
    with pytest.raises(ExpressionError, match="not a timestamp"):
        x.until("input.qty", ACTIVATION)


def test_compile_all_compiles_every_expression_of_a_definition() -> None:
    definition = parse_definition(
        {
            "name": "two",
            "version": "1.0.0",
            "defaults": {"timeout": {"start_to_close": 60}},
            "steps": [
                {
                    "id": "a",
                    "type": "agent_task",
                    "agent": {"id": "r"},
                    "input": {"n": "${input.qty}", "s": "x ${input.order} y ${vars.tries}"},
                },
                {
                    "id": "c",
                    "type": "condition",
                    "cases": [{"when": "input.rush", "next": "end"}],
                    "default": "end",
                },
            ],
        }
    )

    compiled = compile_all(definition)

    assert len(compiled) == 4
    assert "input.rush" in compiled
    assert "vars.tries" in compiled


def test_an_evaluation_takes_well_under_a_millisecond(x: Expressions) -> None:
    source = "steps.pick.output.ok && input.qty > 2 && size(input.parts) == 2"
    x.evaluate(source, ACTIVATION)
    runs = 300

    started = time.perf_counter()
    for _ in range(runs):
        x.evaluate(source, ACTIVATION)
    per_call = (time.perf_counter() - started) / runs

    assert per_call < 0.002  # measured ~0.25 ms; 2 ms leaves room for slow CI machines
