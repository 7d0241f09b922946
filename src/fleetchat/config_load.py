"""Reading settings: from a TOML file, ``FLEETCHAT_*`` environment variables and overrides
into :class:`fleetchat.config.HubSettings`, checking every value and listing every problem.

Imported through :mod:`fleetchat.config` (``load_settings``, ``build_settings``,
``settings_tree``, ``merge_tree``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from fleetchat.config import HubSettings
from fleetchat.errors import ConfigError
from fleetchat.types import Priority

__all__ = ["build_settings", "load_settings", "merge_tree", "settings_tree"]

_INVALID: Any = object()
"""What a value that could not be read becomes while the rest is still checked."""


def _join(path: str, name: object) -> str:
    return f"{path}.{name}" if path else str(name)


def _coerce(tp: Any, value: Any, path: str, problems: list[dict[str, str]]) -> Any:
    """Convert a TOML or environment value to the annotated type ``tp``; a problem is added to
    ``problems`` (and ``_INVALID`` returned) instead of raising."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            problems.append({"path": path, "message": "expected a table"})
            return _INVALID
        return _build(tp, value, path, problems)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            problems.append({"path": path, "message": "expected a table"})
            return _INVALID
        out = {
            _coerce(key_tp, k, _join(path, k), problems): _coerce(
                val_tp, v, _join(path, k), problems
            )
            for k, v in value.items()
        }
        return _INVALID if _INVALID in out or _INVALID in out.values() else out
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        return _coerce(args[0], value, path, problems)
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append({"path": path, "message": f"must be one of {typing.get_args(tp)}"})
            return _INVALID
        return value
    try:
        if tp is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        if tp in (int, float) and isinstance(value, bool):
            raise TypeError
        return tp(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        problems.append({"path": path, "message": f"cannot read {value!r} as {name}"})
        return _INVALID


def _build(
    cls: type[Any], values: Mapping[str, Any], path: str, problems: list[dict[str, str]]
) -> Any:
    """``cls`` from ``values``, or ``_INVALID`` with every problem found added to
    ``problems`` (unknown keys, values of the wrong type, and the checks of ``cls`` itself)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    before = len(problems)
    for key in sorted(set(values) - names, key=str):
        problems.append({"path": _join(path, key), "message": "unknown setting"})
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if isinstance(value, Mapping) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if isinstance(default, dict) and default:
                # A partial table (one priority's QoS) keeps the defaults of the others.
                value = {**{str(k): v for k, v in default.items()}, **value}
        kwargs[f.name] = _coerce(hints[f.name], value, _join(path, f.name), problems)
    if len(problems) > before:
        return _INVALID
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        field_ = exc.details.get("field")
        problems.append(
            {
                "path": _join(path, field_) if field_ else path or "(top level)",
                "message": exc.message,
            }
        )
        return _INVALID


def build_settings(tree: Mapping[str, Any]) -> HubSettings:
    """HubSettings from a settings tree (TOML tables as dicts).

    Raises:
        ConfigError: every problem at once, in ``details["problems"]`` (``{"path",
            "message"}`` each); nothing is half-applied.
    """
    problems: list[dict[str, str]] = []
    settings = _build(HubSettings, tree, "", problems)
    if problems:
        listed = "; ".join(f"{p['path']}: {p['message']}" for p in problems)
        raise ConfigError(
            f"{len(problems)} problem(s) in the settings: {listed}",
            path=problems[0]["path"],
            problems=problems,
        )
    assert isinstance(settings, HubSettings)
    return settings


def settings_tree(settings: HubSettings) -> dict[str, Any]:
    """The settings as a plain tree (what ``build_settings`` takes back)."""
    tree: dict[str, Any] = _plain(dataclasses.asdict(settings))
    return tree


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Priority) else value


def merge_tree(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` laid over it, table by table."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_tree(out[k], v)
        else:
            out[k] = v
    return out


def _env_tree(env: Mapping[str, str]) -> dict[str, Any]:
    """``FLEETCHAT_CHAT__MAX_BODY_BYTES=2048`` -> ``{"chat": {"max_body_bytes": "2048"}}``."""
    tree: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("FLEETCHAT_") or key.startswith("FLEETCHAT_TEST_"):
            continue
        parts = key[len("FLEETCHAT_") :].lower().split("__")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load_settings(
    file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubSettings:
    """Build HubSettings: defaults < TOML ``file`` < ``FLEETCHAT_*`` env < ``overrides``.

    Raises:
        ConfigError: an unreadable file; or unknown keys, values of the wrong type or out of
            range, every one listed in ``details["problems"]``.
    """
    tree: dict[str, Any] = {}
    if file is not None:
        try:
            tree = tomllib.loads(Path(file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from exc
    # Only keys that name settings: FLEETCHAT_HUB, FLEETCHAT_TOKEN and the like belong to the CLI.
    known = {f.name for f in dataclasses.fields(HubSettings)}
    env_tree = _env_tree(os.environ if env is None else env)
    tree = merge_tree(tree, {k: v for k, v in env_tree.items() if k in known})
    tree = merge_tree(tree, overrides or {})
    return build_settings(tree)
