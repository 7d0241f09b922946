"""Leases from the SDK: ``agent.leases`` and ``HubClient.leases`` (REST under /v1/leases).

    async with agent.leases.hold("dock-1", ttl=30, timeout=10) as lease:
        await dock.command("open", fence=lease.token)

``acquire`` returns a :class:`HeldLease`: the lease's fields, ``renew()``, ``release()``, and
``async with`` (released at the end of the block; one that expired meanwhile is no error).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote

from fleetchat.errors import ConflictError
from fleetchat.server import schemas_leases as s
from fleetchat.types import Priority, parse_priority

if TYPE_CHECKING:
    from fleetchat.client.rest import HubClient

__all__ = ["HeldLease", "LeaseClient"]

_MARGIN = 5.0
"""Seconds an acquire's HTTP call may take beyond the lease timeout (the round trip)."""


def _path(resource: str, action: str = "") -> str:
    return f"/v1/leases/{quote(resource, safe='')}" + (f"/{action}" if action else "")


class HeldLease:
    """A lease this client holds; hand ``token`` to whatever the resource guards."""

    def __init__(self, client: LeaseClient, lease: s.Lease) -> None:
        self._client = client
        self.lease = lease

    @property
    def resource(self) -> str:
        return self.lease.resource

    @property
    def holder(self) -> str:
        return self.lease.holder

    @property
    def token(self) -> int:
        """The fencing token: larger than any token issued for this resource before."""
        return self.lease.token

    @property
    def expires_at(self) -> float:
        return self.lease.expires_at

    async def renew(self, ttl: float | None = None) -> HeldLease:
        """Extend to now + ``ttl``. FencedError if the lease was lost meanwhile."""
        self.lease = await self._client.renew(
            self.resource, self.token, ttl=ttl, holder=self.holder
        )
        return self

    async def release(self) -> None:
        """Give it back. FencedError if it was lost meanwhile."""
        await self._client.release(self.resource, self.token, holder=self.holder)

    async def __aenter__(self) -> HeldLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ConflictError):  # expired or taken over: nothing to give back
            await self.release()

    def __repr__(self) -> str:
        return f"HeldLease({self.resource!r}, holder={self.holder!r}, token={self.token})"


class LeaseClient:
    """Lease calls on a hub, as ``holder`` (None: the token's agent, with auth on)."""

    def __init__(self, rest: HubClient, holder: str | None = None) -> None:
        self._rest = rest
        self.holder = holder

    async def acquire(
        self,
        resource: str,
        *,
        ttl: float | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.NORMAL,
        holder: str | None = None,
    ) -> HeldLease:
        """Take the lease on ``resource``, waiting up to ``timeout`` s (default 10; 0: once).

        Raises:
            LeaseTimeoutError: not granted in time. DeadlockError: this wait closed a cycle
            and had the lowest priority in it (release what you hold and try again).
        """
        body = s.AcquireBody(
            holder=holder or self.holder,
            ttl=ttl,
            timeout=timeout,
            priority=parse_priority(priority),
        )
        wait = (10.0 if timeout is None else float(timeout)) + _MARGIN
        lease = await self._rest._call(
            "POST",
            _path(resource, "acquire"),
            s.Lease,
            body=body,
            timeout=max(wait, self._rest.timeout),
        )
        return HeldLease(self, lease)

    def hold(
        self,
        resource: str,
        *,
        ttl: float | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.NORMAL,
    ) -> _Holding:
        """``async with leases.hold("dock-1") as lease:``: acquire, and release at the end."""
        return _Holding(self.acquire(resource, ttl=ttl, timeout=timeout, priority=priority))

    async def renew(
        self, resource: str, token: int, *, ttl: float | None = None, holder: str | None = None
    ) -> s.Lease:
        body = s.RenewBody(token=token, holder=holder or self.holder, ttl=ttl)
        return await self._rest._call("POST", _path(resource, "renew"), s.Lease, body=body)

    async def release(self, resource: str, token: int, *, holder: str | None = None) -> None:
        body = s.ReleaseBody(token=token, holder=holder or self.holder)
        await self._rest._call("POST", _path(resource, "release"), body=body)

    async def get(self, resource: str) -> s.LeaseState:
        """The resource's holder, last token and queue."""
        return await self._rest._call("GET", _path(resource), s.LeaseState)

    async def list(self) -> list[s.LeaseState]:
        """Every resource ever leased."""
        out = await self._rest._call("GET", "/v1/leases", s.LeaseList)
        return out.leases


class _Holding:
    def __init__(self, acquiring: Awaitable[HeldLease]) -> None:
        self._acquiring = acquiring
        self._held: HeldLease | None = None

    async def __aenter__(self) -> HeldLease:
        held = self._held = await self._acquiring
        return held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held is not None:
            await self._held.__aexit__(exc_type, exc, tb)
