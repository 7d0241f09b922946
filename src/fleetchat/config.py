"""Settings. Defaults are the customer's numbers (see docs/configuration.md).

Settings are frozen dataclasses. They are built, lowest precedence first, from the defaults, a
TOML file, ``FLEETCHAT_*`` environment variables and explicit overrides (the CLI's flags), with
:func:`load_settings`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fleetchat.errors import ConfigError
from fleetchat.leases.settings import LeaseSettings
from fleetchat.ops.settings import (
    BackupSettings,
    HealthSettings,
    ScalingSettings,
    TelemetrySettings,
    check_positive,
)
from fleetchat.types import Priority

__all__ = [
    "ChatSettings",
    "HubSettings",
    "QosSettings",
    "RegistrySettings",
    "ServerSettings",
    "StorageSettings",
    "TaskSettings",
    "WorkflowSettings",
    "build_settings",
    "load_settings",
    "merge_tree",
    "settings_tree",
]


@dataclass(frozen=True, slots=True)
class QosSettings:
    """Delivery quality of service for one priority level."""

    ack_timeout: float = 5.0
    """Seconds a member has to ack a delivery before the attempt counts as failed. Default 5."""
    max_attempts: int = 3
    """Delivery attempts in all (first try included) before the dead-letter channel. Default 3."""
    backoff_base: float = 0.1
    """Seconds before the second attempt; doubles for every further attempt. Default 0.1."""
    backoff_max: float = 5.0
    """Upper bound of the retry backoff, in seconds. Default 5."""

    def __post_init__(self) -> None:
        check_positive(self, "ack_timeout", "backoff_base", "backoff_max")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1", field="max_attempts")

    def backoff(self, failed_attempts: int) -> float:
        """Delay before the attempt after ``failed_attempts`` failures: base x 2^(n-1), capped."""
        return float(min(self.backoff_base * 2 ** (failed_attempts - 1), self.backoff_max))


def _default_qos() -> dict[Priority, QosSettings]:
    return {p: QosSettings() for p in Priority}


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """Channels, delivery and request/reply."""

    qos: dict[Priority, QosSettings] = field(default_factory=_default_qos)
    """QoS per priority level. Default: 5 s ack timeout, 3 attempts, backoff 0.1 s .. 5 s."""
    max_body_bytes: int = 1024 * 1024
    """Largest message body, measured JSON-encoded, in bytes. Default 1 MiB."""
    member_queue_limit: int = 1000
    """Deliveries held in memory per member (queued + unacked). Beyond it a durable channel's
    backlog stays in its log and is paged in as the member catches up. Default 1000."""
    fetch_batch: int = 256
    """Most deliveries handed to a consumer at once. Default 256."""
    request_timeout: float = 5.0
    """Default request/reply timeout in seconds. Default 5."""
    history_limit: int = 1000
    """Most messages one history call returns. Default 1000."""
    retention_count: int = 100_000
    """Default number of messages a new channel keeps. Default 100,000."""
    retention_age: float | None = None
    """Default age in seconds after which messages leave a new channel's history. Default none."""
    ephemeral_retention_count: int = 10_000
    """Default number of messages an ephemeral channel keeps in memory. Default 10,000."""
    publish_timeout: float = 5.0
    """Longest a publish waits for room (commit backlog or a blocking channel). Default 5 s."""

    def __post_init__(self) -> None:
        missing = [str(p) for p in Priority if p not in self.qos]
        if missing:
            raise ConfigError(f"chat.qos lacks {', '.join(missing)}", field="qos")
        check_positive(
            self,
            "max_body_bytes",
            "member_queue_limit",
            "fetch_batch",
            "request_timeout",
            "history_limit",
            "retention_count",
            "ephemeral_retention_count",
            "publish_timeout",
        )

    def qos_for(self, priority: Priority | str) -> QosSettings:
        return self.qos[Priority(priority)]


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Agents, heartbeats and matching."""

    heartbeat_interval: float = 1.0
    """Seconds between an agent's heartbeats. Default 1."""
    missed_heartbeats: int = 3
    """Heartbeats an agent may miss before it is offline. Default 3."""
    load_threshold: float = 0.8
    """An agent takes new work only while active/capacity is below this. Default 0.8."""
    min_confidence: float = 0.8
    """Lowest match score find_best_agents keeps. Default 0.8."""

    def __post_init__(self) -> None:
        check_positive(self, "heartbeat_interval", "missed_heartbeats", "load_threshold")
        if not 0 <= self.min_confidence <= 1:
            raise ConfigError("min_confidence must be in 0..1", field="min_confidence")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The embedded SQLite store."""

    sync: Literal["normal", "full"] = "normal"
    """``normal``: survives any process crash. ``full``: also survives power loss, one fsync per
    group commit. Default normal."""
    commit_max_batch: int = 1000
    """Most writes in one group-commit transaction. Default 1000."""
    max_pending_writes: int = 50_000
    """Writes waiting for a commit before publishers wait for room. Default 50,000."""
    cursor_flush_interval: float = 0.1
    """Seconds between saves of members' ack cursors. Default 0.1."""
    maintenance_interval: float = 1.0
    """Seconds between retention sweeps. Default 1."""

    def __post_init__(self) -> None:
        if self.sync not in ("normal", "full"):
            raise ConfigError("storage.sync must be normal or full", field="sync")
        check_positive(
            self,
            "commit_max_batch",
            "max_pending_writes",
            "cursor_flush_interval",
            "maintenance_interval",
        )


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The network hub: HTTP + WebSocket server (``fleetchat serve``)."""

    host: str = "127.0.0.1"
    """Address to listen on. Default 127.0.0.1 (use 0.0.0.0 for every interface)."""
    port: int = 8765
    """TCP port; 0 picks a free one. Default 8765."""
    tls_cert: str | None = None
    """PEM certificate file: serve https:// and wss://. Default none (plain HTTP)."""
    tls_key: str | None = None
    """PEM private key file for ``tls_cert``."""
    auth: bool = False
    """Require tokens on WebSocket hello and REST. Default off (development)."""
    tokens: dict[str, str] = field(default_factory=dict)
    """Agent id -> SHA-256 hex of its token, for tokens kept in the config file."""
    max_frame_bytes: int = 2 * 1024 * 1024
    """Largest WebSocket frame accepted, in bytes. Default 2 MiB."""
    default_window: int = 256
    """Unacked deliveries per connection when hello names none. Default 256."""
    max_window: int = 4096
    """Largest window a client may ask for. Default 4096."""
    max_bad_frames: int = 20
    """Bad frames in a row before the connection is closed (code 4002). Default 20."""
    frame_rate: float = 50_000.0
    """Frames per second a connection may send on average. Default 50,000."""
    frame_burst: float = 100_000.0
    """Frames a connection may send in a burst. Default 100,000."""
    slow_consumer_bytes: int = 16 * 1024 * 1024
    """Unsent bytes queued for one connection that make it a slow consumer. Default 16 MiB."""
    slow_consumer_seconds: float = 10.0
    """How long a connection may stay over ``slow_consumer_bytes`` before it is closed
    (code 4008). Default 10."""
    ws_ping_interval: float = 20.0
    """Seconds between WebSocket pings that detect dead peers. Default 20."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("server.port must be 0..65535", field="port")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("give both server.tls_cert and server.tls_key, or neither")
        check_positive(
            self,
            "max_frame_bytes",
            "default_window",
            "max_window",
            "max_bad_frames",
            "frame_rate",
            "frame_burst",
            "slow_consumer_bytes",
            "slow_consumer_seconds",
            "ws_ping_interval",
        )


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """Task allocation and scheduling; the defaults are the customer's (SPEC.md section 3).
    Eligibility (``registry.load_threshold``, ``registry.min_confidence``) is the registry's."""

    mode: Literal["best", "batch", "auction"] = "best"
    """Allocation of a task that names no mode: ``best`` (the top candidate now), ``batch``
    (an optimal assignment of the waiting tasks at once), ``auction`` (agents bid). Default
    best."""
    start_to_close: float = 30.0
    """Seconds from acceptance to result before an attempt times out. Default 30."""
    offer_timeout: float = 5.0
    """Seconds an agent has to accept an offer before the next candidate gets it. Default 5."""
    max_retries: int = 3
    """Attempts after a failed first one (failure, timeout, agent lost). Default 3."""
    retry_backoff: float = 0.5
    """Seconds before the first retry; doubled for each later one. Default 0.5."""
    retry_backoff_max: float = 10.0
    """Longest wait before a retry. Default 10."""
    auction_window: float = 2.0
    """Seconds agents have to bid after a call for proposals. Default 2."""
    preemption: bool = False
    """Whether a critical task that finds every suitable agent busy may take the place of a
    lower-priority task (which goes back to the queue, its retry budget untouched)."""
    reject_unsatisfiable: bool = True
    """Refuse at submission a task no registered agent could ever take (UnsatisfiableError);
    off: such a task waits for an agent that can."""

    def __post_init__(self) -> None:
        check_positive(
            self,
            "start_to_close",
            "offer_timeout",
            "retry_backoff",
            "retry_backoff_max",
            "auction_window",
        )
        if self.max_retries < 0:
            raise ConfigError("tasks.max_retries must be 0 or more", field="max_retries")

    def backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1 for the first)."""
        return float(min(self.retry_backoff * 2.0 ** max(retry - 1, 0), self.retry_backoff_max))


@dataclass(frozen=True, slots=True)
class WorkflowSettings:
    """The workflow engine."""

    retention: float = 7 * 86_400.0
    """Seconds a finished execution (and its events and channel) is kept. Default 7 days."""

    def __post_init__(self) -> None:
        check_positive(self, "retention")


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Everything the hub reads at start. ``url`` picks the backend."""

    url: str = "sqlite:///fleetchat.db"
    """Backend URL: ``sqlite:///path.db`` (default ``fleetchat.db``), ``memory://``, or the
    distributed bus ``nats://host:4222`` (several servers comma-separated)."""
    store_url: str | None = None
    """With a ``nats://`` bus: the store, ``postgresql://user@host:5432/db``. Every node of one
    hub uses the same. Without it a NATS hub keeps agents and tokens in memory (one node)."""
    chat: ChatSettings = field(default_factory=ChatSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    tasks: TaskSettings = field(default_factory=TaskSettings)
    leases: LeaseSettings = field(default_factory=LeaseSettings)
    workflows: WorkflowSettings = field(default_factory=WorkflowSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)


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
