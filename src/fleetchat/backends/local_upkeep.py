"""Log work of the LocalBus: history tails, purge, cursor saves, retention, page-in, resume.

``Upkeep`` is a mixin of :class:`fleetchat.backends.local_bus.LocalBus`; it works on the bus's
channel and member state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fleetchat.config import ChatSettings, StorageSettings
from fleetchat.models import Message
from fleetchat.types import PRIORITY_RANK, Clock

if TYPE_CHECKING:
    from fleetchat.backends.local_bus import _ChannelState
    from fleetchat.backends.local_member import Cursor, MemberState
    from fleetchat.backends.ports import ChannelLog, DeliveryObserver

__all__ = ["Upkeep"]

log = logging.getLogger(__name__)

_READ_PAGE = 512


class Upkeep:
    """History, purge, cursor saves, retention and page-in for the LocalBus."""

    settings: ChatSettings
    storage: StorageSettings
    _clock: Clock
    _observer: DeliveryObserver
    _log: ChannelLog
    _channels: dict[str, _ChannelState]
    _members: dict[str, MemberState]
    _dirty: list[Cursor]

    if TYPE_CHECKING:

        def _state(self, name: str) -> _ChannelState: ...

    # -- history and maintenance ----------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        start_seq: int | None = None,
        end_seq: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        tail: bool = False,
    ) -> list[Message]:
        st = self._state(channel)
        log = st.log
        if not tail:
            return log.history(
                channel, start_seq=start_seq, end_seq=end_seq, since=since, until=until, limit=limit
            )
        if limit < 1:
            return []
        # The newest matches: walk back from the newest seq in windows that double in size, so
        # a tail of 100 reads about 100 messages however long the channel is, and a sparse
        # match (gaps, a time filter) still costs a few reads, not one per message.
        low = max(start_seq or 1, log.first_seq(channel))
        high = st.committed if end_seq is None else min(end_seq, st.committed)
        if since is not None and low <= high:
            # Nothing older than the oldest match can match: stop the walk there.
            first = log.history(
                channel, start_seq=low, end_seq=high, since=since, until=None, limit=1
            )
            if not first:
                return []
            low = first[0].seq
        windows: list[list[Message]] = []
        found, span = 0, limit
        while high >= low and found < limit:
            start = max(high - span + 1, low)
            window = log.history(
                channel,
                start_seq=start,
                end_seq=high,
                since=since,
                until=until,
                limit=high - start + 1,
            )
            windows.append(window)
            found += len(window)
            high, span = start - 1, span * 2
        out = [m for window in reversed(windows) for m in window]
        return out[-limit:] if len(out) > limit else out

    async def purge(self, channel: str) -> int:
        """Delete every message of ``channel`` (its seq numbers go on from where they were)."""
        st = self._state(channel)
        return await st.log.trim(channel, keep=0, older_than=None)

    def _flush_cursors(self) -> None:
        dirty, self._dirty[:] = list(self._dirty), []
        records = []
        for cur in dirty:
            cur.dirty = False
            member = self._members.get(cur.member)
            if member is None or member.cursors.get(cur.channel) is not cur:
                continue
            retries = {k: v for k, v in member.retries.items()} if member.retries else {}
            records.append(cur.record(retries))
        if records:
            self._log.save_cursors(records)

    async def sweep(self) -> None:
        """Apply every channel's retention (count and age) once."""
        now = self._clock.time()
        for st in list(self._channels.values()):
            spec = st.spec
            keep = spec.retention_count or (
                self.settings.ephemeral_retention_count
                if spec.ephemeral
                else self.settings.retention_count
            )
            age = spec.retention_age or self.settings.retention_age
            if st.committed - st.swept_seq <= keep and age is None:
                continue
            st.swept_seq = st.committed
            await st.log.trim(spec.name, keep=keep, older_than=None if age is None else now - age)

    async def _maintain(self) -> None:
        last_sweep = self._clock.monotonic()
        while True:
            await self._clock.sleep(self.storage.cursor_flush_interval)
            try:
                self._flush_cursors()
                if self._clock.monotonic() - last_sweep >= self.storage.maintenance_interval:
                    last_sweep = self._clock.monotonic()
                    await self.sweep()
            except Exception:
                log.exception("bus maintenance failed; will retry")

    # -- page-in and resume -----------------------------------------------------------------

    def settle_through(self, member_id: str, channel: str, seq: int) -> int:
        """The member says it processed everything of ``channel`` up to ``seq``: settle those
        (a client-held cursor, sent on reconnect). Returns how many were newly settled."""
        member = self._members.get(member_id)
        st = self._channels.get(channel)
        cur = member.cursors.get(channel) if member else None
        if member is None or st is None or cur is None or not cur.durable:
            return 0
        upto = min(seq, st.committed)
        settled = 0
        for s in range(cur.floor + 1, upto + 1):
            if not cur.is_settled(s):
                cur.settle(s)
                settled += 1
        if settled:
            for lane in member.lanes:
                keep = [m for m in lane if m.channel != channel or m.seq > upto]
                member.queued -= len(lane) - len(keep)
                lane.clear()
                lane.extend(keep)
            cur.fetched = max(cur.fetched, upto)
        return settled

    def _refill(self, member: MemberState) -> None:
        """Page a lagging member's backlog in from the logs, as far as its room allows."""
        for name in list(member.lagging):
            st = self._channels.get(name)
            cur = member.cursors.get(name)
            if st is None or cur is None:
                member.lagging.pop(name, None)
                continue
            while cur.fetched < st.committed:
                room = member.room
                if room <= 0:
                    return
                msgs = st.log.read(name, cur.fetched, min(room, _READ_PAGE))
                if not msgs:
                    self._skip(member, cur, st.committed)
                    break
                for m in msgs:
                    if m.seq > st.committed:
                        break
                    if m.seq > cur.fetched + 1:
                        self._skip(member, cur, m.seq - 1)
                    cur.fetched = m.seq
                    if cur.durable and cur.is_settled(m.seq):
                        continue
                    if m.sender == member.id:
                        if cur.durable:
                            cur.settle(m.seq)
                        continue
                    # No wake-up per message: the callers (poll, _after_room) deliver them.
                    member.lanes[PRIORITY_RANK[m.priority]].append(m)
                    member.queued += 1
            member.lagging.pop(name, None)

    def _skip(self, member: MemberState, cur: Cursor, upto: int) -> None:
        """Seqs up to ``upto`` are gone from the log (retention): count them and move on."""
        lost = sum(1 for s in range(cur.fetched + 1, upto + 1) if not cur.is_settled(s))
        for s in range(cur.fetched + 1, upto + 1):
            if cur.durable:
                cur.settle(s)
        cur.fetched = max(cur.fetched, upto)
        if lost:
            self._observer.on_dropped(member.id, cur.channel, lost)
