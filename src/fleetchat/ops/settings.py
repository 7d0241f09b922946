"""Settings of operations: health and failure detection, backups, autoscaling, telemetry.

They are sections of :class:`fleetchat.config.HubSettings` (``[health]``, ``[backup]``,
``[scaling]``, ``[telemetry]`` in the TOML file); every one can be changed on a running hub
with ``fleetchat config reload`` (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fleetchat.errors import ConfigError
from fleetchat.types import Priority

__all__ = [
    "BackupSettings",
    "HealthSettings",
    "PoolSettings",
    "ScalingSettings",
    "TelemetrySettings",
    "check_fraction",
    "check_positive",
]


def check_positive(settings: object, *names: str) -> None:
    """ConfigError unless each of ``names`` is a positive number (booleans are not)."""
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, not {value!r}", field=name)


def check_fraction(settings: object, *names: str) -> None:
    """ConfigError unless each of ``names`` is a number in 0..1."""
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"{name} must be in 0..1, not {value!r}", field=name)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Health checks and the failure-detection loop (docs/operations.md#health)."""

    interval: float = 5.0
    """Seconds between rounds of the failure-detection loop. A dropped connection or a passed
    heartbeat deadline is acted on at once, without waiting for the round. Default 5."""
    stalled_after: float = 30.0
    """A member whose oldest unacknowledged delivery is older than this is stalled. Default 30."""
    backlog_warn: int = 1000
    """Deliveries waiting for one member above which its channel has a backlog (a scaling
    signal). Default 1000."""
    queue_age_warn: float = 30.0
    """Seconds the oldest waiting delivery may wait before the queues are unhealthy. Default
    30."""
    dead_letter_growth: int = 100
    """New dead letters within one round above which the dead letters are unhealthy. Default
    100."""
    load_warn: float = 0.95
    """An agent's load (active tasks / capacity) above which it is reported busy. Default 0.95."""
    response_time_warn: float = 10.0
    """Mean task duration in seconds above which an agent is reported slow. Default 10."""
    db_write_warn: float = 0.1
    """Seconds a probe write may take before the database is reported slow. Default 0.1."""
    db_write_degrade: float = 1.0
    """Seconds a probe write may take before the hub degrades: it refuses new work of priority
    ``degrade_refuses`` and below with the error ``degraded``. Default 1."""
    disk_free_warn: float = 0.10
    """Fraction of the database's disk that must stay free before a warning. Default 0.10."""
    disk_free_degrade: float = 0.02
    """Fraction of the disk that must stay free before the hub degrades. Default 0.02."""
    degrade_refuses: Priority = Priority.LOW
    """While degraded, new messages and tasks of this priority and below are refused. Default
    low."""
    recovery_timeout: float = 10.0
    """Seconds a recovery may take before it escalates (an alert on ``$alerts`` and in the
    log). Default 10."""

    def __post_init__(self) -> None:
        check_positive(
            self,
            "interval",
            "stalled_after",
            "backlog_warn",
            "queue_age_warn",
            "dead_letter_growth",
            "load_warn",
            "response_time_warn",
            "db_write_warn",
            "db_write_degrade",
            "recovery_timeout",
        )
        check_fraction(self, "disk_free_warn", "disk_free_degrade")
        if self.db_write_degrade < self.db_write_warn:
            raise ConfigError(
                "db_write_degrade must be at least db_write_warn", field="db_write_degrade"
            )


@dataclass(frozen=True, slots=True)
class BackupSettings:
    """Online snapshots of the hub's state (docs/operations.md#backups)."""

    enabled: bool = True
    """Take a snapshot every ``interval`` seconds (on the leader). Default on."""
    interval: float = 300.0
    """Seconds between snapshots. Default 300 (5 minutes)."""
    directory: str = ""
    """Where snapshots go. Default: ``<database>.backups`` beside a SQLite hub's file, else
    ``fleetchat-backups`` in the working directory."""
    keep: int = 12
    """Snapshots kept; older ones are deleted after each new one. Default 12 (an hour)."""
    timeout: float = 3600.0
    """Seconds one snapshot may take before it is abandoned (and an alert raised). Default
    3600."""

    def __post_init__(self) -> None:
        check_positive(self, "interval", "keep", "timeout")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """One pool of agent workers the autoscaler sizes (``[scaling.pools.<name>]``)."""

    actuator: Literal["process", "command", "webhook"] = "process"
    """How the pool is resized: ``process`` starts and stops local worker processes running
    ``command``; ``command`` runs ``command`` with the desired count (``{count}`` in an argument,
    and ``FLEETCHAT_DESIRED`` in its environment); ``webhook`` POSTs the desired count to
    ``url``."""
    command: list[str] = field(default_factory=list)
    """The worker's command line (``process``) or the resize command (``command``)."""
    url: str = ""
    """The receiver of a ``webhook`` pool."""
    min: int = 0
    """Fewest instances. Default 0."""
    max: int = 10
    """Most instances. Default 10."""
    capability: str = ""
    """Queued tasks needing this capability count toward this pool ("" counts every task)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the worker processes (``process``) or of the resize command
    (``command``), on top of the hub's own. Default none."""
    timeout: float = 30.0
    """Seconds a resize command or webhook call may take before it counts as failed.
    Default 30."""
    stop_timeout: float = 10.0
    """Seconds a ``process`` worker has to exit after SIGTERM (to drain) before SIGKILL.
    Default 10."""
    cooldown_out: float | None = None
    """This pool's ``scaling.cooldown_out`` (seconds). Default: the section's."""
    cooldown_in: float | None = None
    """This pool's ``scaling.cooldown_in`` (seconds). Default: the section's."""

    def __post_init__(self) -> None:
        for name in ("min", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be a whole number, not {value!r}", field=name)
        if self.min < 0 or self.max < max(self.min, 1):
            raise ConfigError("a pool needs 0 <= min <= max and max >= 1", field="max")
        if self.actuator not in ("process", "command", "webhook"):
            raise ConfigError("actuator must be process, command or webhook", field="actuator")
        if self.actuator in ("process", "command") and not self.command:
            raise ConfigError(f"a {self.actuator} pool needs a command", field="command")
        if self.actuator == "webhook" and not self.url.startswith(("http://", "https://")):
            raise ConfigError("a webhook pool needs an http(s) url", field="url")
        check_positive(self, "timeout", "stop_timeout")
        for name in ("cooldown_out", "cooldown_in"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"{name} must not be negative", field=name)


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    """The autoscaler (docs/autoscaling.md). It runs when pools are configured, on the
    leading node."""

    interval: float = 30.0
    """Seconds between evaluations. Default 30."""
    cpu_high: float = 0.8
    """CPU utilisation above which a pool scales out, in proportion. Default 0.8."""
    queued_high: int = 100
    """Queued tasks above which a pool scales out. Default 100."""
    queued_per_instance: int = 50
    """One more instance per this many queued tasks. Default 50."""
    latency_high: float = 0.0
    """Mean seconds from queued to started (of the tasks started in the last minute) above
    which a pool scales out by one. Default 0: off."""
    idle_utilisation: float = 0.2
    """Utilisation below which (with nothing queued) a pool scales in by one. Default 0.2."""
    cooldown_out: float = 60.0
    """Seconds after a scale-out before the next scaling of the pool. Default 60."""
    cooldown_in: float = 300.0
    """Seconds after any scaling before a scale-in. Default 300."""
    signal_delay: float = 1.0
    """Seconds between a hint (a backlog found by failure detection, a worker that exited)
    and the evaluation it brings forward. Default 1."""
    pools: dict[str, PoolSettings] = field(default_factory=dict)
    """The pools, by name. None: the autoscaler does not run."""

    def __post_init__(self) -> None:
        check_positive(self, "interval", "queued_high", "queued_per_instance", "signal_delay")
        check_fraction(self, "cpu_high", "idle_utilisation")
        for name in ("cooldown_out", "cooldown_in", "latency_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must not be negative", field=name)

    def cooldowns(self, pool: PoolSettings) -> tuple[float, float]:
        """The pool's (out, in) cooldowns in seconds: its own, else the section's."""
        out = self.cooldown_out if pool.cooldown_out is None else pool.cooldown_out
        in_ = self.cooldown_in if pool.cooldown_in is None else pool.cooldown_in
        return out, in_


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Metrics and traces (docs/observability.md)."""

    metrics: bool = True
    """Serve Prometheus metrics at ``/metrics``. Default on."""
    tracing: bool = False
    """Record OpenTelemetry traces across publish, delivery, tasks and workflow steps, with the
    W3C ``traceparent`` carried in message headers. Default off."""
    otlp_endpoint: str = ""
    """Where to export traces (OTLP over HTTP, e.g. ``http://localhost:4318``); "" with
    ``tracing`` on keeps them in memory only."""
    service_name: str = "fleetchat"
    """The ``service.name`` of this hub's spans."""
    sample_ratio: float = 1.0
    """Fraction of new traces recorded (a message carrying a trace context follows it).
    Default 1."""
    keep_spans: int = 1000
    """Finished spans kept in memory (``hub.tracer.recent``) when ``otlp_endpoint`` is "".
    Default 1000."""
    trace_deliveries: bool = False
    """Also record a ``deliver`` span for each message handed to each member (a fan-out to N
    members makes N spans per message). Off, deliveries still carry the ``publish`` span's
    context, which consumers continue. Default off."""

    def __post_init__(self) -> None:
        check_fraction(self, "sample_ratio")
        check_positive(self, "keep_spans")
