"""``fleetchat scaling``. (Being written.)"""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the scaling commands to ``app``."""
