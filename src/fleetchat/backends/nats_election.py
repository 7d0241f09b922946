"""Leader election with fencing epochs on a NATS KV bucket (part of the NatsCoordinator).

The bucket's TTL is the lease. The key ``leader`` holds ``{"node", "epoch"}``: a node campaigns
with ``create``, and the winner renews with ``update(last=rev)``. The revision of the entry that
started a leadership is its **epoch** (the first entry has no ``epoch`` field: its own revision
is the epoch); renewals carry it, so it stays the same while one node leads and grows with every
change of leader. Without renewals the server drops the key ``lease`` after the last one, and
the next campaign wins.

A leader believes it leads only until ``t + lease - margin``, where ``t`` is the monotonic time
at which its last successful renewal was *sent* (the server's expiry starts later), so it stops
before any other node can be elected, even after a SIGSTOP: ``is_leader`` compares with the
clock on every call, and a timer tells the callbacks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from fleetchat.backends.nats_kv import KeyNotFoundError, backend_errors, is_wrong_last
from fleetchat.errors import FencedError
from fleetchat.types import Clock, TimerHandle

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

__all__ = ["NatsElection"]

log = logging.getLogger(__name__)

_KEY = "leader"


class _Leader(msgspec.Struct, frozen=True, omit_defaults=True):
    node: str
    epoch: int = 0  # 0: this entry starts a leadership, and its own revision is the epoch


class NatsElection:
    """One node's side of the election; ``kv`` is set when the coordinator starts."""

    def __init__(
        self,
        node_id: str,
        clock: Clock,
        *,
        lease: float,
        renew_every: float,
        margin: float,
        timeout: float,
    ) -> None:
        self.node_id = node_id
        self.kv: KeyValue | None = None
        self.where = ""  # the NATS server(s), for errors
        self.closed = False
        self._clock = clock
        self._lease = lease
        self._renew_every = renew_every
        self._margin = margin
        self._timeout = timeout
        self._callbacks: list[Callable[[bool, int], None]] = []
        self._epoch = 0  # while we hold leadership (even past the deadline, until _lose)
        self._rev = 0  # the revision of our latest leader entry
        self._deadline = 0.0  # monotonic: we believe we lead until then
        self._expiry: TimerHandle | None = None
        self._failing = False

    @property
    def is_leader(self) -> bool:
        return self._epoch != 0 and self._clock.monotonic() < self._deadline

    @property
    def epoch(self) -> int:
        return self._epoch if self.is_leader else 0

    @property
    def deadline(self) -> float:
        return self._deadline if self._epoch else 0.0

    def on_leadership(self, callback: Callable[[bool, int], None]) -> None:
        self._callbacks.append(callback)

    async def read(self) -> tuple[str, int, int] | None:
        """(node, epoch, revision) of the leader entry on the server, or None."""
        assert self.kv is not None, "the coordinator checks that it is started"
        with backend_errors("read leader", self.where):
            async with asyncio.timeout(self._timeout):
                try:
                    entry = await self.kv.get(_KEY)
                except KeyNotFoundError:
                    return None
        rev = entry.revision or 0
        if not entry.value:  # pragma: no cover - 2.11+: nats-py's value=None for an expired entry
            return None
        try:
            value = msgspec.json.decode(entry.value, type=_Leader)
        except msgspec.DecodeError:  # not ours: someone else's leadership, as far as we know
            return ("?", rev, rev)
        return (value.node, value.epoch or rev, rev)

    async def check_epoch(self, epoch: int) -> None:
        entry = await self.read()
        if entry is None or entry[1] != epoch:
            now = "none" if entry is None else f"{entry[1]} ({entry[0]})"
            raise FencedError(
                f"leadership epoch {epoch} is stale; the current one is {now}",
                epoch=epoch,
                current_epoch=0 if entry is None else entry[1],
            )

    async def run(self) -> None:
        while not self.closed:
            await self._clock.sleep(self._renew_every)
            if not self.closed:
                await self.step()

    async def step(self) -> None:
        """One campaign or renewal. Survives every error: a node that cannot reach NATS cannot
        renew, and its belief lapses by the deadline timer. Logs once per failing streak."""
        try:
            async with asyncio.timeout(min(self._timeout, self._lease)):
                await (self._renew() if self._epoch else self._campaign())
        except Exception as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "coordinator %s: election step failed, retrying every %g s: %s",
                    self.node_id,
                    self._renew_every,
                    exc or type(exc).__name__,
                    extra={"node_id": self.node_id},
                )
            else:
                log.debug("coordinator %s: election step failed again: %r", self.node_id, exc)
        else:
            if self._failing:
                self._failing = False
                log.info("coordinator %s: election steps work again", self.node_id)

    async def resign(self) -> None:
        """Stop believing (callbacks first), then delete the key if it is ours, so another
        node wins its next campaign instead of waiting out the lease."""
        self.closed = True
        self._lose()
        if self.kv is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                entry = await self.read()
                if entry is not None and entry[0] == self.node_id:
                    await self.kv.delete(_KEY, last=entry[2])
        except Exception as exc:  # the key lapses by itself after the lease
            log.debug("coordinator %s: could not delete the leader key: %s", self.node_id, exc)

    async def _campaign(self) -> None:
        assert self.kv is not None
        sent = self._clock.monotonic()
        value = msgspec.json.encode(_Leader(self.node_id))
        try:
            rev = await self.kv.create(_KEY, value)
        except Exception as exc:
            if not is_wrong_last(exc):
                raise
            entry = await self.read()
            if entry is None or entry[0] != self.node_id:
                return  # someone else leads (or the key just lapsed: next round)
            # Our own entry whose revision we lost (a renewal timed out, or a previous process
            # with this node id): take it over as a new leadership, by compare-and-set.
            sent = self._clock.monotonic()
            try:
                rev = await self.kv.update(_KEY, value, last=entry[2])
            except Exception as exc2:
                if is_wrong_last(exc2):
                    return
                raise
        if self.closed:
            return
        self._epoch = self._rev = rev
        self._extend(sent)
        log.info(
            "coordinator %s: leader with epoch %d",
            self.node_id,
            rev,
            extra={"node_id": self.node_id, "epoch": rev},
        )
        self._fire(True, rev)

    async def _renew(self) -> None:
        assert self.kv is not None
        epoch = self._epoch
        sent = self._clock.monotonic()
        value = msgspec.json.encode(_Leader(self.node_id, epoch))
        try:
            rev = await self.kv.update(_KEY, value, last=self._rev)
        except Exception as exc:
            if not is_wrong_last(exc):
                raise
            log.warning(
                "coordinator %s: leadership %d was taken over",
                self.node_id,
                epoch,
                extra={"node_id": self.node_id, "epoch": epoch},
            )
            self._lose()
            return
        if self._epoch != epoch:  # lapsed while the renewal was on its way: stay down
            return
        self._rev = rev
        self._extend(sent)

    def _extend(self, sent: float) -> None:
        self._deadline = sent + self._lease - self._margin
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = self._clock.call_later(self._deadline - self._clock.monotonic(), self._lapse)

    def _lapse(self) -> None:
        if self._epoch and self._clock.monotonic() >= self._deadline:
            log.warning(
                "coordinator %s: leadership %d lapsed (no renewal in time)",
                self.node_id,
                self._epoch,
                extra={"node_id": self.node_id, "epoch": self._epoch},
            )
            self._lose()

    def _lose(self) -> None:
        epoch, self._epoch, self._rev, self._deadline = self._epoch, 0, 0, 0.0
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if epoch:
            self._fire(False, epoch)

    def _fire(self, leading: bool, epoch: int) -> None:
        for callback in list(self._callbacks):
            try:
                callback(leading, epoch)
            except Exception:
                log.exception("coordinator %s: leadership callback failed", self.node_id)
