"""Delivery metrics: success rate, latency percentiles, volume, per-priority counts.

``DeliveryMetrics`` is the bus's DeliveryObserver. It also forwards outcomes to the
``Receipts`` of senders that asked for them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from fleetchat.models import Message
from fleetchat.types import PRIORITIES, Clock

if TYPE_CHECKING:
    from fleetchat.chat.receipts import Receipts

__all__ = ["DeliveryMetrics", "Histogram", "MetricsSnapshot"]

#: At most this many latencies are recorded per acked batch (each standing for its share).
_SAMPLES_PER_BATCH = 16


class Histogram:
    """Log-linear histogram of seconds, 1 us .. ~1 h, about 6 % relative error, O(1) memory."""

    def __init__(self) -> None:
        bounds = []
        v = 1e-6
        while v < 4000:
            bounds.append(v)
            v *= 1.12
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def record(self, value: float, weight: int = 1) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += weight
        self.count += weight
        self.total += value * weight

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (0 when empty)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank and c:
                return self._bounds[min(i, len(self._bounds) - 1)]
        return self._bounds[-1]  # pragma: no cover - rank <= count always ends the loop

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def cumulative(self, bounds: Sequence[float]) -> list[int]:
        """Cumulative counts for ``bounds`` (ascending, seconds), then ``+Inf`` (every value):
        a Prometheus histogram's buckets. Each bucket here is counted under the first bound at
        or above its upper edge, so a value can show one bucket (about 12 %) higher."""
        out = [0] * (len(bounds) + 1)
        j = 0
        for upper, count in zip(self._bounds, self._counts, strict=False):
            while j < len(bounds) and bounds[j] < upper:
                j += 1
            out[j] += count
        out[-1] += self._counts[-1]
        for i in range(1, len(out)):
            out[i] += out[i - 1]
        return out


class MetricsSnapshot(msgspec.Struct, kw_only=True):
    """Delivery figures since the hub started."""

    published: int
    """Messages committed to channels."""
    delivered: int
    """Deliveries acked by their member."""
    retries: int
    dead_lettered: int
    expired: int
    dropped: int
    """Deliveries lost because a lagging member fell behind the channel's retention."""
    success_rate: float
    """delivered / (delivered + dead_lettered + expired + dropped); 1.0 when nothing settled."""
    latency_avg_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    """Publish to ack, in milliseconds, including retries."""
    published_by_priority: dict[str, int]
    delivered_by_priority: dict[str, int]
    requests: int
    request_timeouts: int
    late_replies: int


class DeliveryMetrics:
    """Counts every delivery outcome; the LocalBus calls it, ``snapshot()`` reads it."""

    def __init__(self, clock: Clock, receipts: Receipts | None = None) -> None:
        self._clock = clock
        self.receipts = receipts
        self.latency = Histogram()
        self.published_by_priority = dict.fromkeys(map(str, PRIORITIES), 0)
        self.delivered_by_priority = dict.fromkeys(map(str, PRIORITIES), 0)
        self.published = 0
        self.delivered = 0
        self.retries = 0
        self.dead_lettered = 0
        self.expired = 0
        self.dropped = 0
        self.requests = 0
        self.request_timeouts = 0
        self.late_replies = 0

    def on_published(self, messages: Sequence[Message]) -> None:
        self.published += len(messages)
        by = self.published_by_priority
        for m in messages:
            by[m.priority] += 1

    def on_acked(
        self, member: str, messages: Sequence[Message], attempts: Sequence[int], now: float
    ) -> None:
        n = len(messages)
        self.delivered += n
        by = self.delivered_by_priority
        by[messages[0].priority] += n  # a batch holds one priority
        hist = self.latency
        if n <= _SAMPLES_PER_BATCH:
            for m in messages:
                hist.record(now - m.created_at)
        else:
            step = n / _SAMPLES_PER_BATCH
            for k in range(_SAMPLES_PER_BATCH):
                lo, hi = int(k * step), int((k + 1) * step)
                hist.record(now - messages[lo].created_at, hi - lo)
        if self.receipts is not None and self.receipts.active:
            self.receipts.on_outcome(member, messages, "delivered", now, attempts)

    def on_retry(self, member: str, message: Message, attempt: int, reason: str) -> None:
        self.retries += 1

    def on_dead_letter(self, member: str, message: Message, attempts: int, reason: str) -> None:
        self.dead_lettered += 1
        if self.receipts is not None and self.receipts.active:
            self.receipts.on_outcome(
                member, [message], "dead_lettered", self._clock.time(), [attempts]
            )

    def on_expired(self, member: str, message: Message) -> None:
        self.expired += 1
        if self.receipts is not None and self.receipts.active:
            self.receipts.on_outcome(member, [message], "expired", self._clock.time())

    def on_dropped(self, member: str, channel: str, count: int) -> None:
        self.dropped += count

    def snapshot(self) -> MetricsSnapshot:
        settled = self.delivered + self.dead_lettered + self.expired + self.dropped
        h = self.latency
        return MetricsSnapshot(
            published=self.published,
            delivered=self.delivered,
            retries=self.retries,
            dead_lettered=self.dead_lettered,
            expired=self.expired,
            dropped=self.dropped,
            success_rate=self.delivered / settled if settled else 1.0,
            latency_avg_ms=h.mean * 1000,
            latency_p50_ms=h.quantile(0.50) * 1000,
            latency_p99_ms=h.quantile(0.99) * 1000,
            published_by_priority=dict(self.published_by_priority),
            delivered_by_priority=dict(self.delivered_by_priority),
            requests=self.requests,
            request_timeouts=self.request_timeouts,
            late_replies=self.late_replies,
        )
