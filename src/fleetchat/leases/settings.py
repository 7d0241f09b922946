"""Lease settings, and the check of the duration arguments (``ttl``, ``timeout``)."""

from __future__ import annotations

from dataclasses import dataclass

from fleetchat.errors import InvalidInputError

__all__ = ["LeaseSettings", "check_seconds"]


@dataclass(frozen=True)
class LeaseSettings:
    """Limits and defaults of leases."""

    default_ttl: float = 30.0
    """Seconds a lease lasts unless renewed, when the acquire names no ``ttl``. Default 30."""
    max_ttl: float = 3600.0
    """Longest ``ttl`` accepted, in seconds. Default 3600."""
    default_timeout: float = 10.0
    """Seconds an acquire waits when it names no ``timeout``. Default 10."""
    max_timeout: float = 300.0
    """Longest acquire ``timeout`` accepted, in seconds. Default 300."""
    check_interval: float = 1.0
    """Seconds between sweeps (expiry, deadlocks), and the longest a waiter goes without
    reading its resource again. Default 1."""


def check_seconds(value: object, field: str, default: float, high: float, *, zero: bool) -> float:
    """A duration argument: ``default`` for None; else a number in 0..high (0 only if
    ``zero``), or InvalidInputError."""
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (0 <= value <= high if zero else 0 < value <= high):  # type: ignore[operator]
        low = "0" if zero else "more than 0"
        raise InvalidInputError(f"{field} must be {low} to {high:g} seconds", field=field)
    return float(value)  # type: ignore[arg-type]
