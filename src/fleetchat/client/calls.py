"""Frames waiting for the hub's answer, kept across reconnects and sent again on the next
connection (publishes keep their id, so the hub can drop a repeat)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fleetchat import protocol as p
from fleetchat.errors import FleetchatError, RequestTimeoutError, error_from_code

__all__ = ["Call", "CallFrame", "CallTable", "request_timeout"]

CallFrame = p.Publish | p.Request | p.Subscribe | p.Unsubscribe | p.TaskReport
Answer = p.Ok | p.Published | p.ReplyFrame | p.ErrorFrame


@dataclass(eq=False, slots=True)
class Call:
    """A frame waiting for its answer (``published``, ``ok``, ``reply`` or ``error``)."""

    frame: CallFrame
    future: asyncio.Future[Any]
    deadline: float | None = None
    """For requests: when the caller stops waiting (monotonic seconds)."""
    generation: int = 0
    """The connection it was last sent on (0: not sent yet)."""


def request_timeout(frame: p.Request) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"no reply to request {frame.id} to {frame.target!r} in time",
        request_id=frame.id,
        target=frame.target,
    )


class CallTable:
    """Calls by frame id, oldest first."""

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, frame: CallFrame, deadline: float | None = None) -> Call:
        call = Call(frame, asyncio.get_running_loop().create_future(), deadline)
        self._calls[frame.id] = call
        return call

    def discard(self, call: Call) -> None:
        if self._calls.get(call.frame.id) is call:
            del self._calls[call.frame.id]

    def prepare(self, call: Call, generation: int) -> bool:
        """Get ``call`` ready to go out on connection ``generation``: a request gets the time
        it has left. Returns False (and fails the call) when a request has no time left."""
        frame = call.frame
        if isinstance(frame, p.Request) and call.deadline is not None:
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                self.discard(call)
                if not call.future.done():
                    call.future.set_exception(request_timeout(frame))
                return False
            frame.timeout = round(remaining, 3)
        call.generation = generation
        return True

    def unsent(self, generation: int) -> list[Call]:
        """Calls not sent on connection ``generation`` yet, oldest first."""
        return [c for c in self._calls.values() if c.generation != generation]

    def publishes(self) -> list[asyncio.Future[Any]]:
        return [c.future for c in self._calls.values() if isinstance(c.frame, p.Publish)]

    def resolve(self, frame: Answer) -> bool:
        """Hand an answer to its call; False when nobody waits for that id."""
        call = self._calls.pop(frame.id, None) if frame.id is not None else None
        if call is None or call.future.done():
            return False
        if isinstance(frame, p.ErrorFrame):
            call.future.set_exception(error_from_code(frame.code, frame.message, frame.details))
        elif isinstance(frame, p.ReplyFrame):
            call.future.set_result(frame.replies)
        else:
            call.future.set_result(frame)
        return True

    def fail_all(self, exc: FleetchatError) -> None:
        calls = list(self._calls.values())
        self._calls.clear()
        for call in calls:
            if not call.future.done():
                call.future.set_exception(exc)
                call.future.exception()  # marked retrieved: its caller may have gone
