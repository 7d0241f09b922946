"""Delivery bookkeeping on the agent side: dedupe by message id and coalesced acks."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from fleetchat import protocol as p
from fleetchat.models import Message

__all__ = ["AckTracker", "DedupeCache", "Item", "Nack", "Outcome"]


class Nack(Exception):
    """Raise from a message handler to nack the delivery with options.

    Any other exception nacks with the hub's default backoff; ``raise Nack(delay=2.0)`` asks for
    the retry in two seconds, ``raise Nack(dead_letter=True)`` sends the message straight to the
    dead letters.
    """

    def __init__(self, *, delay: float | None = None, dead_letter: bool = False) -> None:
        super().__init__("nack" if not dead_letter else "nack to the dead letters")
        self.delay = delay
        self.dead_letter = dead_letter


@dataclass(slots=True, eq=False)
class Item:
    """One message on its way through the agent, with every delivery of it still to settle.

    ``waiters`` holds (connection generation, tag) pairs: a message redelivered while its
    handler still runs is not handled twice; each delivery is settled when the handler ends.
    """

    message: Message
    attempt: int
    waiters: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a delivery ends: ``ack``, ``nack`` (with options) or ``reply`` (with a body)."""

    kind: str
    body: object = None
    delay: float | None = None
    dead_letter: bool = False
    headers: dict[str, str] | None = None
    """A reply's headers (its trace context)."""


ACK = Outcome("ack")


class DedupeCache:
    """Ids of messages handled successfully, most recent last, bounded (LRU)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        if message_id in self._ids:
            self._ids.move_to_end(message_id)  # type: ignore[arg-type]
            return True
        return False

    def add(self, message_id: str) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class AckTracker:
    """Turns the tags one connection has finished with into ``ack`` frames.

    Tags are consecutive per connection, so everything up to the first unfinished tag goes out
    as one cumulative ``upto``. Tags finished beyond it are also sent one by one (``tags``), so
    one slow handler does not hold the whole window; deliveries that must not be acked by tag
    (requests, nacked ones) only move the cumulative point.
    """

    def __init__(self) -> None:
        self.frontier = 0
        """Every tag up to here is finished."""
        self._sent_upto = 0
        self._done: set[int] = set()
        self._loose: list[int] = []

    def complete(self, tag: int, *, by_tag: bool = True) -> None:
        """Tag ``tag`` is finished; ``by_tag`` lets it be acked on its own."""
        if tag <= self.frontier or tag in self._done:
            return
        self._done.add(tag)
        if by_tag:
            self._loose.append(tag)

    def take(self) -> p.Ack | None:
        """The ack frame for what finished since the last call, or None."""
        done = self._done
        while self.frontier + 1 in done:
            self.frontier += 1
            done.discard(self.frontier)
        upto = self.frontier if self.frontier > self._sent_upto else None
        tags = sorted(t for t in self._loose if t > self.frontier)
        self._loose = []
        if upto is None and not tags:
            return None
        if upto is not None:
            self._sent_upto = upto
        return p.Ack(upto=upto, tags=tags)

    @property
    def idle(self) -> bool:
        """Nothing finished is waiting to be sent."""
        return not self._loose and self.frontier + 1 not in self._done
