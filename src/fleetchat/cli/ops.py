"""``fleetchat health`` and ``fleetchat config``. (Being written.)"""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``fleetchat health`` and ``fleetchat config`` to ``app``."""
