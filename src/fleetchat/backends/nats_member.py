"""A member's delivery state on a NATS hub node: cursors over a log whose seqs have gaps.

On NATS a message's seq is its ``<P>_CHAT`` stream sequence, and the stream holds every
channel, so the seqs of one channel grow but skip. The embedded :class:`Cursor` moves its floor
one seq at a time; :class:`GapCursor` instead remembers the seqs it has taken, in order, so its
floor can move from one to the next however far apart they are. What it saves is the same
:class:`CursorRecord`: a floor (every seq of the channel up to it is settled) and the settled
seqs above it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from fleetchat.backends.local_member import Cursor, MemberState

if TYPE_CHECKING:
    import asyncio

__all__ = ["GapCursor", "NatsMemberState"]


class GapCursor(Cursor):
    """A cursor whose channel's seqs are increasing but not consecutive.

    ``taken`` holds, in order, the seqs above the floor that were taken from the log (queued,
    or settled on the spot); the floor moves up over the front of it as those are settled. When
    nothing taken is open, the floor is ``fetched``: everything read so far is settled.
    """

    __slots__ = ("taken",)

    def __init__(
        self, member: str, channel: str, floor: int, durable: bool, dirty_list: list[Cursor]
    ) -> None:
        super().__init__(member, channel, floor, durable, dirty_list)
        self.taken: deque[int] = deque()

    def take(self, seq: int, *, settled: bool) -> None:
        """``seq``, the channel's next message after ``fetched``, is read: it is queued for the
        member, or (``settled``) needs no delivery (the member's own message, or one settled
        before)."""
        self.fetched = seq
        if settled and not self.taken:
            self.floor = seq
            self.above.pop(seq, None)
            self.touch()
            return
        if settled:
            self.above[seq] = None
        self.taken.append(seq)

    def settle(self, seq: int) -> None:
        if seq <= self.floor or seq in self.above:
            return
        above, taken = self.above, self.taken
        above[seq] = None
        while taken and taken[0] in above:
            self.floor = taken.popleft()
            del above[self.floor]
        if not taken:
            self.floor = max(self.floor, self.fetched)
        self.touch()

    def skip_to(self, seq: int) -> None:
        """Nothing of the channel up to ``seq`` is left to read (none was stored, or the member
        said it processed it): move ``fetched`` there, and the floor too if nothing is open."""
        if seq <= self.fetched:
            return
        self.fetched = seq
        if not self.taken:
            self.floor = seq
            for s in [s for s in self.above if s <= seq]:
                del self.above[s]
            self.touch()


class NatsMemberState(MemberState):
    """A member connected to this node: its queue and cursors, and what ties it to NATS."""

    __slots__ = ("consumers", "paging", "ready", "released", "subs")

    def __init__(self, member_id: str, limit: int) -> None:
        super().__init__(member_id, limit)
        self.consumers: dict[int, None] = {}
        self.ready = False  # cursors loaded: deliveries may be handed out
        self.paging = False  # a page-in from the log is running
        self.released: asyncio.Future[None] | None = None  # set while letting go
        self.subs: list[Any] = []

    def gap_cursor(self, channel: str) -> GapCursor | None:
        cur = self.cursors.get(channel)
        return cur if isinstance(cur, GapCursor) else None
