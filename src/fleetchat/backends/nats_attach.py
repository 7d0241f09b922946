"""Members connected to a NATS hub node: taking them over, their cursors, letting them go.

``NatsAttach`` is a mixin of :class:`fleetchat.backends.nats_bus.NatsBus`.

- **One node per member.** A node that gets a member's first consumer asks on ``<p>.own.<m>``
  whether another node has it; that node saves the member's cursors and lets go (its consumers
  there are closed) before this one loads them.
- **Cursors.** What a member settled is saved to the KV bucket ``<p>_cursors``, one entry per
  member holding a :class:`CursorRecord` per channel, every ``flush_interval`` and when the
  member leaves the node. A node that takes a member over redelivers whatever was not saved as
  settled: at least once, never lost. A new membership starts from the stream seq recorded
  with it (``<p>_members``), so it gets only what comes after it joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.local_member import Cursor, MemberState
from fleetchat.backends.nats_layout import Layout, key_token
from fleetchat.backends.nats_member import GapCursor, NatsMemberState
from fleetchat.backends.ports import CursorRecord
from fleetchat.config import ChatSettings
from fleetchat.errors import ClosedError
from fleetchat.models import Channel, Message
from fleetchat.types import PRIORITY_RANK

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

__all__ = ["NatsAttach"]

log = logging.getLogger(__name__)

_decode_message = msgspec.json.Decoder(Message).decode
_encode = msgspec.json.Encoder().encode
_decode_records = msgspec.json.Decoder(list[CursorRecord]).decode
_CLAIM_TIMEOUT = 1.0  # how long a node taking a member over waits for the one that had it


class NatsAttach:
    """Members connected here: take-over, cursors and their saves, letting go."""

    settings: ChatSettings
    layout: Layout
    node_id: str
    flush_interval: float
    _closed: bool
    _channels: dict[str, Channel]
    _memberships: dict[str, set[str]]
    _members: dict[str, MemberState]
    _dirty: list[Cursor]
    _kv_cursors: KeyValue | None
    _resume: dict[str, dict[str, int]]
    _join_floors: dict[tuple[str, str], int]  # (channel, member) -> the seq it joined after
    _moved: dict[str, dict[int, None]]
    _feed_pos: int
    _local: dict[str, list[tuple[NatsMemberState, GapCursor]]]

    if TYPE_CHECKING:

        @property
        def nc(self) -> NatsClient: ...

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        def _last_seen(self, channel: str) -> int: ...

        def _refill(self, member: MemberState) -> None: ...

    def _member(self, member_id: str) -> NatsMemberState:
        if self._closed:
            raise ClosedError("the hub is closed")
        member = self._members.get(member_id)
        if isinstance(member, NatsMemberState):
            return member
        fresh = NatsMemberState(member_id, self.settings.member_queue_limit)
        self._members[member_id] = fresh
        self._spawn(self._attach(fresh))
        return fresh

    async def _attach(self, member: NatsMemberState) -> None:
        """Take ``member`` over from the node that had it, load its cursors, start delivering."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        nc = self.nc
        try:
            with contextlib.suppress(NoRespondersError, NatsTimeout):
                await nc.request(
                    self.layout.owner(member.id), self.node_id.encode(), timeout=_CLAIM_TIMEOUT
                )
            if self._members.get(member.id) is not member:
                return  # let go of meanwhile
            member.subs = [
                await nc.subscribe(
                    self.layout.transient(member.id),
                    cb=partial(self._on_transient, member),
                ),
                await nc.subscribe(
                    self.layout.owner(member.id), cb=partial(self._on_claim, member)
                ),
            ]
            records = await self._load_records(member.id)
        except Exception:
            log.exception("attaching a member failed", extra={"member": member.id})
            await self._forget(member)
            return
        if self._members.get(member.id) is not member:
            await self._unsubscribe(member)
            return
        marks = self._resume.pop(member.id, {})
        for channel in list(self._memberships.get(member.id, ())):
            self._add_cursor(member, channel, records.get(channel), marks.get(channel, 0))
        member.ready = True
        self._refill(member)
        if member.listeners:
            member.wake()

    async def _load_records(self, member_id: str) -> dict[str, CursorRecord]:
        assert self._kv_cursors is not None
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._kv_cursors.get(key_token(member_id))
        except KeyNotFoundError:
            return {}
        if entry.value is None:
            return {}
        return {r.channel: r for r in _decode_records(entry.value)}

    def _add_cursor(
        self,
        member: NatsMemberState,
        channel: str,
        record: CursorRecord | None,
        settled_through: int = 0,
    ) -> None:
        spec = self._channels.get(channel)
        if spec is None or channel in member.cursors:
            return
        durable = not spec.ephemeral
        floor = self._join_floors.get((channel, member.id), 0)
        cur = GapCursor(member.id, channel, floor, durable, self._dirty)
        if record is not None and durable and record.floor >= floor:
            cur.floor = cur.fetched = record.floor
            cur.above.update(dict.fromkeys(s for s in record.above if s > record.floor))
            member.retries.update(record.retries)
        if not durable:
            cur.fetched = cur.floor = self._feed_pos
        if settled_through:
            cur.skip_to(min(settled_through, self._feed_pos))
        member.cursors[channel] = cur
        self._local.setdefault(channel, []).append((member, cur))
        if durable and cur.fetched < self._last_seen(channel):
            member.lagging[channel] = None

    def _drop_cursor(self, member: NatsMemberState, channel: str) -> None:
        cur = member.cursors.pop(channel, None)
        member.lagging.pop(channel, None)
        member.purge(channel)
        local = self._local.get(channel)
        if local is not None and isinstance(cur, GapCursor):
            with contextlib.suppress(ValueError):
                local.remove((member, cur))
            if not local:
                del self._local[channel]

    def _membership_changed(self, channel: str, member_id: str, joined: bool) -> None:
        """A membership came or went (from the KV watch or this node)."""
        member = self._members.get(member_id)
        if not isinstance(member, NatsMemberState) or not member.ready:
            return
        if joined:
            self._add_cursor(member, channel, None)
            self._refill(member)
        else:
            self._drop_cursor(member, channel)

    # -- letting go ---------------------------------------------------------------------------

    async def _on_transient(self, member: NatsMemberState, msg: Msg) -> None:
        m = _decode_message(msg.data)
        member.push(PRIORITY_RANK[m.priority], m)

    async def _on_claim(self, member: NatsMemberState, msg: Msg) -> None:
        """``member`` is taken over (by another node, or by a new attach here after this one
        let go): save its cursors, let go, then say so. Its consumers here are closed."""
        if msg.data.decode() != self.node_id and member.consumers:
            self._moved.setdefault(member.id, {}).update(member.consumers)
        await self._release(member)
        with contextlib.suppress(Exception):
            await msg.respond(b"released")

    async def _release(self, member: NatsMemberState) -> None:
        """Stop serving ``member`` here: what it left open goes back to the log (its cursors
        keep it unsettled) and the cursors are saved for the node that serves it next."""
        if member.released is not None:
            await member.released
            return
        member.released = asyncio.get_running_loop().create_future()
        try:
            if self._members.get(member.id) is member:
                del self._members[member.id]
            member.ready = False
            for batch in list(member.batches):
                if batch.timer is not None:
                    batch.timer.cancel()
            member.batches.clear()
            for channel, cur in member.cursors.items():
                local = self._local.get(channel)
                if local is not None and isinstance(cur, GapCursor):
                    with contextlib.suppress(ValueError):
                        local.remove((member, cur))
                    if not local:
                        del self._local[channel]
            listeners = list(member.listeners.values())
            member.listeners.clear()
            for listener in listeners:
                listener()  # waiting fetches wake and find themselves detached
            await self._save(member)
            await self._unsubscribe(member)
            member.cursors.clear()
            member.lagging.clear()
        finally:
            member.released.set_result(None)

    async def _forget(self, member: NatsMemberState) -> None:
        if self._members.get(member.id) is member:
            del self._members[member.id]
        await self._unsubscribe(member)

    async def _unsubscribe(self, member: NatsMemberState) -> None:
        subs, member.subs = member.subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone; nothing to undo
                log.debug("unsubscribe failed", exc_info=True)

    # -- saving cursors -----------------------------------------------------------------------

    async def _save(self, member: MemberState) -> None:
        """Save every durable cursor of ``member`` (one KV entry)."""
        assert self._kv_cursors is not None
        retries = dict(member.retries)
        records = [cur.record(retries) for cur in member.cursors.values() if cur.durable]
        await self._kv_cursors.put(key_token(member.id), _encode(records))

    async def _flush_cursors(self) -> None:
        dirty, self._dirty[:] = list(self._dirty), []
        members: dict[str, MemberState] = {}
        for cur in dirty:
            cur.dirty = False
            member = self._members.get(cur.member)
            if member is not None and member.cursors.get(cur.channel) is cur:
                members[member.id] = member
        if members:
            await asyncio.gather(*(self._save(m) for m in members.values()))

    async def _flush_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.flush_interval)
            try:
                await self._flush_cursors()
            except Exception:
                if not self._closed:
                    log.warning("saving cursors failed; will retry", exc_info=True)
