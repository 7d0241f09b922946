"""The autoscaler: metrics, policies, actuators (docs/operations.md#autoscaling).

(Being written: the skeleton below is the interface ``Operations`` calls.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetchat.ops.settings import ScalingSettings

if TYPE_CHECKING:
    from fleetchat.hub import Hub

__all__ = ["Autoscaler"]


class Autoscaler:
    """Evaluates the policies every ``interval`` on the leader and resizes the pools."""

    def __init__(self, hub: Hub, settings: ScalingSettings) -> None:
        self._hub = hub
        self.settings = settings

    async def start(self) -> None:
        """Called once the hub's services are open (every node)."""

    def lead(self, leading: bool) -> None:
        """Start (or stop) the loop."""

    async def close(self) -> None:
        """Stop the loop and the pools' worker processes."""

    def reconfigure(self, settings: ScalingSettings) -> None:
        self.settings = settings

    def signal(self, reason: str, **details: object) -> None:
        """A hint from failure detection (a backlog): evaluate soon, not at the next tick."""
