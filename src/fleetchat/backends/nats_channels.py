"""Channels, memberships and channel history of the NatsBus.

``NatsChannels`` is a mixin of :class:`fleetchat.backends.nats_bus.NatsBus`. Channel
definitions and memberships are KV entries that every node watches, so ``channel()``,
``members()`` and the other reads are answered from memory; history is read from the channel
log in JetStream with a short-lived consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.backends.nats_layout import Layout, key_name, key_token
from fleetchat.errors import ChannelExistsError, ChannelNotFoundError
from fleetchat.models import Channel, Message

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

__all__ = ["NatsChannels"]


def _floor(value: bytes) -> int:
    """A membership's value: the stream seq the member joined after."""
    try:
        return int(value)
    except ValueError:
        return 0


log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(Message).decode
_decode_channel = msgspec.json.Decoder(Channel).decode


class NatsChannels:
    """Channels and members from KV, history from the channel log."""

    layout: Layout
    _closed: bool
    _channels: dict[str, Channel]
    _channel_members: dict[str, set[str]]
    _join_floors: dict[tuple[str, str], int]
    _revisions: dict[tuple[str, str], int]  # (bucket, key) -> the newest revision applied
    _memberships: dict[str, set[str]]
    _kv_channels: KeyValue | None
    _kv_members: KeyValue | None
    _watchers: list[Any]

    if TYPE_CHECKING:

        @property
        def nc(self) -> NatsClient: ...

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        def _membership_changed(self, channel: str, member_id: str, joined: bool) -> None: ...

    # -- channels and members (KV, watched) -------------------------------------------------

    async def _load_and_watch(self) -> None:
        assert self._kv_channels is not None
        assert self._kv_members is not None
        for kv, apply in (
            (self._kv_channels, self._apply_channel),
            (self._kv_members, self._apply_member),
        ):
            watcher = await kv.watchall()
            self._watchers.append(watcher)
            async for entry in watcher:  # the current values, then None
                if entry is None:
                    break
                apply(entry)
            self._spawn(self._follow(watcher, apply))

    async def _follow(self, watcher: Any, apply: Callable[[Any], None]) -> None:
        while not self._closed:
            try:
                entry = await watcher.updates(timeout=5.0)
            except TimeoutError:
                continue
            except Exception:
                if self._closed:
                    return
                log.warning("KV watch failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if entry is not None:
                apply(entry)

    def _fresh(self, bucket: str, key: str, revision: int) -> bool:
        """Whether a KV change is newer than what this node knows of ``key``: a watch can
        bring a change after this node made a newer one itself (applied when it was made)."""
        known = self._revisions.get((bucket, key), 0)
        if revision <= known:
            return False
        self._revisions[(bucket, key)] = revision
        return True

    def _apply_channel(self, entry: Any) -> None:
        if not self._fresh(self.layout.channels_bucket, entry.key, entry.revision):
            return
        name = key_name(entry.key)
        if entry.operation in ("DEL", "PURGE") or entry.value is None:
            self._channels.pop(name, None)
            return
        spec = _decode_channel(entry.value)
        old = self._channels.get(name)
        if old is not None:
            spec.last_seq = max(spec.last_seq, old.last_seq)
        self._channels[name] = spec

    def _apply_member(self, entry: Any) -> None:
        if not self._fresh(self.layout.members_bucket, entry.key, entry.revision):
            return
        chan_tok, _, member_tok = entry.key.partition(".")
        channel, member = key_name(chan_tok), key_name(member_tok)
        if entry.operation in ("DEL", "PURGE") or entry.value is None:
            self._forget_member(channel, member)
        else:
            self._note_member(channel, member, _floor(entry.value))

    def _note_member(self, channel: str, member: str, floor: int) -> None:
        known = member in self._channel_members.get(channel, ())
        self._channel_members.setdefault(channel, set()).add(member)
        self._memberships.setdefault(member, set()).add(channel)
        self._join_floors[(channel, member)] = floor
        if not known:
            self._membership_changed(channel, member, True)

    def _forget_member(self, channel: str, member: str) -> None:
        known = member in self._channel_members.get(channel, ())
        self._channel_members.get(channel, set()).discard(member)
        self._memberships.get(member, set()).discard(channel)
        self._join_floors.pop((channel, member), None)
        if known:
            self._membership_changed(channel, member, False)

    async def _kv_delete(self, bucket: str, key: str) -> None:
        """Delete ``key`` (a delete marker, as ``KeyValue.delete`` writes) and note the
        revision, which ``KeyValue.delete`` does not return."""
        ack = await self.nc.jetstream().publish(
            f"$KV.{bucket}.{key}", b"", headers={"KV-Operation": "DEL"}
        )
        self._fresh(bucket, key, ack.seq)

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def channel(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def members(self, channel: str) -> list[str]:
        return list(self._channel_members.get(channel, ()))

    def is_member(self, channel: str, member: str) -> bool:
        return member in self._channel_members.get(channel, ())

    def memberships(self, member: str) -> list[str]:
        return list(self._memberships.get(member, ()))

    def _spec(self, name: str) -> Channel:
        spec = self._channels.get(name)
        if spec is None:
            raise ChannelNotFoundError(f"no channel {name!r}", channel=name)
        return spec

    async def create_channel(self, channel: Channel) -> Channel:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._kv_channels is not None
        key = key_token(channel.name)
        try:
            revision = await self._kv_channels.create(key, _encode(channel))
        except KeyWrongLastSequenceError:
            raise ChannelExistsError(
                f"channel {channel.name!r} exists", channel=channel.name
            ) from None
        self._fresh(self.layout.channels_bucket, key, revision)
        self._channels[channel.name] = channel
        return channel

    async def delete_channel(self, name: str) -> None:
        self._spec(name)
        lay = self.layout
        for member in list(self._channel_members.get(name, ())):
            await self._kv_delete(lay.members_bucket, lay.member_key(name, member))
            self._forget_member(name, member)
        self._channel_members.pop(name, None)
        await self._kv_delete(lay.channels_bucket, key_token(name))
        self._channels.pop(name, None)
        await self.purge(name)

    async def add_member(self, channel: str, member: str) -> bool:
        """``member`` gets the channel's messages from the next one on: its membership records
        the stream's last seq now, and its cursor starts there."""
        self._spec(channel)
        if self.is_member(channel, member):
            return False
        assert self._kv_members is not None
        info = await self.nc.jetstream().stream_info(self.layout.chat_stream)
        floor = info.state.last_seq
        key = self.layout.member_key(channel, member)
        revision = await self._kv_members.put(key, b"%d" % floor)
        self._fresh(self.layout.members_bucket, key, revision)
        self._note_member(channel, member, floor)
        return True

    async def remove_member(self, channel: str, member: str) -> bool:
        if not self.is_member(channel, member):
            return False
        lay = self.layout
        await self._kv_delete(lay.members_bucket, lay.member_key(channel, member))
        self._forget_member(channel, member)
        return True

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
        """Stored messages of ``channel`` (read with a short-lived consumer), oldest first."""
        self._spec(channel)
        start = 0 if start_seq is None else max(start_seq, 1) - 1
        everything = tail or end_seq is not None or since is not None or until is not None
        out, _ = await self._read_after(channel, start, None if everything else max(limit, 0))
        picked = [
            m
            for m in out
            if (end_seq is None or m.seq <= end_seq)
            and (since is None or m.created_at >= since)
            and (until is None or m.created_at <= until)
        ]
        return picked[-limit:] if tail else picked[:limit]

    async def _read_after(
        self, channel: str, after: int, limit: int | None
    ) -> tuple[list[Message], bool]:
        """Stored messages of ``channel`` with seq > ``after``, oldest first: at most ``limit``
        (None: all), and whether that was all of them. Read with a short-lived consumer."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = self.nc.jetstream()
        config = ConsumerConfig(
            filter_subject=self.layout.chat(channel),
            ack_policy="none",  # type: ignore[arg-type]
            inactive_threshold=10.0,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
        )
        info = await js.add_consumer(self.layout.chat_stream, config)
        available = max(info.num_pending or 0, 0)
        want = available if limit is None else min(available, limit)
        out: list[Message] = []
        inbox = self.nc.new_inbox()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Msg) -> None:
            if msg.headers and "Status" in msg.headers:
                if not done.done():
                    done.set_result(None)
                return
            m = _decode_message(msg.data)
            m.seq = msg.metadata.sequence.stream
            out.append(m)
            if len(out) >= want and not done.done():
                done.set_result(None)

        sub = await self.nc.subscribe(inbox, cb=on_msg)
        try:
            if want:
                req = json.dumps({"batch": want, "no_wait": True}).encode()
                await self.nc.publish(
                    self.layout.next_subject(self.layout.chat_stream, info.name),
                    req,
                    reply=inbox,
                )
                async with asyncio.timeout(10.0):
                    await done
        finally:
            await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(self.layout.chat_stream, info.name)
        return out, len(out) >= available

    async def purge(self, channel: str) -> int:
        js = self.nc.jetstream()
        subject = self.layout.chat(channel)
        info = await js.stream_info(self.layout.chat_stream, subjects_filter=subject)
        count = int((info.state.subjects or {}).get(subject, 0))
        await js.purge_stream(self.layout.chat_stream, subject=subject)
        return count
