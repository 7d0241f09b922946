"""The ``fleetchat`` command line."""

from fleetchat.cli.app import app, main

__all__ = ["app", "main"]
