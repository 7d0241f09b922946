"""Where the NATS backend keeps things: streams, subjects, KV buckets and consumer names.

One hub per ``prefix`` (``fc`` by default; several hubs can share one NATS account):

======================  =============================  ==========================================
stream / bucket         subjects / keys                role
======================  =============================  ==========================================
``<P>_CHAT``            ``<p>.ch.<channel>``           channel logs: history, retention, and what
                                                       every node delivers from (dedupe by id)
KV ``<p>_channels``     channel key -> Channel JSON    channel definitions
KV ``<p>_members``      ``<channel>.<member>`` keys    membership; the value is the seq the
                                                       member joined after
KV ``<p>_cursors``      member key -> cursor records   what each member has settled, per channel
core ``<p>.eph.<ch>``   -                              ephemeral channels (never stored)
core ``<p>.tr.<m>``     -                              requests and replies to a member
core ``<p>.own.<m>``    -                              a node taking a member over asks the node
                                                       that has it to save its cursors and let go
======================  =============================  ==========================================

Every node reads ``<P>_CHAT`` once, in order (an ordered push consumer), and delivers to the
members connected to it, each from its own cursor: no per-member copies are stored.
"""

from __future__ import annotations

__all__ = ["Layout", "key_name", "key_token", "subject_token"]


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
        self.channels_bucket = f"{prefix}_channels"
        self.members_bucket = f"{prefix}_members"
        self.cursors_bucket = f"{prefix}_cursors"

    def chat(self, channel: str) -> str:
        return f"{self.prefix}.ch.{subject_token(channel)}"

    @property
    def chat_all(self) -> str:
        return f"{self.prefix}.ch.>"

    def ephemeral(self, channel: str) -> str:
        return f"{self.prefix}.eph.{subject_token(channel)}"

    @property
    def ephemeral_all(self) -> str:
        return f"{self.prefix}.eph.*"

    def transient(self, member: str) -> str:
        return f"{self.prefix}.tr.{subject_token(member)}"

    def owner(self, member: str) -> str:
        return f"{self.prefix}.own.{subject_token(member)}"

    def member_key(self, channel: str, member: str) -> str:
        return f"{key_token(channel)}.{key_token(member)}"

    def next_subject(self, stream: str, consumer: str) -> str:
        return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
