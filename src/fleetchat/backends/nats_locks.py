"""Named locks with fencing tokens on a NATS KV bucket (part of the NatsCoordinator).

A lock is the key ``kv_key(name)`` holding ``{"owner", "deadline"}`` (wall-clock seconds); the
entry's revision is the fencing token, and it grows with every acquire and renew (it is the
bucket stream's sequence). Every change is a compare-and-set on the revision.

What a lock's TTL means:

- **Always:** the lock is held until its stored deadline. Once that has passed, ``acquire`` by
  anyone takes the entry over with ``update(last=rev)``, so the token still grows. A holder that
  renews in time keeps it; a renewal after the deadline still works while no one else took the
  lock (the token is still current), and raises FencedError once someone did.
- **nats-server 2.9.10 (no per-key TTL):** the server itself removes an entry ``lock_max_ttl``
  (the bucket's TTL) after its last write, whatever the lock's TTL; so a TTL above
  ``lock_max_ttl`` is refused. A lock whose holder died is free for others at its deadline
  (through the takeover above), and its entry is gone from the server at ``lock_max_ttl``.
- **nats-server 2.11+ (``per_key_ttl``):** each write also carries the lock's TTL to the server
  (``Nats-TTL``), which removes the entry at its own deadline.
- The deadline is compared with the acquirer's wall clock: keep node clocks in sync (NTP) well
  within the TTLs used. The holder should stop using a lock before its deadline by its own
  monotonic clock, and pass the token to whatever the lock protects, which checks it.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import msgspec

from fleetchat.backends.nats_kv import KeyNotFoundError, backend_errors, is_wrong_last, kv_key
from fleetchat.errors import FencedError, InvalidInputError
from fleetchat.types import Clock

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["NatsLocks"]

_TRIES = 3  # compare-and-set races before acquire gives up and says "held"


def _server_ttl(ttl: float) -> int:  # pragma: no cover - per-key TTL: nats-server 2.11+
    # Nats-TTL is whole seconds, at least 1; the stored deadline is what counts, the server's
    # TTL only cleans up, so it may round up.
    return max(1, math.ceil(ttl))


class _Lock(msgspec.Struct, frozen=True):
    owner: str
    deadline: float  # wall-clock epoch seconds


class NatsLocks:
    """Acquire, renew and release on one bucket; see the module docstring."""

    def __init__(
        self,
        kv: KeyValue,
        bucket: str,
        js: JetStreamContext,
        clock: Clock,
        max_ttl: float,
        *,
        per_key: bool,
        where: str,
    ) -> None:
        self._kv = kv
        self._where = where
        self._js = js
        self._clock = clock
        self._max_ttl = max_ttl
        self._per_key = per_key
        self._subject = f"$KV.{bucket}."

    def _value(self, owner: str, ttl: float) -> bytes:
        if not 0 < ttl <= self._max_ttl:
            raise InvalidInputError(
                f"a lock TTL must be more than 0 and at most {self._max_ttl:g} s "
                f"(lock_max_ttl), not {ttl!r}",
                field="ttl",
            )
        return msgspec.json.encode(_Lock(owner, self._clock.time() + ttl))

    async def _create(self, key: str, value: bytes, ttl: float) -> int:
        if self._per_key:  # pragma: no cover - nats-server 2.11+
            return await self._kv.create(key, value, msg_ttl=_server_ttl(ttl))
        return await self._kv.create(key, value)

    async def _update(self, key: str, value: bytes, last: int, ttl: float) -> int:
        if self._per_key:  # pragma: no cover - nats-server 2.11+
            # KeyValue.update takes no TTL: the same compare-and-set as a plain JetStream
            # publish, with the TTL header.
            headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
            ack = await self._js.publish(
                self._subject + key, value, headers=headers, msg_ttl=_server_ttl(ttl)
            )
            return ack.seq
        return await self._kv.update(key, value, last=last)

    async def _held(self, key: str) -> tuple[_Lock | None, int] | None:
        """The lock's value (None if unreadable) and revision, or None if it is not there."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:  # pragma: no cover - 2.11+: nats-py's value=None for an expired entry
            return None
        try:
            return msgspec.json.decode(entry.value, type=_Lock), entry.revision or 0
        except msgspec.DecodeError:
            return None, entry.revision or 0

    async def acquire(self, name: str, owner: str, ttl: float, timeout: float) -> int | None:
        key = kv_key(name)
        with backend_errors("acquire lock", self._where):
            async with asyncio.timeout(timeout):
                for _ in range(_TRIES):
                    value = self._value(owner, ttl)
                    try:
                        return await self._create(key, value, ttl)
                    except Exception as exc:
                        if not is_wrong_last(exc):
                            raise
                    held = await self._held(key)
                    if held is None:
                        continue  # released or removed just now: create again
                    lock, rev = held
                    live = lock is not None and lock.deadline > self._clock.time()
                    if live and lock is not None and lock.owner != owner:
                        return None
                    try:
                        return await self._update(key, value, rev, ttl)
                    except Exception as exc:
                        if not is_wrong_last(exc):
                            raise
        return None

    async def renew(self, name: str, token: int, ttl: float, timeout: float) -> int:
        key = kv_key(name)
        with backend_errors("renew lock", self._where):
            async with asyncio.timeout(timeout):
                held = await self._held(key)
                if held is None or held[1] != token:
                    raise FencedError(
                        f"lock {name!r}: token {token} is no longer current",
                        lock=name,
                        token=token,
                    )
                owner = held[0].owner if held[0] is not None else ""
                try:
                    return await self._update(key, self._value(owner, ttl), token, ttl)
                except Exception as exc:
                    if is_wrong_last(exc):
                        raise FencedError(
                            f"lock {name!r}: token {token} is no longer current",
                            lock=name,
                            token=token,
                        ) from None
                    raise

    async def release(self, name: str, token: int, timeout: float) -> None:
        key = kv_key(name)
        if token <= 0:
            return  # delete(last=0) would not compare at all
        with backend_errors("release lock", self._where):
            async with asyncio.timeout(timeout):
                try:
                    await self._kv.delete(key, last=token)
                except Exception as exc:
                    if not is_wrong_last(exc):
                        raise
