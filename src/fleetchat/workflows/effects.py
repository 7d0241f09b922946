"""Effects: what the interpreter asks the engine to carry out once the record is saved.

Submitting or cancelling an agent task, starting or cancelling a child execution. The
interpreter lists them (:attr:`fleetchat.workflows.interpreter.Interpreter.effects`); the
engine carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CancelChild", "CancelTask", "Effect", "StartChild", "SubmitTask"]


@dataclass(frozen=True, slots=True)
class SubmitTask:
    key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CancelTask:
    key: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class StartChild:
    key: str
    workflow: str
    input: Any
    child_id: str


@dataclass(frozen=True, slots=True)
class CancelChild:
    child_id: str


Effect = SubmitTask | CancelTask | StartChild | CancelChild
