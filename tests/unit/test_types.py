"""Shared vocabulary: identifiers, priorities, message ids."""

from __future__ import annotations

from typing import Any

import pytest

from fleetchat.errors import InvalidIdError, InvalidInputError
from fleetchat.types import (
    PRIORITY_RANK,
    Priority,
    check_agent_id,
    check_channel_name,
    new_id,
    parse_priority,
)

GOOD_IDS = ["a", "7", "robot-1", "R2.D2", "arm_3", "fleet:arm@site-3", "x" * 128]
BAD_IDS: list[Any] = [
    "",
    "-robot",
    "_robot",
    ".robot",
    "robot 1",
    "robot/1",
    "robot#1",
    "robot\n",
    "robot\t1",
    "rööt",
    "x" * 129,
    None,
    42,
    b"robot",
]

# -- agent ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", GOOD_IDS)
def test_check_agent_id_accepts_a_valid_id(value: str) -> None:
    assert check_agent_id(value) == value


@pytest.mark.parametrize("value", BAD_IDS)
def test_check_agent_id_rejects_an_invalid_id(value: Any) -> None:
    with pytest.raises(InvalidIdError) as info:
        check_agent_id(value)

    assert info.value.code == "invalid_id"


@pytest.mark.parametrize("value", ["$dlq", "@robot-1"])
def test_check_agent_id_rejects_a_channel_prefix(value: str) -> None:
    with pytest.raises(InvalidIdError):
        check_agent_id(value)


def test_check_agent_id_names_the_field() -> None:
    with pytest.raises(InvalidIdError) as info:
        check_agent_id("bad id", field="sender")

    assert info.value.details == {"field": "sender"}


# -- channel names ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [*GOOD_IDS, "$dlq", "@robot-1", "$" + "x" * 128])
def test_check_channel_name_accepts_a_valid_name(value: str) -> None:
    assert check_channel_name(value) == value


@pytest.mark.parametrize(
    "value", [*BAD_IDS, "$", "@", "$$dlq", "@@robot", "#ops", "$-x", "$" + "x" * 129, "ops$"]
)
def test_check_channel_name_rejects_an_invalid_name(value: Any) -> None:
    with pytest.raises(InvalidIdError) as info:
        check_channel_name(value)

    assert info.value.details == {"field": "channel"}


# -- priorities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("critical", Priority.CRITICAL),
        ("high", Priority.HIGH),
        ("normal", Priority.NORMAL),
        ("low", Priority.LOW),
        (Priority.HIGH, Priority.HIGH),
    ],
)
def test_parse_priority_accepts_a_level(value: object, expected: Priority) -> None:
    assert parse_priority(value) is expected


@pytest.mark.parametrize("value", ["urgent", "CRITICAL", " high", "", 0, None, 1.0])
def test_parse_priority_rejects_anything_else(value: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_priority(value)

    assert info.value.details == {"field": "priority"}


def test_priority_rank_serves_critical_first() -> None:
    assert sorted(Priority, key=lambda p: PRIORITY_RANK[p]) == [
        Priority.CRITICAL,
        Priority.HIGH,
        Priority.NORMAL,
        Priority.LOW,
    ]


# -- message ids ------------------------------------------------------------------------------


def test_new_ids_are_unique() -> None:
    ids = [new_id() for _ in range(10_000)]

    assert len(set(ids)) == len(ids)


def test_new_id_is_lowercase_hex_of_fixed_length() -> None:
    ids = {new_id() for _ in range(100)}

    assert {len(i) for i in ids} == {32}
    assert all(set(i) <= set("0123456789abcdef") for i in ids)


def test_new_id_starts_with_the_millisecond_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleetchat.types.time.time", lambda: 1_700_000_000.123)

    assert new_id()[:12] == f"{1_700_000_000_123:012x}"


def test_new_ids_sort_by_creation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("fleetchat.types.time.time", lambda: now[0])
    made = []
    for step in range(50):
        now[0] = (1_700_000_000_000 + 5 * step) / 1000  # 5 ms apart
        made.append(new_id())

    assert sorted(made) == made
