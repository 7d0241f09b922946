"""OpenTelemetry traces of one hub: publish, deliver, task, task result, workflow step.

Each hub builds its own TracerProvider from ``[telemetry]`` (never the global one: several hubs
may share a process). The W3C trace context travels in ``Message.headers`` (``traceparent``,
``tracestate``) and in a task's record, so an agent in another process continues the trace
(docs/tracing.md). With tracing off the hub has no tracer at all (``hub.tracer is None``): the
hot paths test that one attribute and create nothing.

Cost (benchmarks/tracing.py): spans are made where they matter (publish, task, workflow), not
per delivery unless ``trace_deliveries`` is on, since a fan-out to N members would make N
spans per message; the deliveries carry the publish span's context in the stored headers
anyway. A new trace is drawn before any span object exists, so an unsampled publish costs one
random number.
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    INVALID_SPAN,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fleetchat.errors import ConfigError

if TYPE_CHECKING:
    from fleetchat.backends.ports import Bus
    from fleetchat.models import Message
    from fleetchat.ops.settings import TelemetrySettings
    from fleetchat.tasks.records import TaskRecord
    from fleetchat.workflows.records import ExecutionRecord

__all__ = [
    "HubTracer",
    "RecentSpans",
    "headers_of",
    "message_attributes",
    "otlp_exporter",
    "traceparent",
]

_propagator = TraceContextTextMapPropagator()

EXPORT_QUEUE = 65_536
"""Finished spans waiting for the OTLP exporter; beyond it new spans are dropped (the SDK logs
"Queue full"). Sized for bursts: at ~1 KB a span, 64 MB at worst."""
EXPORT_BATCH = 2048
"""Spans per OTLP request (fewer, larger requests: the exporter thread holds the GIL less)."""
EXPORT_DELAY_MS = 1000
"""Longest wait before a partial batch goes out (ms)."""
_PARENTS_KEPT = 4096
"""Delivery parents cached by traceparent (a fan-out parses each message's context once)."""


class RecentSpans(SpanExporter, SpanProcessor):
    """An exporter that keeps the newest ``limit`` finished spans in memory (thread-safe).

    The hub's span processor when tracing is on without an OTLP endpoint (straight to the
    deque, without SimpleSpanProcessor's export per span); tests read it.
    """

    def __init__(self, limit: int = 1000) -> None:
        self._spans: collections.deque[ReadableSpan] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self._spans.extend(spans)
        return SpanExportResult.SUCCESS

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self._spans.append(span)

    def spans(self) -> list[ReadableSpan]:
        """The spans kept, oldest first."""
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()


def otlp_exporter(endpoint: str) -> SpanExporter:
    """The OTLP/HTTP exporter to ``endpoint`` (``/v1/traces`` is added when missing).

    Raises:
        ConfigError: the ``otlp`` extra is not installed.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            "otlp_endpoint needs the OTLP exporter: pip install 'fleetchat[otlp]'",
            field="otlp_endpoint",
        ) from None
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return OTLPSpanExporter(endpoint=url)


Parent = Mapping[str, str] | str | None
"""A span's parent: message headers, a ``traceparent`` string, or None (the current context)."""


def _sampled_parent(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The context of a delivered message's headers; None when malformed or not sampled."""
    context = _propagator.extract(headers)
    return context if get_current_span(context).get_span_context().trace_flags.sampled else None


def _parent(parent: Parent) -> otel_context.Context | None:
    """The context ``parent`` continues; None (the current context) when it has no trace
    context. A malformed ``traceparent`` is ignored: the span starts a new trace."""
    if not parent:
        return None
    if isinstance(parent, str):
        parent = {"traceparent": parent}
    elif "traceparent" not in parent:
        return None
    return _propagator.extract(parent)


class HubTracer:
    """The spans of one hub. Built by the Hub when ``telemetry.tracing`` is on.

    Attributes:
        provider: this hub's TracerProvider (sampler ``ParentBased(TraceIdRatioBased)``).
        recent: the newest finished spans, when no OTLP endpoint is configured.
    """

    def __init__(self, settings: TelemetrySettings, exporter: SpanExporter | None = None) -> None:
        # New traces are drawn in start() (before any span object exists); the sampler only
        # follows a parent's decision.
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(ALWAYS_ON),
        )
        self.trace_deliveries = settings.trace_deliveries
        """Each delivery to a member is a ``deliver`` span (``telemetry.trace_deliveries``)."""
        self._ratio = settings.sample_ratio
        self._parents: dict[str, otel_context.Context | None] = {}
        self.recent: RecentSpans | None = None
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif settings.otlp_endpoint:
            self.provider.add_span_processor(
                BatchSpanProcessor(
                    otlp_exporter(settings.otlp_endpoint),
                    max_queue_size=EXPORT_QUEUE,
                    schedule_delay_millis=EXPORT_DELAY_MS,
                    max_export_batch_size=EXPORT_BATCH,
                )
            )
        else:
            self.recent = RecentSpans(settings.keep_spans)
            self.provider.add_span_processor(self.recent)
        self._tracer = self.provider.get_tracer("fleetchat")

    @classmethod
    def from_settings(cls, settings: TelemetrySettings) -> HubTracer | None:
        """A tracer when ``settings.tracing`` is on, else None."""
        return cls(settings) if settings.tracing else None

    def shutdown(self) -> None:
        """Export what is left and stop (on hub close)."""
        self.provider.shutdown()

    # -- spans ------------------------------------------------------------------------------

    def start(
        self,
        name: str,
        parent: Parent,
        attributes: dict[str, Any] | None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        start_time: int | None = None,
    ) -> Span:
        """Start a span continuing the trace context in ``parent`` (headers), or the current
        context when it has none. A new trace is recorded with probability ``sample_ratio``;
        one not drawn is ``INVALID_SPAN`` (no context, nothing to end). The caller ends it."""
        context = _parent(parent)
        if (
            self._ratio < 1.0
            and not get_current_span(context).get_span_context().is_valid
            and (self._ratio <= 0.0 or random.random() >= self._ratio)
        ):
            return INVALID_SPAN
        return self._tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            start_time=start_time,
        )

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        parent: Parent,
        attributes: dict[str, Any],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Iterator[Span]:
        """A span around a block; an exception marks it as an error (and propagates)."""
        span = self.start(name, parent, attributes, kind=kind)
        try:
            yield span
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    def event(self, name: str, parent: Parent, attributes: dict[str, Any]) -> str | None:
        """A span with no duration to speak of (an offer, a hand-off); returns its
        traceparent (None when not sampled)."""
        span = self.start(name, parent, attributes)
        tp = traceparent(span)  # while it records: an ended span reports no context
        span.end()
        return tp

    # -- the hub's spans --------------------------------------------------------------------

    async def publish(self, bus: Bus, message: Message, wait: float) -> Message:
        """Publish ``message`` inside a ``publish`` span whose context goes into the stored
        message's headers, so every delivery carries it. Unsampled: the bus publish alone."""
        span = self.start("publish", message.headers, None, kind=_PRODUCER)
        if not span.is_recording():
            (committed,) = await bus.publish([message], wait)
            return committed
        span.set_attributes(message_attributes(message))
        message.headers = {**message.headers, "traceparent": _format(span.get_span_context())}
        try:
            (committed,) = await bus.publish([message], wait)
            span.set_attribute("fleetchat.seq", committed.seq)
            return committed
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    def delivered(self, member: str, messages: Sequence[Message], attempts: Sequence[int]) -> None:
        """With ``trace_deliveries`` on, one short ``deliver`` span per sampled message handed
        to ``member``'s connection (the caller checks the setting). The parent context is
        parsed once per message, not once per member."""
        parents = self._parents
        for m, attempt in zip(messages, attempts, strict=False):
            tp = m.headers.get("traceparent")
            if tp is None:
                continue
            try:
                context = parents[tp]
            except KeyError:
                context = _sampled_parent(m.headers)
                if len(parents) >= _PARENTS_KEPT:
                    parents.clear()
                parents[tp] = context
            if context is None:  # malformed or not sampled: ParentBased would drop it
                continue
            self._tracer.start_span(
                "deliver",
                context=context,
                kind=SpanKind.SERVER,
                attributes={
                    "fleetchat.channel": m.channel,
                    "fleetchat.message_id": m.id,
                    "fleetchat.member": member,
                    "fleetchat.attempt": attempt,
                },
            ).end()

    def reported(
        self,
        action: str,
        task_id: str,
        agent: str,
        given: str | None,
        started: int,
        stored: str | None,
        error: BaseException | None = None,
    ) -> None:
        """The ``task.result`` span of an agent's result report (complete, fail, reject):
        it continues the agent's trace (``given``, from the report frame) or else the task's
        (``stored``). ``started`` is when the report arrived (ns)."""
        attributes = {"fleetchat.task_id": task_id, "fleetchat.agent": agent, "action": action}
        span = self.start("task.result", given or stored, attributes, start_time=started)
        if error is not None:
            _failed(span, error)
        span.end()

    def submitting(self, task: TaskRecord, parent: str | None) -> Span:
        """The ``task.submit`` span of a new task, continuing ``parent`` (a traceparent) or the
        current context; its traceparent is stored on the task. The caller ends it."""
        span = self.start("task.submit", parent, task_attributes(task))
        task.traceparent = traceparent(span)
        return span

    def execution(self, execution: ExecutionRecord) -> None:
        """The ``workflow.execution`` span of a new execution, continuing the current context;
        its traceparent is stored on the execution, and its steps carry it."""
        execution.traceparent = self.event(
            "workflow.execution",
            None,
            {
                "fleetchat.execution_id": execution.id,
                "fleetchat.workflow": execution.workflow,
                "fleetchat.workflow_version": execution.workflow_version,
            },
        )

    def step(self, execution: ExecutionRecord, step: str, attempt: int) -> str | None:
        """The ``workflow.step`` span of an agent_task step submitting its task; returns the
        traceparent the task continues."""
        attributes = {
            "fleetchat.execution_id": execution.id,
            "fleetchat.workflow": execution.workflow,
            "fleetchat.step_id": step,
            "fleetchat.attempt": attempt,
        }
        return self.event("workflow.step", execution.traceparent, attributes)

    def offered(self, task: TaskRecord) -> str | None:
        """The ``task.offer`` span of an offer just saved; its traceparent goes on the notice."""
        attributes = task_attributes(task)
        attributes["fleetchat.agent"] = task.holder or ""
        attributes["fleetchat.attempt"] = task.attempt
        return self.event("task.offer", task.traceparent, attributes)


_PRODUCER = SpanKind.PRODUCER


def task_attributes(task: TaskRecord) -> dict[str, Any]:
    """A task's span attributes: id, priority, mode, submitter, capabilities (no payload)."""
    return {
        "fleetchat.task_id": task.id,
        "fleetchat.priority": str(task.priority),
        "fleetchat.task_mode": task.mode,
        "fleetchat.submitted_by": task.submitted_by,
        "fleetchat.capabilities": sorted(task.required),
    }


def message_attributes(m: Message) -> dict[str, Any]:
    """A message's span attributes: channel, id, priority, sender, kind (never the body)."""
    return {
        "fleetchat.channel": m.channel,
        "fleetchat.message_id": m.id,
        "fleetchat.priority": str(m.priority),
        "fleetchat.sender": m.sender,
        "fleetchat.kind": m.kind,
    }


def traceparent(span: Span) -> str | None:
    """The W3C ``traceparent`` of ``span``; None when it is not sampled (not recorded)."""
    if not span.is_recording():
        return None
    return _format(span.get_span_context())


def _format(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    code = getattr(exc, "code", None)
    span.set_status(Status(StatusCode.ERROR, code if isinstance(code, str) else type(exc).__name__))


def headers_of(span: Span, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the trace context of ``span`` (unchanged when it is not sampled)."""
    out = dict(headers or {})
    tp = traceparent(span)
    if tp is not None:
        out["traceparent"] = tp
    return out
