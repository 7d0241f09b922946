"""Settings. Defaults are the customer's numbers (see docs/configuration.md).

Settings are frozen dataclasses. They are built, lowest precedence first, from the defaults, a
TOML file, ``FLEETCHAT_*`` environment variables and explicit overrides (the CLI's flags), with
:func:`load_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


# Reading settings lives in config_load.py; it needs HubSettings, defined above.
from fleetchat.config_load import (  # noqa: E402
    build_settings,
    load_settings,
    merge_tree,
    settings_tree,
)
