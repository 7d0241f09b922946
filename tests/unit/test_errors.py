"""The error tree: stable wire codes and their round trip."""

from __future__ import annotations

import pytest

import fleetchat.errors as errors_module
from fleetchat.errors import (
    AgentNotFoundError,
    ConfigError,
    FleetchatError,
    ForbiddenError,
    InvalidIdError,
    InvalidInputError,
    NotFoundError,
    RequestTimeoutError,
    error_from_code,
)

#: The wire codes; clients depend on them, so changing one is a breaking change.
STABLE_CODES = {
    "FleetchatError": "internal",
    "InvalidInputError": "invalid_input",
    "InvalidIdError": "invalid_id",
    "MessageTooLargeError": "message_too_large",
    "ConfigError": "invalid_config",
    "InvalidDefinitionError": "invalid_definition",
    "NotFoundError": "not_found",
    "ChannelNotFoundError": "channel_not_found",
    "AgentNotFoundError": "agent_not_found",
    "ConflictError": "conflict",
    "ChannelExistsError": "channel_exists",
    "ForbiddenError": "forbidden",
    "BackpressureError": "backpressure",
    "DegradedError": "degraded",
    "RequestTimeoutError": "request_timeout",
    "ClosedError": "closed",
    "BackendError": "backend_error",
    "BackendUnavailableError": "backend_unavailable",
    "FencedError": "fenced",
    "DeadlockError": "deadlock",
    "LeaseTimeoutError": "lease_timeout",
    "TaskNotFoundError": "task_not_found",
    "TaskNotHeldError": "task_not_held",
    "UnsatisfiableError": "unsatisfiable",
    "UnauthenticatedError": "unauthenticated",
    "RateLimitedError": "rate_limited",
    "HubUnavailableError": "hub_unavailable",
}


def all_error_classes() -> list[type[FleetchatError]]:
    """FleetchatError and every subclass, however deep."""
    found: list[type[FleetchatError]] = []
    todo: list[type[FleetchatError]] = [FleetchatError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == errors_module.__name__:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


ERROR_CLASSES = all_error_classes()


def test_every_error_class_has_a_known_stable_code() -> None:
    assert {cls.__name__: cls.code for cls in ERROR_CLASSES} == STABLE_CODES


def test_error_codes_are_unique() -> None:
    codes = [cls.code for cls in ERROR_CLASSES]

    assert len(codes) == len(set(codes))


def test_every_error_class_is_exported() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} <= set(errors_module.__all__)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_from_code_rebuilds_the_class(cls: type[FleetchatError]) -> None:
    original = cls("went wrong", channel="ops", attempts=3)

    rebuilt = error_from_code(original.code, original.message, original.details)

    assert type(rebuilt) is cls
    assert (rebuilt.message, rebuilt.details) == ("went wrong", {"channel": "ops", "attempts": 3})


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_to_dict_round_trips_through_error_from_code(cls: type[FleetchatError]) -> None:
    wire = cls("went wrong", field="x").to_dict()

    assert error_from_code(**wire).to_dict() == wire


def test_error_from_an_unknown_code_is_a_plain_fleetchat_error() -> None:
    err = error_from_code("no_such_code", "what happened", {"x": 1})

    assert type(err) is FleetchatError
    assert (err.message, err.details) == ("what happened", {"x": 1})


def test_error_from_code_without_details_has_empty_details() -> None:
    assert error_from_code("closed", "bye").details == {}


def test_to_dict_has_code_message_and_details() -> None:
    err = AgentNotFoundError("no agent 'robot-9'", agent_id="robot-9")

    assert err.to_dict() == {
        "code": "agent_not_found",
        "message": "no agent 'robot-9'",
        "details": {"agent_id": "robot-9"},
    }


def test_error_text_is_the_message() -> None:
    assert str(ConfigError("bad file", path="x")) == "bad file"


def test_request_timeout_is_a_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        raise RequestTimeoutError("no reply within 5 s")


def test_invalid_input_is_a_value_error() -> None:
    assert issubclass(InvalidInputError, ValueError)


def test_invalid_id_is_invalid_input() -> None:
    assert issubclass(InvalidIdError, InvalidInputError)


def test_config_error_is_invalid_input() -> None:
    assert issubclass(ConfigError, InvalidInputError)


def test_not_found_is_a_lookup_error() -> None:
    assert issubclass(NotFoundError, LookupError)


def test_forbidden_is_a_permission_error() -> None:
    assert issubclass(ForbiddenError, PermissionError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_is_a_fleetchat_error(cls: type[FleetchatError]) -> None:
    assert issubclass(cls, FleetchatError)
