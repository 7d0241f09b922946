"""``fleetchat stats``. (Being written.)"""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``fleetchat stats`` to ``app``."""
