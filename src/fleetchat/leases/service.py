"""LeaseService: leases on named shared resources, on any Store, on one node or several.

The Store is the system of record: every change is a pure function of state.py applied by
compare-and-set (records.py), so hub nodes sharing a store can never grant a
lease twice, whatever messages they lose. Waiting is local: an acquire that cannot be granted
at once queues a waiter in the record, then sleeps until woken and reads the record again. It
is woken by a change this node made to the resource, by another node's broadcast of one (bus
topic ``leases``), at the holder's ``expires_at``, or at the latest every ``check_interval``
(the backstop for a broadcast that never came). The grant itself is made by whoever freed the
resource, in the record, in queue order; the waiter only finds out.

A sweep every ``check_interval`` expires leases nobody waits for, drops waiters whose node
died, and looks for deadlocks missed at enqueue time. It runs on every node: the
compare-and-set makes running it twice harmless, and no node's failure stops it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fleetchat.errors import (
    ClosedError,
    ConflictError,
    DeadlockError,
    FleetchatError,
    LeaseTimeoutError,
)
from fleetchat.leases import state
from fleetchat.leases.deadlock import find_victims
from fleetchat.leases.records import Records
from fleetchat.leases.settings import LeaseSettings, check_seconds
from fleetchat.leases.state import Lease, LeaseState, Resource, Waiter
from fleetchat.types import Clock, Priority, check_agent_id, new_id, parse_priority

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus, Store
    from fleetchat.registry.agents import AgentRegistry, EventStream

__all__ = ["LeaseService", "LeaseSettings"]

log = logging.getLogger(__name__)


class LeaseService:
    """Acquire, renew and release leases; see docs/leases.md.

    Args:
        store: where resources live (shared by every node of the hub).
        bus: wakes waiters on the other nodes (``broadcast``); nothing on one node.
        clock: all timing: TTLs, timeouts, sweeps.
        settings: defaults and limits.
        registry: when given, an agent that goes offline or is deregistered loses its leases
            and its waits (holder loss).
    """

    def __init__(
        self,
        store: Store,
        bus: Bus,
        clock: Clock,
        settings: LeaseSettings | None = None,
        *,
        registry: AgentRegistry | None = None,
    ) -> None:
        self._records = Records(store, bus, clock)
        self._clock = clock
        self.settings = settings or LeaseSettings()
        self.on_release: list[Callable[[str, list[str]], None]] = []
        """Told (holder, resources) whenever a lost holder's leases are released."""
        self._registry = registry
        self._events: EventStream | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._open = True
        self._records.start()
        self._spawn(self._sweeper(), "lease-sweeper")
        if self._registry is not None:
            self._events = self._registry.events()
            self._spawn(self._watch(self._events), "lease-holder-loss")

    async def close(self) -> None:
        self._open = False
        if self._events is not None:
            self._events.close()
        self._records.wake_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_open(self) -> None:
        if not self._open:
            raise ClosedError("the lease service is closed")

    # -- the API --------------------------------------------------------------------------

    async def acquire(
        self,
        resource: str,
        holder: str,
        *,
        ttl: float | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.NORMAL,
    ) -> Lease:
        """Take the lease on ``resource`` for ``holder``, waiting up to ``timeout`` seconds.

        Waiters are served by priority, then in request order. ``timeout=0`` tries once.

        Raises:
            LeaseTimeoutError: not granted in time (the wait is withdrawn).
            DeadlockError: this wait closed a cycle and had the lowest priority in it.
            InvalidInputError: a bad name, ``ttl`` or ``timeout``; nothing changed.
        """
        name = check_agent_id(resource, "resource")
        check_agent_id(holder, "holder")
        s = self.settings
        life = check_seconds(ttl, "ttl", s.default_ttl, s.max_ttl, zero=False)
        wait = check_seconds(timeout, "timeout", s.default_timeout, s.max_timeout, zero=True)
        rank = parse_priority(priority).value
        self._check_open()
        now = self._clock.time()
        ticket = new_id()
        waiter = Waiter(
            ticket=ticket,
            holder=holder,
            priority=rank,
            requested_at=now,
            deadline=now + wait,
            ttl=life,
        )
        r = await self._records.update(name, lambda x: state.request(x, waiter, self._clock.time()))
        settled = False
        try:
            lease = await self._wait(name, ticket, r, wait)
            settled = True
            return lease
        except (LeaseTimeoutError, DeadlockError, ConflictError):
            settled = True  # the wait is withdrawn already
            raise
        finally:
            if not settled:  # cancelled or closed: leave nothing behind
                await asyncio.shield(self._abandon(name, ticket))

    @contextlib.asynccontextmanager
    async def hold(
        self,
        resource: str,
        holder: str,
        *,
        ttl: float | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.NORMAL,
    ) -> AsyncIterator[Lease]:
        """``async with leases.hold("dock-1", "amr-7") as lease:``: acquire, release at exit
        (a lease that expired meanwhile is not an error at exit)."""
        lease = await self.acquire(resource, holder, ttl=ttl, timeout=timeout, priority=priority)
        try:
            yield lease
        finally:
            with contextlib.suppress(ConflictError):
                await self.release(resource, holder, lease.token)

    async def renew(
        self, resource: str, holder: str, token: int, *, ttl: float | None = None
    ) -> Lease:
        """Extend a held lease to now + ``ttl``; the token stays the same.

        Raises:
            FencedError: ``holder`` no longer holds the lease with ``token``.
        """
        name = check_agent_id(resource, "resource")
        check_agent_id(holder, "holder")
        life = check_seconds(
            ttl, "ttl", self.settings.default_ttl, self.settings.max_ttl, zero=False
        )
        self._check_open()
        r = await self._records.update(
            name, lambda x: state.renew(x, holder, token, life, self._clock.time())
        )
        return state.lease_of(r)

    async def release(self, resource: str, holder: str, token: int) -> None:
        """Give the lease back; the next waiter in line gets it at once.

        Raises:
            FencedError: ``holder`` does not hold the lease with ``token`` (nothing changes).
        """
        name = check_agent_id(resource, "resource")
        check_agent_id(holder, "holder")
        self._check_open()
        await self._records.update(
            name, lambda x: state.release(x, holder, token, self._clock.time())
        )

    async def release_all(self, holder: str, *, before: float | None = None) -> int:
        """``holder`` is gone: release its leases (those acquired at or before ``before``,
        default now) and fail its waits. Returns how many leases were released."""
        cutoff = self._clock.time() if before is None else before
        released: list[str] = []
        for r in await self._records.store.load_resources():
            if r.holder != holder and all(w.holder != holder for w in r.waiters):
                continue
            new = await self._records.update(
                r.name, lambda x: state.drop_holder(x, holder, cutoff, self._clock.time())
            )
            if r.holder == holder and new.ticket != r.ticket:
                released.append(r.name)
        if released:
            log.info("leases of a lost holder released", extra={"holder": holder, "n": released})
            for listener in self.on_release:
                listener(holder, released)
        return len(released)

    async def get(self, resource: str) -> LeaseState:
        """The resource's holder, last token and queue (free and token 0 if never leased)."""
        name = check_agent_id(resource, "resource")
        r = await self._records.store.load_resource(name) or Resource(name=name)
        return LeaseState.of(state.settle(r, self._clock.time()))

    async def list(self) -> list[LeaseState]:
        """Every resource ever leased, by name."""
        now = self._clock.time()
        found = await self._records.store.load_resources()
        return [LeaseState.of(state.settle(r, now)) for r in sorted(found, key=lambda r: r.name)]

    # -- waiting --------------------------------------------------------------------------

    async def _wait(self, name: str, ticket: str, r: Resource, timeout: float) -> Lease:
        looked = False
        while True:
            got = state.outcome(r, ticket)
            if isinstance(got, Lease):
                return got
            if got is None:
                raise self._timeout(r, timeout)
            if got.failed is not None:
                await self._records.update(
                    name, lambda x: state.cancel(x, ticket, self._clock.time())
                )
                if got.failed == "deadlock":
                    raise DeadlockError(got.reason, resource=name, holder=got.holder)
                raise ConflictError(got.reason, resource=name, holder=got.holder, reason=got.failed)
            now = self._clock.time()
            if now >= got.deadline:
                r = await self._records.update(
                    name, lambda x: state.cancel(x, ticket, self._clock.time())
                )
                granted = state.outcome(r, ticket)  # a grant that won the race still counts
                if isinstance(granted, Lease):
                    return granted
                raise self._timeout(r, timeout)
            if not looked:
                looked = True
                await self._break_deadlocks(await self._records.store.load_resources())
            else:
                until = min(got.deadline, now + self.settings.check_interval)
                if r.holder is not None:
                    until = min(until, r.expires_at)
                await self._records.sleep(name, ticket, until - now)
                self._check_open()
            r = await self._records.update(name, lambda x: state.settle(x, self._clock.time()))

    def _timeout(self, r: Resource, timeout: float) -> LeaseTimeoutError:
        ahead = f", {len(r.waiters)} waiting" if r.waiters else ""
        held = f"held by {r.holder!r} (token {r.token}){ahead}" if r.holder else "busy"
        return LeaseTimeoutError(
            f"lease on {r.name!r} not granted within {timeout:g} s: {held}",
            resource=r.name,
            timeout=timeout,
            held_by=r.holder,
        )

    async def _cancel(self, name: str, ticket: str) -> Resource:
        return await self._records.update(
            name, lambda x: state.cancel(x, ticket, self._clock.time())
        )

    async def _abandon(self, name: str, ticket: str) -> None:
        """Withdraw a wait whose caller went away; release the lease if it was granted."""
        try:
            r = await self._records.update(
                name, lambda x: state.cancel(x, ticket, self._clock.time())
            )
            got = state.outcome(r, ticket)
            if isinstance(got, Lease):
                await self._records.update(
                    name, lambda x: state.release(x, got.holder, got.token, self._clock.time())
                )
        except FleetchatError:
            log.warning("could not withdraw an abandoned lease wait", extra={"resource": name})

    async def _break_deadlocks(self, resources: builtins.list[Resource]) -> None:
        for victim in find_victims(resources):
            log.warning(
                "lease deadlock broken",
                extra={"resource": victim.resource, "holder": victim.holder},
            )
            await self._records.update(
                victim.resource,
                lambda x, v=victim: state.fail(x, v.ticket, "deadlock", v.message()),  # type: ignore[misc]
            )

    # -- background -----------------------------------------------------------------------

    async def sweep(self) -> None:
        """One pass of the sweeper: expire what is due, break deadlocks."""
        now = self._clock.time()
        found = await self._records.store.load_resources()
        for r in found:
            if state.settle(r, now) is not r:
                await self._records.update(r.name, lambda x: state.settle(x, self._clock.time()))
        await self._break_deadlocks([state.settle(r, now) for r in found])

    async def _sweeper(self) -> None:
        while True:
            await self._clock.sleep(self.settings.check_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("lease sweep failed")

    async def _watch(self, events: EventStream) -> None:
        async for event in events:
            if event.kind not in ("offline", "deregistered"):
                continue
            try:
                await self.release_all(event.agent_id, before=event.at)
            except Exception:
                log.exception("releasing a lost holder's leases failed")
