"""Bodies of the lease routes of the REST API (shared by the server and the SDK)."""

from __future__ import annotations

import msgspec

from fleetchat.leases.state import Lease, LeaseState
from fleetchat.types import Priority

__all__ = ["AcquireBody", "Lease", "LeaseList", "LeaseState", "ReleaseBody", "RenewBody"]


class AcquireBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    holder: str | None = None
    """The agent taking the lease. With auth on it is the token's agent (and may be left out)."""
    ttl: float | None = None
    """Seconds the lease lasts unless renewed (default 30)."""
    timeout: float | None = None
    """Seconds to wait for it (default 10; 0 tries once). The call returns when granted."""
    priority: Priority = Priority.NORMAL


class RenewBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token: int
    holder: str | None = None
    ttl: float | None = None


class ReleaseBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token: int
    holder: str | None = None


class LeaseList(msgspec.Struct, kw_only=True):
    leases: list[LeaseState]
