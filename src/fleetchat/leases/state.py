"""The lease state machine of one named resource, as pure functions on immutable records.

A :class:`Resource` is what the Store keeps per name: the current holder (if any), the last
fencing token issued, and the queue of waiters. Every change is a pure function from the old
record to a new one (or the same object when nothing changes), so the service can apply it as
a compare-and-set on the store, and retry it on a conflict, whichever hub node runs it. The
functions never read a clock: ``now`` is passed in.

The queue is ordered by priority first (critical, high, normal, low), then by request time:
FIFO within a priority. A free resource goes to the first waiter still in time; it is granted
*in the store*, by whoever frees it (a release, an expiry), so no waiter can jump the queue by
being woken first.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from fleetchat.errors import FencedError
from fleetchat.types import PRIORITY_RANK

__all__ = [
    "Lease",
    "LeaseState",
    "Resource",
    "WaitInfo",
    "Waiter",
    "cancel",
    "drop_holder",
    "fail",
    "release",
    "renew",
    "request",
    "settle",
]

_replace = msgspec.structs.replace


class Waiter(msgspec.Struct, frozen=True, kw_only=True):
    """One acquire waiting in a resource's queue."""

    ticket: str
    """Unique per acquire call: tells two waits of one holder apart, and names the grant."""
    holder: str
    priority: str
    requested_at: float
    deadline: float
    """Wall-clock time at which the acquire gives up; a waiter past it is never granted."""
    ttl: float
    """The lease's time to live once granted, in seconds."""
    failed: str | None = None
    """An error code (``deadlock``, ``holder_lost``): the wait is to fail with it. The node
    running the acquire raises it and removes the waiter; nobody grants it meanwhile."""
    reason: str = ""
    """The message of that error."""


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    """The stored record of one resource. It is never deleted: ``token`` must keep growing."""

    name: str
    version: int = 0
    """Compare-and-set version: 0 before the first save, then one more per save."""
    token: int = 0
    """The last fencing token issued (the current holder's, while held)."""
    holder: str | None = None
    ticket: str | None = None
    """The ticket of the acquire that was granted the lease."""
    priority: str = "normal"
    acquired_at: float = 0.0
    expires_at: float = 0.0
    ttl: float = 0.0
    waiters: tuple[Waiter, ...] = ()


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A granted lease: hand ``token`` to whatever the resource guards, with every command."""

    resource: str
    holder: str
    token: int
    """Fencing token: larger than every token issued for this resource before."""
    acquired_at: float
    expires_at: float
    """Wall-clock time the lease ends unless renewed."""
    ttl: float


class WaitInfo(msgspec.Struct, frozen=True, kw_only=True):
    holder: str
    priority: str
    requested_at: float
    deadline: float


class LeaseState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``get`` and ``list`` show of a resource."""

    resource: str
    holder: str | None
    token: int
    """The last token issued (the holder's, while held; 0: never leased)."""
    acquired_at: float | None
    expires_at: float | None
    waiting: list[WaitInfo]
    """The queue, in the order it is served."""

    @classmethod
    def of(cls, r: Resource) -> LeaseState:
        held = r.holder is not None
        return cls(
            resource=r.name,
            holder=r.holder,
            token=r.token,
            acquired_at=r.acquired_at if held else None,
            expires_at=r.expires_at if held else None,
            waiting=[
                WaitInfo(
                    holder=w.holder,
                    priority=w.priority,
                    requested_at=w.requested_at,
                    deadline=w.deadline,
                )
                for w in r.waiters
                if w.failed is None
            ],
        )


def lease_of(r: Resource) -> Lease:
    """The lease ``r`` holds now (it must be held)."""
    assert r.holder is not None
    return Lease(
        resource=r.name,
        holder=r.holder,
        token=r.token,
        acquired_at=r.acquired_at,
        expires_at=r.expires_at,
        ttl=r.ttl,
    )


def queue_key(w: Waiter) -> tuple[int, float, str]:
    """Serving order: priority, then request time (FIFO), then ticket (a stable tie-break)."""
    return (PRIORITY_RANK.get(w.priority, 2), w.requested_at, w.ticket)


def _sorted(waiters: Iterable[Waiter]) -> tuple[Waiter, ...]:
    return tuple(sorted(waiters, key=queue_key))


def _grant(r: Resource, w: Waiter, now: float) -> Resource:
    return _replace(
        r,
        token=r.token + 1,
        holder=w.holder,
        ticket=w.ticket,
        priority=w.priority,
        acquired_at=now,
        expires_at=now + w.ttl,
        ttl=w.ttl,
        waiters=tuple(x for x in r.waiters if x.ticket != w.ticket),
    )


def _free(r: Resource) -> Resource:
    return _replace(r, holder=None, ticket=None, acquired_at=0.0, expires_at=0.0, ttl=0.0)


def settle(r: Resource, now: float) -> Resource:
    """Apply time: expire a lease past its ``expires_at``, drop waiters past their deadline,
    and grant a free resource to the first waiter in line. ``r`` itself if nothing is due."""
    out = r
    if out.holder is not None and out.expires_at <= now:
        out = _free(out)
    if any(w.deadline < now for w in out.waiters):
        out = _replace(out, waiters=tuple(w for w in out.waiters if w.deadline >= now))
    if out.holder is None:
        first = next((w for w in out.waiters if w.failed is None), None)
        if first is not None:
            out = _grant(out, first, now)
    return out


def request(r: Resource, w: Waiter, now: float) -> Resource:
    """Ask for the lease: granted at once when free and nobody is ahead, else queued.

    The holder asking again gets the lease again at once with a new token (its old token
    is stale from then on), without waiting behind the queue it is already ahead of.
    """
    r = settle(r, now)
    if r.holder is None or r.holder == w.holder:  # free after settle: nobody eligible waits
        return _grant(r, w, now)
    return _replace(r, waiters=_sorted((*r.waiters, w)))


def _check_holder(r: Resource, holder: str, token: int, now: float, what: str) -> None:
    if r.holder != holder or r.token != token or r.expires_at <= now:
        if r.holder == holder and r.token == token:
            why = "it expired"
        elif r.token > token and r.holder is not None:
            why = f"{r.holder} holds it now with token {r.token}"
        else:
            why = "it is not held with this token"
        raise FencedError(
            f"cannot {what} the lease on {r.name!r} for {holder!r} with token {token}: {why}",
            resource=r.name,
            holder=holder,
            token=token,
            current_token=r.token,
        )


def renew(r: Resource, holder: str, token: int, ttl: float, now: float) -> Resource:
    """Extend a held lease to ``now + ttl``, keeping its token.

    Raises:
        FencedError: ``holder`` does not hold the lease with ``token`` (it expired, was
            released, or passed to someone else). A lease past ``expires_at`` is lost even if
            no one took it yet: its holder may already have been treated as gone.
    """
    _check_holder(r, holder, token, now, "renew")
    return _replace(r, expires_at=now + ttl, ttl=ttl)


def release(r: Resource, holder: str, token: int, now: float) -> Resource:
    """Give the lease back; the next waiter in line gets it.

    Raises:
        FencedError: as :func:`renew` (an expired lease cannot be released: it already was).
    """
    _check_holder(r, holder, token, now, "release")
    return settle(_free(r), now)


def cancel(r: Resource, ticket: str, now: float) -> Resource:
    """Withdraw the wait ``ticket`` (a timeout, a cancelled call, a failed wait picked up)."""
    if not any(w.ticket == ticket for w in r.waiters):
        return r
    return settle(_replace(r, waiters=tuple(w for w in r.waiters if w.ticket != ticket)), now)


def fail(r: Resource, ticket: str, code: str, reason: str) -> Resource:
    """Mark the wait ``ticket`` to fail with ``code`` (no one grants it from now on)."""
    if not any(w.ticket == ticket and w.failed is None for w in r.waiters):
        return r
    return _replace(
        r,
        waiters=tuple(
            _replace(w, failed=code, reason=reason) if w.ticket == ticket else w for w in r.waiters
        ),
    )


def drop_holder(r: Resource, holder: str, before: float, now: float) -> Resource:
    """``holder`` is gone: release its lease if acquired at or before ``before`` (not one it
    took after coming back), and fail its waits; the next waiter gets the resource."""
    out = r
    if out.holder == holder and out.acquired_at <= before:
        out = _free(out)
    for w in out.waiters:
        if w.holder == holder and w.requested_at <= before:
            out = fail(out, w.ticket, "holder_lost", f"{holder!r} went offline while waiting")
    return settle(out, now) if out is not r else r


def outcome(r: Resource, ticket: str) -> Waiter | Lease | None:
    """Where the acquire ``ticket`` stands: its Lease when granted, its Waiter while queued
    (check ``failed``), None when it is gone (timed out, withdrawn, or its lease ended)."""
    if r.ticket == ticket and r.holder is not None:
        return lease_of(r)
    return next((w for w in r.waiters if w.ticket == ticket), None)
