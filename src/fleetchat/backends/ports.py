"""The ports: what services need from storage and messaging, as Protocols.

Services talk to backends only through these. Implementations:

- ``ChannelLog``: ``MemoryLog`` (memory.py), ``SqliteLog`` (sqlite.py).
- ``Bus``: ``LocalBus`` (local_bus.py), in-process fan-out over a ChannelLog; ``NatsBus``
  (nats_bus.py), NATS JetStream: several hub nodes.
- ``Store``: ``MemoryStore``, ``SqliteStore``, ``PostgresStore`` (postgres.py).
- ``Coordinator``: ``LocalCoordinator`` (local_coord.py, one process), ``NatsCoordinator``
  (nats_coord.py, NATS KV: several hub nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

from fleetchat.models import AgentInfo, Channel, Message, TokenRecord

if TYPE_CHECKING:
    from fleetchat.backends.local_member import Batch
    from fleetchat.config import ChatSettings
    from fleetchat.leases.state import Resource
    from fleetchat.tasks.records import TaskRecord
    from fleetchat.workflows.records import DefinitionRecord, ExecutionEvent, ExecutionRecord

__all__ = [
    "Bus",
    "ChannelLog",
    "Coordinator",
    "CursorRecord",
    "DeliveryObserver",
    "MemberStats",
    "Store",
]


class CursorRecord(msgspec.Struct, array_like=True):
    """A member's progress in one channel: every seq <= floor is settled, plus ``above``."""

    member: str
    channel: str
    floor: int
    above: list[int] = []
    """Settled seqs above the floor (acks arrive out of order across priorities)."""
    retries: dict[str, int] = {}
    """Message id -> failed attempts so far, for messages being retried."""


class MemberStats(msgspec.Struct, kw_only=True):
    """One member's delivery queue on this node (what the health checks read)."""

    member: str
    queued: int
    """Deliveries waiting to be handed out (retries waiting for their backoff included)."""
    inflight: int
    """Handed out, not yet acked."""
    backlog: int
    """Committed in the member's channels but not yet paged into its queue."""
    oldest: float | None
    """``created_at`` of the oldest delivery waiting or in flight (None: nothing)."""
    consumers: int
    """Consumers attached (waiting for deliveries or holding some)."""


class ChannelLog(Protocol):
    """Channel definitions, membership, the ordered message log and cursors.

    ``append`` returns once the messages are committed; then ``on_commit`` (set by the bus)
    has been called with them, in sequence order.
    """

    durable: bool
    on_commit: Callable[[list[Message]], None]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def load_channels(self) -> list[Channel]: ...

    def load_members(self) -> list[tuple[str, str]]:
        """(channel, member) pairs."""
        ...

    def load_cursors(self) -> list[CursorRecord]: ...

    def last_seqs(self) -> dict[str, int]:
        """Newest committed seq per channel."""
        ...

    async def save_channel(self, channel: Channel) -> None: ...

    async def delete_channel(self, name: str) -> None: ...

    async def add_member(self, channel: str, member: str, cursor: CursorRecord) -> None: ...

    async def remove_member(self, channel: str, member: str) -> None: ...

    async def append(self, messages: list[Message], timeout: float = 5.0) -> None:
        """Commit ``messages``; waits at most ``timeout`` s for room in the write backlog."""
        ...

    def save_cursors(self, cursors: list[CursorRecord]) -> None:
        """Save cursors with the next commit (no wait: losing them only means redelivery)."""
        ...

    def read(self, channel: str, after_seq: int, limit: int) -> list[Message]:
        """Committed messages with seq > after_seq, in order."""
        ...

    def history(
        self,
        channel: str,
        *,
        start_seq: int | None,
        end_seq: int | None,
        since: float | None,
        until: float | None,
        limit: int,
    ) -> list[Message]: ...

    def first_seq(self, channel: str) -> int:
        """Oldest seq still held (1 when nothing was trimmed), last_seq + 1 when empty."""
        ...

    async def trim(self, channel: str, *, keep: int | None, older_than: float | None) -> int:
        """Drop messages beyond the retention; returns how many."""
        ...


class Store(Protocol):
    """Records that are not messages: agents now, tasks and workflows later."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self, node: str, now: float) -> None:
        """One small real write (the health check times it): ``node``'s row in a probe table.

        Raises:
            BackendError: the database refused or failed the write.
        """
        ...

    async def save_agent(self, agent: AgentInfo) -> None: ...

    async def delete_agent(self, agent_id: str) -> None: ...

    def load_agents(self) -> list[AgentInfo]: ...

    async def save_token(self, token: TokenRecord) -> None: ...

    async def delete_tokens(self, agent_id: str) -> int:
        """Revoke every token of ``agent_id``; returns how many."""
        ...

    def load_tokens(self) -> list[TokenRecord]: ...

    # Lease resources: the system of record of leases (fleetchat.leases), changed only by
    # compare-and-set, so that hub nodes sharing the store never grant one lease twice.

    async def load_resource(self, name: str) -> Resource | None:
        """The stored record of resource ``name`` (its ``version`` set), None if never saved."""
        ...

    async def load_resources(self) -> list[Resource]:
        """Every resource record, as one consistent snapshot (deadlock detection reads the
        wait-for graph from it)."""
        ...

    async def save_resource(self, resource: Resource, expected_version: int) -> bool:
        """Store ``resource`` as version ``expected_version + 1`` if the stored version is
        ``expected_version`` (0: no record yet); False, and nothing written, otherwise."""
        ...

    # Tasks: the system of record of the scheduler (fleetchat.tasks), changed only by
    # compare-and-set, so that one result wins however many nodes report one.

    async def load_task(self, task_id: str) -> TaskRecord | None:
        """The stored task (its ``version`` set), None if there is none."""
        ...

    async def find_task(self, idempotency_key: str) -> TaskRecord | None:
        """The task submitted with ``idempotency_key``, None if there is none."""
        ...

    async def load_tasks(
        self, *, active: bool = False, state: str | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Tasks oldest first: only unfinished ones with ``active``, only ``state`` with it,
        at most ``limit``."""
        ...

    async def save_task(self, task: TaskRecord, expected_version: int) -> bool:
        """Store ``task`` as version ``expected_version + 1`` if the stored version is
        ``expected_version`` (0: a new task, whose id and idempotency key are not taken); False,
        and nothing written, otherwise."""
        ...

    # Workflows: definitions (immutable per name and version) and executions, each saved by
    # compare-and-set together with the events that changed it (fleetchat.workflows).

    async def save_definition(self, record: DefinitionRecord) -> bool:
        """Store a new (name, version); False, and nothing written, if it exists."""
        ...

    async def update_definition(self, record: DefinitionRecord) -> None:
        """Replace an existing definition record (its ``deprecated`` flag)."""
        ...

    async def load_definitions(self) -> list[DefinitionRecord]: ...

    async def save_execution(
        self, record: ExecutionRecord, expected_version: int, events: Sequence[ExecutionEvent]
    ) -> bool:
        """Store ``record`` as version ``expected_version + 1`` and append ``events``, both or
        neither, if the stored version is ``expected_version`` (0: a new execution)."""
        ...

    async def load_execution(self, execution_id: str) -> ExecutionRecord | None: ...

    async def load_executions(
        self, *, status: str | None = None, name: str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        """Executions oldest first, filtered by ``status`` and definition ``name``."""
        ...

    async def load_execution_events(self, execution_id: str) -> list[ExecutionEvent]:
        """The execution's log, in order."""
        ...

    async def delete_execution(self, execution_id: str) -> None:
        """Drop a finished execution and its log (retention)."""
        ...


class DeliveryObserver(Protocol):
    """Told about every delivery outcome; metrics and receipts hang off it."""

    def on_published(self, messages: Sequence[Message]) -> None: ...

    def on_acked(
        self, member: str, messages: Sequence[Message], attempts: Sequence[int], now: float
    ) -> None:
        """``attempts[i]`` is the attempt on which ``messages[i]`` was acked."""
        ...

    def on_retry(self, member: str, message: Message, attempt: int, reason: str) -> None: ...

    def on_dead_letter(self, member: str, message: Message, attempts: int, reason: str) -> None: ...

    def on_expired(self, member: str, message: Message) -> None: ...

    def on_dropped(self, member: str, channel: str, count: int) -> None: ...


class Bus(Protocol):
    """Channel logs, fan-out, per-member queues with acks, transient messages."""

    settings: ChatSettings
    """Read at each use: replacing it changes QoS and limits live."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def channels(self) -> list[Channel]: ...

    def channel(self, name: str) -> Channel | None: ...

    def members(self, channel: str) -> list[str]: ...

    def is_member(self, channel: str, member: str) -> bool: ...

    def memberships(self, member: str) -> list[str]: ...

    async def create_channel(self, channel: Channel) -> Channel: ...

    async def delete_channel(self, name: str) -> None: ...

    async def add_member(self, channel: str, member: str) -> bool: ...

    async def remove_member(self, channel: str, member: str) -> bool: ...

    async def publish(self, messages: list[Message], timeout: float) -> list[Message]: ...

    def send_transient(self, message: Message, members: Sequence[str]) -> int: ...

    on_reply: Callable[[Message], bool]
    """Set by the request router: takes a reply that another hub node routed here."""

    def broadcast(self, topic: str, data: bytes) -> None:
        """Send ``data`` to every other node of the hub (nothing, with one node); at most once,
        in order per sender. For state every node keeps a copy of (the registry). ``topic`` is
        one word (no dots)."""
        ...

    def on_broadcast(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler`` with what other nodes broadcast on ``topic``."""
        ...

    def route_reply(self, request: Message, reply: Message) -> bool:
        """Send ``reply`` to the hub node where ``request`` was made, if that is another node
        (distributed buses); False when the request was made here (or there are no others)."""
        ...

    async def fetch(
        self, member: str, consumer: int, max_items: int, timeout: float | None
    ) -> Batch | None: ...

    def poll(self, member: str, consumer: int, max_items: int) -> Batch | None: ...

    def listen(self, member: str, consumer: int, callback: Callable[[], None] | None) -> None: ...

    def ack(self, batch: Batch, index: int | None = None) -> int: ...

    def nack(
        self,
        batch: Batch,
        index: int | None = None,
        *,
        delay: float | None = None,
        dead_letter: bool = False,
    ) -> int: ...

    def detach(self, member: str, consumer: int) -> None: ...

    def settle_through(self, member: str, channel: str, seq: int) -> int: ...

    def member_stats(self) -> list[MemberStats]:
        """The delivery queue of every member served by this node."""
        ...

    def park_stalled(self, member: str, older_than: float) -> int:
        """Dead-letter (reason ``stalled``) ``member``'s queued deliveries committed before
        ``older_than``; returns how many."""
        ...

    async def purge(self, channel: str) -> int: ...

    async def history(
        self,
        channel: str,
        *,
        start_seq: int | None = None,
        end_seq: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        tail: bool = False,
    ) -> list[Message]:
        """Committed messages of ``channel``, oldest first, with ``start_seq <= seq <= end_seq``
        and ``since <= created_at <= until`` (each bound inclusive, ``None``: unbounded).

        At most ``limit`` messages: the oldest ones that match, or with ``tail=True`` the
        newest ones that match (still returned oldest first), e.g. the last 100 messages of a
        channel without knowing its seqs. Asynchronous because a distributed backend reads
        history over the network.
        """
        ...


class Coordinator(Protocol):
    """Leader election with fencing epochs, presence keys with a TTL, and named locks.

    Exactly one node of a hub is the leader at a time and runs the singleton loops (scheduling,
    failure detection). Leadership has an ``epoch`` that grows with every change of leader; a
    write made for the leader carries it, and ``check_epoch`` refuses a stale one, so a leader
    that was paused past its lease and comes back cannot act on what it believed.
    """

    node_id: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def is_leader(self) -> bool:
        """True while this node holds a lease on leadership that has not run out (monotonic
        clock, with a safety margin: a node stops believing before the others can elect)."""
        ...

    @property
    def epoch(self) -> int:
        """The fencing epoch of this node's leadership; 0 when it is not the leader."""
        ...

    def on_leadership(self, callback: Callable[[bool, int], None]) -> None:
        """Call ``callback(is_leader, epoch)`` whenever this node gains or loses leadership."""
        ...

    async def leader(self) -> tuple[str, int] | None:
        """The current leader's node id and epoch, as the coordinator's store has them."""
        ...

    async def check_epoch(self, epoch: int) -> None:
        """Raise FencedError unless ``epoch`` is the current leadership's epoch (read from the
        store, not from this node's belief)."""
        ...

    async def put_presence(self, key: str, value: bytes) -> None:
        """Record ``key`` as present; it lapses after the presence TTL unless put again."""
        ...

    async def presence(self) -> dict[str, bytes]:
        """Every key present now."""
        ...

    async def acquire(self, name: str, owner: str, ttl: float) -> int | None:
        """Take the lock ``name`` for ``ttl`` seconds: its fencing token (increasing), or None
        if someone else holds it."""
        ...

    async def renew(self, name: str, token: int, ttl: float) -> int:
        """Extend a held lock; the new token. FencedError if ``token`` is no longer current."""
        ...

    async def release(self, name: str, token: int) -> None:
        """Let go of a held lock (nothing happens if ``token`` is no longer current)."""
        ...
