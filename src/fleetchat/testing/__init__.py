"""Public helpers for testing code that uses fleetchat."""

from fleetchat.testing.clock import FakeClock
from fleetchat.testing.eventually import assert_eventually

__all__ = ["FakeClock", "assert_eventually"]
