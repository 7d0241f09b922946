"""KV key escaping: any name becomes a valid NATS KV key, one-to-one and reversibly."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetchat.backends.nats_kv import kv_key, kv_name
from fleetchat.errors import InvalidInputError

VALID_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+\Z")  # nats-py's rule (and no leading/trailing dot)


@pytest.mark.parametrize(
    ("name", "key"),
    [("arm-1", "arm-1"), ("arm:1", "arm=3A1"), ("a.b", "a=2Eb"), ("a=b", "a=3Db"), ("é", "=C3=A9")],
)
def test_names_are_escaped_readably(name: str, key: str) -> None:
    assert kv_key(name) == key
    assert kv_name(key) == name


@given(st.text(min_size=1))
def test_any_name_is_a_valid_key_and_comes_back(name: str) -> None:
    key = kv_key(name)
    assert VALID_KEY.match(key)
    assert "." not in key
    assert kv_name(key) == name


@given(st.text(min_size=1), st.text(min_size=1))
def test_different_names_get_different_keys(a: str, b: str) -> None:
    assert (kv_key(a) == kv_key(b)) == (a == b)


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        kv_key("")
