"""Traces of work that fails: the span ends with an error status and the error's code."""

from __future__ import annotations

import pytest
from opentelemetry.trace import StatusCode

from fleetchat import Hub, HubSettings
from fleetchat.config import ChatSettings
from fleetchat.errors import BackpressureError, ConfigError
from fleetchat.ops.settings import TelemetrySettings
from fleetchat.ops.tracing import RecentSpans, otlp_exporter


async def test_a_refused_publish_ends_its_span_with_the_error_code() -> None:
    settings = HubSettings(
        url="memory://",
        chat=ChatSettings(member_queue_limit=1),
        telemetry=TelemetrySettings(tracing=True),
    )
    async with Hub(settings) as hub:
        await hub.channels.create("belt", overflow="block", announce=False)
        await hub.subscribe("slow", "belt")
        await hub.publish("belt", 1, sender="plc")
        with pytest.raises(BackpressureError):
            await hub.publish("belt", 2, sender="plc", timeout=0.05)
        assert hub.tracer is not None
        assert hub.tracer.recent is not None
        failed = [s for s in hub.tracer.recent.spans() if s.status.status_code is StatusCode.ERROR]

    assert [s.name for s in failed] == ["publish"]
    assert failed[0].status.description == "backpressure"
    assert failed[0].events[0].name == "exception"


def test_the_in_memory_exporter_keeps_the_newest_spans() -> None:
    settings = HubSettings(url="memory://", telemetry=TelemetrySettings(tracing=True))
    hub = Hub(settings)
    assert hub.tracer is not None
    assert hub.tracer.recent is not None
    made = []
    for name in ("a", "b", "c"):
        span = hub.tracer.start(name, None, {})
        span.end()
        made.append(span)
    keep = RecentSpans(limit=2)
    keep.export(made)  # type: ignore[arg-type]
    assert [s.name for s in keep.spans()] == ["b", "c"]


def test_an_otlp_endpoint_gets_the_traces_path() -> None:
    exporter = otlp_exporter("http://collector:4318/")
    assert exporter._endpoint == "http://collector:4318/v1/traces"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        TelemetrySettings(sample_ratio=2.0)
