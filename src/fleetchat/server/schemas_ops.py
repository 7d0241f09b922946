"""Request and response bodies of the operations routes (rest_ops.py)."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["AgentPatch", "ConfigPatch", "OpsRecords", "SettingsTree"]


class OpsRecords(msgspec.Struct, kw_only=True):
    """Records of ``$ops`` (or alerts of ``$alerts``), oldest first."""

    records: list[dict[str, Any]]


class SettingsTree(msgspec.Struct, kw_only=True):
    """The running settings (tokens shown as ``***``)."""

    settings: dict[str, Any]


class ConfigPatch(msgspec.Struct, kw_only=True):
    """A live change: a partial settings tree, e.g. ``{"chat": {"qos": {"normal":
    {"max_attempts": 5}}}}``."""

    changes: dict[str, Any]


class AgentPatch(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What to change of an agent, live (absent: unchanged)."""

    capabilities: dict[str, float] | None = None
    capacity: int | None = None
    performance: float | None = None
    labels: dict[str, str] | None = None
