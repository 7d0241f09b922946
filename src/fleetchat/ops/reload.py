"""Live configuration: reload the settings file, or change settings over the API, without a
restart (docs/operations.md#live-configuration).

A new configuration is checked whole first: any problem refuses all of it (every problem
listed) and the running settings stay as they were. What can change live does at once (QoS
and retry budgets, limits, thresholds, scheduling and scaling policies, backups); what is
bound at start (the backend URLs, storage, the listening server, metrics and tracing) is
reported as needing a restart and left as it runs. Each change is recorded on ``$ops``
(``type: config``) with its old and new values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from fleetchat.config import (
    HubSettings,
    build_settings,
    load_settings,
    merge_tree,
    settings_tree,
)

if TYPE_CHECKING:
    from fleetchat.hub import Hub

__all__ = ["ConfigChange", "Reconfigurer", "ReloadResult"]

log = logging.getLogger(__name__)

RESTART_ONLY = (
    "url",
    "store_url",
    "storage",
    "server",
    "telemetry",
)
"""Settings read once at start: a change to them takes a restart."""
_SECRET = ("token", "password", "secret")


class ConfigChange(msgspec.Struct, kw_only=True):
    """One setting that changed (secrets shown as ``***``)."""

    path: str
    old: Any
    new: Any


class ReloadResult(msgspec.Struct, kw_only=True):
    """What a reload or live change did."""

    source: str
    """``file`` (the settings file, by ``fleetchat config reload`` or SIGHUP) or ``api``."""
    applied: list[ConfigChange]
    """In force now."""
    restart_required: list[ConfigChange]
    """Accepted, but taking effect only at the next start."""
    at: float


def _restart_only(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in RESTART_ONLY)


def _diff(old: Any, new: Any, path: str = "") -> list[ConfigChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[ConfigChange] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else key
            out.extend(_diff(old.get(key), new.get(key), sub))
        return out
    if old == new:
        return []
    if any(word in path.lower() for word in _SECRET):
        old, new = "***" if old else old, "***" if new else new
    return [ConfigChange(path=path, old=old, new=new)]


def _take(tree: dict[str, Any], source: dict[str, Any], path: str) -> None:
    """Set ``path`` of ``tree`` to its value in ``source``."""
    *parents, leaf = path.split(".")
    node, src = tree, source
    for part in parents:
        node, src = node[part], src[part]
    node[leaf] = src.get(leaf)


class Reconfigurer:
    """Applies new settings to a running hub; ``hub.ops.config``."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.file: Path | None = None
        """The settings file the hub was started from (set by ``fleetchat serve``)."""
        self.overrides: dict[str, Any] = {}
        """Settings given on the command line; they keep precedence over the file."""

    def current(self) -> dict[str, Any]:
        """The running settings as a tree, secrets shown as ``***``."""
        tree = settings_tree(self._hub.settings)
        tokens = tree.get("server", {}).get("tokens")
        if tokens:
            tree["server"]["tokens"] = ["***"] * len(tokens)
        return tree

    async def reload(self) -> ReloadResult:
        """Read the settings file (and environment, and command-line settings) again.

        Raises:
            ConfigError: the file is unreadable or invalid (every problem listed); nothing
                changed.
        """
        new = load_settings(self.file, overrides=self.overrides)
        return await self.apply(new, "file")

    async def change(self, changes: dict[str, Any]) -> ReloadResult:
        """Change some settings live: ``changes`` is a partial tree, e.g.
        ``{"chat": {"qos": {"normal": {"max_attempts": 5}}}}``.

        Raises:
            ConfigError: a change is invalid (every problem listed); nothing changed.
        """
        tree = settings_tree(self._hub.settings)
        merged = merge_tree(tree, changes)
        return await self.apply(build_settings(merged), "api")

    async def apply(self, new: HubSettings, source: str) -> ReloadResult:
        """Put ``new`` (already valid) in force, but for what only a restart can change."""
        hub = self._hub
        old_tree, new_tree = settings_tree(hub.settings), settings_tree(new)
        changes = _diff(old_tree, new_tree)
        applied = [c for c in changes if not _restart_only(c.path)]
        later = [c for c in changes if _restart_only(c.path)]
        if later:  # keep what runs: the file's value waits for the next start
            for c in later:
                _take(new_tree, old_tree, c.path)
            new = build_settings(new_tree)
        if applied:
            hub.reconfigure(new)
        result = ReloadResult(
            source=source, applied=applied, restart_required=later, at=hub.clock.time()
        )
        if changes:
            log.warning(
                "settings changed",
                extra={
                    "source": source,
                    "applied": [c.path for c in applied],
                    "restart_required": [c.path for c in later],
                },
            )
            await hub.ops.journal.record("config", msgspec.to_builtins(result))
        return result
