"""``${...}`` templates: finding the expressions in a template value."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["as_text", "split_template", "template_sources"]


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


def as_text(value: Any) -> str:
    """A value interpolated into text: strings as they are, timestamps in RFC 3339, the rest
    as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return json.dumps(value, default=str, ensure_ascii=False)
