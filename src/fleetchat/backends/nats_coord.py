"""The distributed Coordinator on NATS KV: leader election with fencing, presence, locks.

Three buckets, each with history 1 and a bucket TTL (``max_age``), so this works on Debian's
nats-server 2.9.10, which has no per-key TTL and no expiry events:

- ``<prefix>_elect``, TTL = ``lease``: the election (nats_election.py). The KV revision of the
  entry that started a leadership is its fencing epoch; ``check_epoch`` reads the server.
- ``<prefix>_presence``, TTL = ``presence_ttl``: one key per present name.
- ``<prefix>_locks``, TTL = ``lock_max_ttl``: one key per lock; the revision is the fencing
  token (nats_locks.py, which also says what a lock's TTL means on each server version).

Names are escaped into valid KV keys (nats_kv.py), so any string works as a presence key or a
lock name.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, cast

from fleetchat.backends.nats_conn import connect_nats, server_features
from fleetchat.backends.nats_election import NatsElection
from fleetchat.backends.nats_kv import backend_errors, kv_key, kv_name, open_bucket
from fleetchat.backends.nats_locks import NatsLocks
from fleetchat.errors import ClosedError, ConfigError
from fleetchat.types import Clock, SystemClock

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js.kv import KeyValue

    from fleetchat.backends.ports import Coordinator

__all__ = ["NatsCoordinator"]

T = TypeVar("T")

_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+\Z")


class NatsCoordinator:
    """Leader election, presence and locks for hub nodes sharing one NATS (JetStream) server.

    Args:
        nats: a connected nats-py client (left open on close), or a URL to connect to (that
            connection is closed on close).
        node_id: this node's id, unique among the running nodes.
        lease: seconds a leadership lasts without renewal (the election bucket's TTL); 3.0.
        renew_every: seconds between campaigns and renewals; 0.5.
        margin: seconds a leader stops believing before its lease ends; ``lease / 6``.
        presence_ttl: seconds a presence key lasts without a new put; 3.0.
        lock_max_ttl: the longest lock TTL, in seconds (the locks bucket's TTL); 60.0.
        per_key_ttl: give each lock entry its own TTL on the server: ``None`` when the server
            has it (nats-server 2.11+), ``True`` to require it, ``False`` never.
        timeout: seconds any one NATS operation may take; 2.0.
        clock: where time comes from; the system clock.
        prefix: the bucket name prefix, so several hubs can share a server; ``"fc"``.

    Every node of a hub must use the same ``lease``, ``presence_ttl`` and ``lock_max_ttl``
    (they are bucket settings); ``start`` raises ConfigError when they disagree.
    """

    def __init__(
        self,
        nats: NatsClient | str,
        node_id: str,
        *,
        lease: float = 3.0,
        renew_every: float = 0.5,
        margin: float | None = None,
        presence_ttl: float = 3.0,
        lock_max_ttl: float = 60.0,
        per_key_ttl: bool | None = None,
        timeout: float = 2.0,
        clock: Clock | None = None,
        prefix: str = "fc",
    ) -> None:
        margin = lease / 6 if margin is None else margin
        if not node_id or not isinstance(node_id, str):
            raise ConfigError(f"node_id must be a non-empty string, not {node_id!r}")
        if not _PREFIX_RE.match(prefix):
            raise ConfigError(f"prefix {prefix!r}: use A-Z a-z 0-9 _ -", setting="prefix")
        if min(lease, renew_every, presence_ttl, lock_max_ttl, timeout) <= 0 or margin < 0:
            raise ConfigError(
                "lease, renew_every, presence_ttl, lock_max_ttl and timeout must "
                "be positive, margin not negative"
            )
        if renew_every + margin >= lease:
            raise ConfigError(
                f"renew_every ({renew_every:g} s) + margin ({margin:g} s) must be less than "
                f"the lease ({lease:g} s), or a leader lapses between renewals",
                setting="renew_every",
            )
        self.node_id = node_id
        self.lease = lease
        self.renew_every = renew_every
        self.margin = margin
        self.presence_ttl = presence_ttl
        self.lock_max_ttl = lock_max_ttl
        self.timeout = timeout
        self.prefix = prefix
        self._clock: Clock = clock or SystemClock()
        self._url = nats if isinstance(nats, str) else None
        self._nc: NatsClient | None = None if isinstance(nats, str) else nats
        self._want_per_key_ttl = per_key_ttl
        self._election = NatsElection(
            node_id,
            self._clock,
            lease=lease,
            renew_every=renew_every,
            margin=margin,
            timeout=timeout,
        )
        self._where = ""  # the NATS server(s), host:port, for errors
        self._presence: KeyValue | None = None
        self._locks: NatsLocks | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, open the buckets, campaign once, and start the election loop.

        Raises:
            BackendUnavailableError: NATS cannot be reached.
            ConfigError: ``per_key_ttl=True`` on a server older than 2.11, or bucket settings
                that disagree with another node's.
        """
        if self._closed:
            raise ClosedError("this coordinator is closed")
        if self._task is not None:
            return
        if self._nc is None:
            assert self._url is not None
            self._nc = await connect_nats(
                self._url, name=f"fleetchat-coord-{self.node_id}", timeout=self.timeout * 2.5
            )
        try:
            features = server_features(self._nc)
            if self._want_per_key_ttl:
                features.require("per_key_ttl")
            per_key = self._want_per_key_ttl is not False and features.has("per_key_ttl")
            self._where = ", ".join(f"{u.hostname}:{u.port}" for u in self._nc.servers)
            # nats-py times out on its own a little before our asyncio.timeout, which stays as
            # the backstop: a cancellation can be lost inside nats-py (it swallows one while
            # flushing), its own timeout cannot.
            js = self._nc.jetstream(timeout=self.timeout * 0.8)
            p = self.prefix
            with backend_errors("open buckets", self._where):
                async with asyncio.timeout(self.timeout * 3):
                    elect = await open_bucket(js, f"{p}_elect", self.lease, setting="lease")
                    self._presence = await open_bucket(
                        js, f"{p}_presence", self.presence_ttl, setting="presence_ttl"
                    )
                    locks = await open_bucket(
                        js, f"{p}_locks", self.lock_max_ttl, setting="lock_max_ttl"
                    )
            self._election.kv, self._election.where = elect, self._where
            self._locks = NatsLocks(
                locks,
                f"{p}_locks",
                js,
                self._clock,
                self.lock_max_ttl,
                per_key=per_key,
                where=self._where,
            )
        except BaseException:
            if self._url is not None:
                await self._nc.close()
                self._nc = None
            raise
        await self._election.step()
        self._task = asyncio.create_task(
            self._election.run(), name=f"fleetchat-coord-{self.node_id}"
        )

    async def close(self) -> None:
        """Stop campaigning; if this node leads, step down and delete the key so that another
        node is elected at its next campaign instead of after the lease."""
        if self._closed:
            return
        self._closed = self._election.closed = True
        if self._task is not None:
            # nats-py can swallow a cancellation while it flushes; the loop also stops on
            # closed, within one NATS timeout.
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.timeout + self.renew_every)
            if not self._task.done():  # pragma: no cover - a second cancel always lands
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._election.resign()
        if self._url is not None and self._nc is not None:
            await self._nc.close()

    async def __aenter__(self) -> NatsCoordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- leadership ----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._election.is_leader

    @property
    def epoch(self) -> int:
        return self._election.epoch

    @property
    def lease_deadline(self) -> float:
        """The monotonic time until which this node believes it leads (0.0 when it does not
        lead): the last renewal's send time + lease - margin."""
        return self._election.deadline

    def on_leadership(self, callback: Callable[[bool, int], None]) -> None:
        self._election.on_leadership(callback)

    async def leader(self) -> tuple[str, int] | None:
        self._need(self._election.kv)
        entry = await self._election.read()
        return None if entry is None else (entry[0], entry[1])

    async def check_epoch(self, epoch: int) -> None:
        self._need(self._election.kv)
        await self._election.check_epoch(epoch)

    # -- presence --------------------------------------------------------------------------

    async def put_presence(self, key: str, value: bytes) -> None:
        kv = self._need(self._presence)
        with backend_errors("put presence", self._where):
            async with asyncio.timeout(self.timeout):
                await kv.put(kv_key(key), value)

    async def presence(self) -> dict[str, bytes]:
        kv = self._need(self._presence)
        out: dict[str, bytes] = {}
        with backend_errors("read presence", self._where):
            async with asyncio.timeout(self.timeout):
                # One watcher reads every key with its value (keys() then get() would be N+1
                # round trips, and keys() raises on an empty bucket); a short inactive
                # threshold lets the server drop the consumer soon after.
                watcher = await kv.watchall(ignore_deletes=True, inactive_threshold=1.0)
                try:
                    async for entry in watcher:
                        if entry is None:
                            break
                        if entry.value is not None and entry.operation not in ("DEL", "PURGE"):
                            out[kv_name(entry.key)] = entry.value
                finally:
                    stop = cast(Callable[[], Awaitable[None]], watcher.stop)  # untyped in nats-py
                    await stop()
        return out

    # -- locks -------------------------------------------------------------------------------

    async def acquire(self, name: str, owner: str, ttl: float) -> int | None:
        return await self._need(self._locks).acquire(name, owner, ttl, self.timeout)

    async def renew(self, name: str, token: int, ttl: float) -> int:
        return await self._need(self._locks).renew(name, token, ttl, self.timeout)

    async def release(self, name: str, token: int) -> None:
        await self._need(self._locks).release(name, token, self.timeout)

    def _need(self, part: T | None) -> T:
        if self._closed or part is None:
            raise ClosedError(
                "the coordinator is not started"
                if not self._closed
                else "the coordinator is closed"
            )
        return part


if TYPE_CHECKING:

    def _conforms(c: NatsCoordinator) -> Coordinator:
        return c
