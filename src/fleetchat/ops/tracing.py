"""OpenTelemetry traces of one hub: publish, deliver, task, task result, workflow step.

Each hub builds its own TracerProvider from ``[telemetry]`` (never the global one: several hubs
may share a process). The W3C trace context travels in ``Message.headers`` (``traceparent``,
``tracestate``) and in a task's record, so an agent in another process continues the trace
(docs/tracing.md). With tracing off the hub has no tracer at all (``hub.tracer is None``): the
hot paths test that one attribute and create nothing.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
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


class RecentSpans(SpanExporter):
    """An exporter that keeps the newest ``limit`` finished spans in memory (thread-safe).

    The hub's exporter when tracing is on without an OTLP endpoint; tests read it.
    """

    def __init__(self, limit: int = 1000) -> None:
        self._spans: collections.deque[ReadableSpan] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self._spans.extend(spans)
        return SpanExportResult.SUCCESS

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
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        self.recent: RecentSpans | None = None
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif settings.otlp_endpoint:
            self.provider.add_span_processor(
                BatchSpanProcessor(otlp_exporter(settings.otlp_endpoint))
            )
        else:
            self.recent = RecentSpans(settings.keep_spans)
            self.provider.add_span_processor(SimpleSpanProcessor(self.recent))
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
        attributes: dict[str, Any],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        start_time: int | None = None,
    ) -> Span:
        """Start a span continuing the trace context in ``parent`` (headers), or the current
        context when it has none. The caller ends it."""
        return self._tracer.start_span(
            name,
            context=_parent(parent),
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
        message's headers, so every delivery carries it."""
        with self.span(
            "publish", message.headers, message_attributes(message), kind=_PRODUCER
        ) as s:
            tp = traceparent(s)
            if tp is not None:
                message.headers = {**message.headers, "traceparent": tp}
            (committed,) = await bus.publish([message], wait)
            s.set_attribute("fleetchat.seq", committed.seq)
            return committed

    def delivered(self, member: str, messages: Sequence[Message], attempts: Sequence[int]) -> None:
        """One short ``deliver`` span per traced message handed to ``member``'s connection."""
        for m, attempt in zip(messages, attempts, strict=False):
            if "traceparent" in m.headers:
                attributes = message_attributes(m)
                attributes["fleetchat.member"] = member
                attributes["fleetchat.attempt"] = attempt
                self.start("deliver", m.headers, attributes, kind=SpanKind.SERVER).end()

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
    ctx = span.get_span_context()
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
