"""Leases on named shared resources (a dock, a door, an aisle): fencing tokens, FIFO and
priority-aware waiting, expiry on holder loss, deadlock detection. See docs/leases.md."""

from fleetchat.leases.deadlock import Victim, find_victims
from fleetchat.leases.service import LeaseService, LeaseSettings
from fleetchat.leases.state import Lease, LeaseState, Resource, Waiter, WaitInfo

__all__ = [
    "Lease",
    "LeaseService",
    "LeaseSettings",
    "LeaseState",
    "Resource",
    "Victim",
    "WaitInfo",
    "Waiter",
    "find_victims",
]
