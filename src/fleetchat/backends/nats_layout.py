"""Where the NATS backend keeps things: streams, subjects, KV buckets and consumer names.

One hub per ``prefix`` (``fc`` by default; several hubs can share one NATS account):

======================  =============================  ==========================================
stream / bucket         subjects / keys                role
======================  =============================  ==========================================
``<P>_CHAT``            ``<p>.ch.<channel>``           channel logs: history, retention, the
                                                       source of fan-out (dedupe by message id)
``<P>_INBOX``           ``<p>.in.<member>.<rank>``     per-member deliveries, one lane per
                                                       priority (rank 0 critical .. 3 low); work
                                                       queue: a copy is gone once acked
KV ``<p>_channels``     channel key -> Channel JSON    channel definitions
KV ``<p>_members``      ``<channel>.<member>`` keys    membership
core ``<p>.eph.<ch>``   -                              ephemeral channels (never stored)
core ``<p>.tr.<m>``     -                              requests and replies to a member
======================  =============================  ==========================================

A member has one durable pull consumer per lane on ``<P>_INBOX``; the node that holds the
member's connection pulls them, highest lane first, so priority is strict across all four levels.
"""

from __future__ import annotations

import hashlib

from fleetchat.types import PRIORITIES

__all__ = ["Layout", "key_token", "subject_token"]

LANES = len(PRIORITIES)


def subject_token(name: str) -> str:
    """``name`` as one subject token: ``.``, ``*``, ``>``, ``%`` and spaces escaped as %XX."""
    if not any(c in name for c in ".*>% \t"):
        return name
    return "".join(f"%{ord(c):02X}" if c in ".*>% \t" else c for c in name)


def key_token(name: str) -> str:
    """``name`` as a KV key token (KV keys allow only ``[-_=a-zA-Z0-9]`` per token)."""
    return name.encode().hex()


def key_name(token: str) -> str:
    return bytes.fromhex(token).decode()


class Layout:
    """Names for one hub (``prefix``) on a NATS account."""

    def __init__(self, prefix: str = "fc") -> None:
        self.prefix = prefix
        up = prefix.upper()
        self.chat_stream = f"{up}_CHAT"
        self.inbox_stream = f"{up}_INBOX"
        self.channels_bucket = f"{prefix}_channels"
        self.members_bucket = f"{prefix}_members"
        self.fanout_consumer = "fanout"

    def chat(self, channel: str) -> str:
        return f"{self.prefix}.ch.{subject_token(channel)}"

    @property
    def chat_all(self) -> str:
        return f"{self.prefix}.ch.>"

    def inbox(self, member: str, rank: int) -> str:
        return f"{self.prefix}.in.{subject_token(member)}.{rank}"

    def inbox_lanes(self, member: str) -> str:
        return f"{self.prefix}.in.{subject_token(member)}.*"

    @property
    def inbox_all(self) -> str:
        return f"{self.prefix}.in.>"

    def ephemeral(self, channel: str) -> str:
        return f"{self.prefix}.eph.{subject_token(channel)}"

    @property
    def ephemeral_all(self) -> str:
        return f"{self.prefix}.eph.*"

    def transient(self, member: str) -> str:
        return f"{self.prefix}.tr.{subject_token(member)}"

    def lane_consumer(self, member: str, rank: int) -> str:
        """A durable name for a member's lane: stable, short, and safe as a file name."""
        digest = hashlib.sha1(member.encode()).hexdigest()[:20]
        return f"m{rank}_{digest}"

    def member_key(self, channel: str, member: str) -> str:
        return f"{key_token(channel)}.{key_token(member)}"

    def next_subject(self, stream: str, consumer: str) -> str:
        return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
