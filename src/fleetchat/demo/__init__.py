"""``fleetchat demo``: an embedded hub and a simulated factory cell (docs/demo.md)."""

from __future__ import annotations

from fleetchat.demo.report import Report
from fleetchat.demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "Report", "run_demo"]
