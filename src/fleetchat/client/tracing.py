"""OpenTelemetry in the SDK: an agent continues the traces of the messages it handles.

Tracing is on for an agent given ``tracer_provider=``, or, without one, when its process has
set a global TracerProvider (``opentelemetry.trace.set_tracer_provider``) before
``agent.start()``. Then each delivered message is handled inside a ``handle`` span continuing
the message's ``traceparent`` header, each task the agent runs is a ``task`` span, and the
agent's publishes, replies and task reports carry the current trace context
(docs/tracing.md). Off, nothing is imported and nothing is added.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from fleetchat.client.delivery import Outcome
    from fleetchat.models import Message

__all__ = ["AgentTracing"]

_NAME = "fleetchat.client"


class AgentTracing:
    """The trace context of one agent. ``tracer`` is None while tracing is off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self.tracer: Tracer | None = None

    def resolve(self) -> None:
        """Decide whether to trace (at ``agent.start()``): the given provider, else the
        process's global one when one was set."""
        if self._provider is not None:
            self.tracer = self._provider.get_tracer(_NAME)
            return
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            self.tracer = provider.get_tracer(_NAME)

    # -- spans ------------------------------------------------------------------------------

    async def handle(self, m: Message, run: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """Run a message's handlers (``run``) inside a ``handle`` span that continues the
        message's trace; a reply carries the span's context."""
        from dataclasses import replace

        from opentelemetry.trace import SpanKind, StatusCode

        assert self.tracer is not None
        attributes: dict[str, str | int] = {
            "fleetchat.channel": m.channel,
            "fleetchat.message_id": m.id,
            "fleetchat.sender": m.sender,
            "fleetchat.kind": m.kind,
            "fleetchat.seq": m.seq,
        }
        with self.tracer.start_as_current_span(
            "handle", context=_extract(m.headers), kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            outcome = await run()
            if outcome.kind == "nack":
                span.set_status(StatusCode.ERROR, "nacked")
            elif outcome.kind == "reply":
                outcome = replace(outcome, headers=self.headers(None))
            return outcome

    def begin(self, name: str, attributes: dict[str, Any]) -> tuple[Span, object] | None:
        """Start ``name`` as the current span of the running asyncio task (a child of the
        current context) until :meth:`end`; None while tracing is off."""
        if self.tracer is None:
            return None
        from opentelemetry import context, trace

        span = self.tracer.start_span(name, attributes=attributes)
        return span, context.attach(trace.set_span_in_context(span))

    def end(self, begun: tuple[Span, object] | None, error: BaseException | None = None) -> None:
        """End a span from :meth:`begin` (an error marks it failed)."""
        if begun is None:
            return
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        span, token = begun
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, type(error).__name__)
        span.end()
        context.detach(token)  # type: ignore[arg-type]

    # -- context out ------------------------------------------------------------------------

    def traceparent(self) -> str | None:
        """The current trace context as a W3C ``traceparent`` (None: off or no span)."""
        if self.tracer is None:
            return None
        return self.headers(None).get("traceparent")

    def headers(self, given: Mapping[str, str] | None) -> dict[str, str]:
        """``given`` plus the current trace context, unless it has a ``traceparent`` already
        (the caller's own wins)."""
        out = dict(given or {})
        if self.tracer is not None and "traceparent" not in out:
            _propagator().inject(out)
        return out


@functools.cache
def _propagator() -> TraceContextTextMapPropagator:
    """The W3C propagator, made once (imported only once tracing is on)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _extract(headers: Mapping[str, str]) -> Context | None:
    """The context a message's headers carry (None: none, the span starts a new trace; a
    malformed ``traceparent`` is ignored the same way)."""
    if "traceparent" not in headers:
        return None
    return _propagator().extract(headers)
