"""The composition root: ``Hub.open(url)`` wires every service onto its backends."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlparse

import msgspec

from fleetchat.backends.local_bus import DLQ_CHANNEL, LocalBus
from fleetchat.backends.local_coord import LocalCoordinator
from fleetchat.backends.memory import MemoryLog, MemoryStore
from fleetchat.backends.ports import Bus, ChannelLog, Coordinator, Store
from fleetchat.backends.sqlite import SqliteDatabase, SqliteLog
from fleetchat.backends.sqlite_store import SqliteStore
from fleetchat.chat.channels import ChannelRegistry
from fleetchat.chat.metrics import DeliveryMetrics, MetricsSnapshot
from fleetchat.chat.publisher import Publisher
from fleetchat.chat.receipts import Receipts, ReceiptStream
from fleetchat.chat.requests import RequestRouter
from fleetchat.chat.subscription import Subscription
from fleetchat.config import HubSettings
from fleetchat.errors import ClosedError, ConfigError
from fleetchat.leases.service import LeaseService
from fleetchat.models import DeadLetter, Message
from fleetchat.ops.gate import AdmissionGate
from fleetchat.ops.runtime import Operations
from fleetchat.registry.agents import AgentRegistry
from fleetchat.registry.sync import RegistrySync
from fleetchat.tasks.runtime import TaskRuntime
from fleetchat.types import Clock, Priority, SystemClock, check_agent_id
from fleetchat.workflows.service import WorkflowService

if TYPE_CHECKING:
    from fleetchat.ops.tracing import HubTracer

__all__ = ["Hub", "parse_url"]

log = logging.getLogger(__name__)


def parse_url(url: str) -> tuple[Literal["memory", "sqlite", "nats"], Path | None]:
    """``memory://``, ``sqlite:///relative.db`` / ``sqlite:////absolute.db``, or
    ``nats://host:port`` (several servers comma-separated: the distributed bus).

    Raises:
        ConfigError: an unknown scheme or a missing path.
    """
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return "memory", None
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(
                f"{url!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db"
            )
        return "sqlite", Path(path)
    if parsed.scheme in ("nats", "tls"):
        return "nats", None
    if parsed.scheme in ("postgresql", "postgres"):
        raise ConfigError(
            f"{url!r} is a store URL: give the bus as the backend URL (nats://host:4222) and "
            "this as the store (--store / store_url)"
        )
    raise ConfigError(
        f"unknown backend URL {url!r}: use sqlite:///path.db, memory:// or nats://host:4222"
    )


def _distributed_store(url: str | None) -> tuple[Store, Any]:
    """The store of a NATS hub and the database to start before it (None: in memory)."""
    if not url:
        log.warning("no store URL: agents and tokens live in this node's memory only")
        return MemoryStore(), None
    if urlparse(url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"store URL {url!r}: use postgresql://user@host:5432/database")
    from fleetchat.backends.postgres import PostgresDatabase, PostgresStore

    db = PostgresDatabase(url)
    return PostgresStore(db), db


class Hub:
    """A fleetchat hub, embedded in this process.

    Use it as ``async with Hub.open("sqlite:///hub.db") as hub: ...``; the block starts every
    service and closes them in order on the way out.

    Attributes:
        channels: create, list, join, leave and read channels.
        registry: agents, capabilities, heartbeats, matching.
        metrics: delivery metrics; ``hub.metrics.snapshot()``.
        leases: leases on named shared resources (docs/leases.md).
        tasks: task submission, state and agents' reports (docs/tasks.md); ``scheduler`` offers
            them to agents on the leading node.
        workflows: workflow definitions and executions (docs/workflows.md).
        ops: health, failure detection, backups, autoscaling (docs/operations.md).
    """

    def __init__(self, settings: HubSettings | None = None, *, clock: Clock | None = None) -> None:
        self.settings = settings or HubSettings()
        self.clock: Clock = clock or SystemClock()
        kind, path = parse_url(self.settings.url)
        chat = self.settings.chat
        self._db: SqliteDatabase | None = None
        self.database_path: Path | None = path if kind == "sqlite" else None
        """The SQLite file of an embedded hub (None for other backends)."""
        self._pg: Any = None  # the PostgresDatabase of a distributed store
        self._receipts = Receipts()
        self.metrics = DeliveryMetrics(self.clock, self._receipts)
        self.bus: Bus
        store: Store
        self.coordinator: Coordinator
        if kind == "nats":
            from fleetchat.backends.nats_conn import import_nats

            import_nats()  # a clear hint when the extra is missing, before anything else
            from fleetchat.backends.nats_bus import NatsBus
            from fleetchat.backends.nats_coord import NatsCoordinator

            bus = NatsBus(
                self.settings.url,
                clock=self.clock,
                observer=self.metrics,
                settings=chat,
            )
            self.bus = bus
            self.coordinator = NatsCoordinator(self.settings.url, bus.node_id)
            self.coordinator.on_leadership(self._on_leadership)
            store, self._pg = _distributed_store(self.settings.store_url)
        else:
            log_: ChannelLog
            if kind == "sqlite":
                assert path is not None
                self._db = SqliteDatabase(path, self.settings.storage)
                log_ = SqliteLog(self._db, chat.publish_timeout)
                store = SqliteStore(self._db)
            else:
                log_ = MemoryLog(chat.retention_count)
                store = MemoryStore()
            self.bus = LocalBus(
                log_,
                clock=self.clock,
                observer=self.metrics,
                settings=chat,
                storage=self.settings.storage,
            )
            self.coordinator = LocalCoordinator(clock=self.clock)
            if self.settings.store_url:
                raise ConfigError(
                    "a separate store (store_url) goes with the distributed bus: give the bus "
                    "as nats://host:4222, or leave the store out for an embedded hub"
                )
        self.store = store
        self.channels = ChannelRegistry(self.bus, self.clock, chat)
        self.registry = AgentRegistry(store, self.clock, self.settings.registry)
        self._registry_sync = (
            RegistrySync(
                self.registry, self.bus, self.clock, self.settings.registry.heartbeat_interval
            )
            if kind == "nats"
            else None
        )
        self.gate = AdmissionGate()
        """Refuses new low-priority work while the hub is degraded (docs/operations.md)."""
        self._publisher = Publisher(self.bus, self.channels, self.clock, chat, self.gate)
        self.requests = RequestRouter(self.bus, self.channels, self.clock, chat, self.metrics)
        # -- leases: on the shared store; a lost holder (registry offline) loses its leases
        self.leases = LeaseService(
            store, self.bus, self.clock, self.settings.leases, registry=self.registry
        )
        # -- tasks: any node takes submissions and reports; the leader schedules
        self._tasks = TaskRuntime(
            store, self.bus, self.registry, self.clock, self.settings, self.channels
        )
        self.tasks = self._tasks.service
        self.tasks.gate = self.gate
        self.scheduler = self._tasks.scheduler
        # -- workflows: definitions and executions; the engine runs on the leader
        self.workflows = WorkflowService(self, store, self.bus, self.clock)
        # -- operations: health, failure detection, backups, autoscaling (docs/operations.md)
        self.ops = Operations(self)
        self.tracer: HubTracer | None = None
        """OpenTelemetry spans of this hub; None while tracing is off (docs/tracing.md)."""
        if self.settings.telemetry.tracing:  # OpenTelemetry is imported only when used
            from fleetchat.ops.tracing import HubTracer

            self.tracer = HubTracer(self.settings.telemetry)
            self._publisher.tracer = self.tracer
            self._tasks.trace(self.tracer)
        self._state: Literal["new", "open", "closed"] = "new"

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        settings: HubSettings | None = None,
        clock: Clock | None = None,
    ) -> Hub:
        """A hub on the backend ``url`` (default ``sqlite:///fleetchat.db``); start it with
        ``async with`` or ``await hub.start()``."""
        settings = settings or HubSettings()
        if url is not None:
            settings = dataclasses.replace(settings, url=url)
        return cls(settings, clock=clock)

    @property
    def state(self) -> Literal["new", "open", "closed"]:
        """``new`` until started, ``open`` while serving, then ``closed``."""
        return self._state

    async def start(self) -> None:
        if self._state != "new":
            raise ClosedError(f"the hub is {self._state}; open a new one")
        if self._db is not None:
            await self._db.start()
        if self._pg is not None:
            await self._pg.start()
        await self.store.start()
        await self.bus.start()
        await self.coordinator.start()
        await self.registry.start()
        if self._registry_sync is not None:
            self._registry_sync.start()
        await self.leases.start()
        await self._tasks.start(self.coordinator.is_leader)
        self._state = "open"
        await self.workflows.open(self.coordinator.is_leader)
        await self.ops.start(self.coordinator.is_leader)
        log.info("hub started", extra={"url": self.settings.url})

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self.requests.close()
        self._receipts.close()
        await self.ops.close()
        await self.workflows.close()
        await self._tasks.close()
        await self.leases.close()
        if self._registry_sync is not None:
            await self._registry_sync.close()
        await self.registry.close()
        await self.coordinator.close()
        await self.bus.close()
        await self.store.close()
        if self._db is not None:
            await self._db.close()
        if self._pg is not None:
            await self._pg.close()
        if self.tracer is not None:  # the last spans go out (a blocking flush: in a thread)
            await asyncio.to_thread(self.tracer.shutdown)

    def reconfigure(self, settings: HubSettings) -> None:
        """Put new settings in force now (see :mod:`fleetchat.ops.reload`, which checks them
        and keeps what only a restart can change): every service reads its section again."""
        self.settings = settings
        self.bus.settings = settings.chat
        self._publisher._settings = settings.chat
        self.requests._settings = settings.chat
        self.channels._settings = settings.chat
        self.registry.settings = settings.registry
        self.leases.settings = settings.leases
        self.tasks.reconfigure(settings.tasks, settings.registry)
        self.workflows.retention = settings.workflows.retention
        self.ops.reconfigure(settings)

    def _on_leadership(self, leading: bool, epoch: int) -> None:
        """The leader runs the singleton loops: the task scheduler (failure detection next)."""
        if self._state != "closed":
            log.info("leadership", extra={"leading": leading, "epoch": epoch})
            self._tasks.lead(leading)
            self.workflows.lead(leading)
            self.ops.lead(leading)

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- messaging --------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        body: Any,
        *,
        sender: str,
        priority: Priority | str = Priority.NORMAL,
        kind: str = "chat",
        expires_in: float | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Publish to a channel (or ``@agent`` inbox); see :meth:`Publisher.publish`."""
        if (
            channel.startswith("@")
            and self.bus.channel(channel) is None
            and channel[1:] in self.registry
        ):
            await self.channels.ensure_inbox(channel[1:])
        return await self._publisher.publish(
            channel,
            body,
            sender=sender,
            priority=priority,
            kind=kind,
            expires_in=expires_in,
            headers=headers,
            timeout=timeout,
        )

    async def subscribe(
        self, agent_id: str, *channels: str, batch_size: int | None = None
    ) -> Subscription:
        """Join ``channels`` (creating missing ones) and return the agent's delivery stream.

        The stream carries everything addressed to the agent, from every channel it is a member
        of and from its inbox ``@agent_id``, highest priority first.
        """
        check_agent_id(agent_id)
        await self.channels.ensure_inbox(agent_id)
        for name in channels:
            await self.channels.join(name, agent_id)
        return Subscription(
            self.bus, self.requests, agent_id, batch_size or self.settings.chat.fetch_batch
        )

    async def unsubscribe(self, agent_id: str, channel: str) -> bool:
        """Leave ``channel``; see :meth:`ChannelRegistry.leave`."""
        return await self.channels.leave(channel, agent_id)

    @overload
    async def request(
        self,
        target: str,
        body: Any,
        *,
        sender: str,
        timeout: float | None = ...,
        collect: Literal[False] = ...,
        priority: Priority | str = ...,
    ) -> Message: ...

    @overload
    async def request(
        self,
        target: str,
        body: Any,
        *,
        sender: str,
        timeout: float | None = ...,
        collect: Literal[True],
        priority: Priority | str = ...,
    ) -> list[Message]: ...

    async def request(
        self,
        target: str,
        body: Any,
        *,
        sender: str,
        timeout: float | None = None,
        collect: bool = False,
        priority: Priority | str = Priority.NORMAL,
    ) -> Message | list[Message]:
        """Ask an agent or a channel and wait for the reply; see :meth:`RequestRouter.request`."""
        if target.startswith("@") or self.bus.channel(target) is None:
            agent_id = target.removeprefix("@")
            if self.bus.channel(f"@{agent_id}") is None and agent_id in self.registry:
                await self.channels.ensure_inbox(agent_id)
        if collect:
            return await self.requests.request(
                target, body, sender=sender, timeout=timeout, collect=True, priority=priority
            )
        return await self.requests.request(
            target, body, sender=sender, timeout=timeout, priority=priority
        )

    def receipts(self, sender: str) -> ReceiptStream:
        """Receipts (delivered, dead_lettered, expired) for every delivery of ``sender``'s
        messages, from now on."""
        return self._receipts.open(check_agent_id(sender, "sender"))

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, oldest first."""
        return [letter for _, letter in await self.dead_letter_entries(limit=limit)]

    async def dead_letter_entries(self, *, limit: int = 100) -> list[tuple[int, DeadLetter]]:
        """The newest dead letters with their seq in ``$dlq`` (what replay takes), oldest first."""
        return [
            (m.seq, msgspec.convert(m.body, DeadLetter))
            for m in await self.bus.history(DLQ_CHANNEL, limit=limit, tail=True)
        ]

    def delivery_metrics(self) -> MetricsSnapshot:
        return self.metrics.snapshot()
