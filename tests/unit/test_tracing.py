"""Hub tracing in process: off adds nothing, sampling, continuing and ignoring trace contexts."""

from __future__ import annotations

import msgspec
from opentelemetry.trace import INVALID_SPAN

from fleetchat import Hub, HubSettings
from fleetchat.ops.settings import TelemetrySettings
from fleetchat.ops.tracing import HubTracer

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"


def traced_hub(**telemetry: object) -> Hub:
    return Hub(HubSettings(url="memory://", telemetry=TelemetrySettings(**telemetry)))  # type: ignore[arg-type]


def spans(hub: Hub) -> list[str]:
    assert hub.tracer is not None
    assert hub.tracer.recent is not None
    return [s.name for s in hub.tracer.recent.spans()]


async def test_tracing_off_adds_no_headers_and_has_no_tracer() -> None:
    async with Hub.open("memory://") as hub:
        await hub.subscribe("bob", "room")
        m = await hub.publish("room", "hi", sender="alice")
        task = await hub.tasks.submit(None, agent_id="bob", must_be_satisfiable=False)
    assert hub.tracer is None
    assert m.headers == {}
    assert task.traceparent is None


async def test_a_publish_starts_a_trace_and_stores_its_context_in_the_headers() -> None:
    async with traced_hub(tracing=True) as hub:
        await hub.subscribe("bob", "room")
        m = await hub.publish("room", "hi", sender="alice")
        (stored,) = [x for x in await hub.bus.history("room", limit=10) if x.id == m.id]
        (span,) = hub.tracer.recent.spans()  # type: ignore[union-attr]
    assert stored.headers["traceparent"] == m.headers["traceparent"]
    version, trace_id, span_id, _ = m.headers["traceparent"].split("-")
    assert version == "00"
    assert trace_id == f"{span.context.trace_id:032x}"
    assert span_id == f"{span.context.span_id:016x}"
    assert span.name == "publish"
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["fleetchat.channel"] == "room"
    assert span.attributes["fleetchat.sender"] == "alice"
    assert span.attributes["fleetchat.seq"] == m.seq
    assert "hi" not in span.attributes.values()  # never the body


async def test_an_incoming_traceparent_is_continued() -> None:
    async with traced_hub(tracing=True) as hub:
        await hub.subscribe("bob", "room")
        m = await hub.publish("room", "hi", sender="alice", headers={"traceparent": PARENT})
        (span,) = hub.tracer.recent.spans()  # type: ignore[union-attr]
    assert m.headers["traceparent"].split("-")[1] == PARENT_TRACE
    assert span.parent is not None
    assert span.parent.span_id == 0x00F067AA0BA902B7


async def test_a_malformed_traceparent_is_ignored_and_a_new_trace_starts() -> None:
    async with traced_hub(tracing=True) as hub:
        await hub.subscribe("bob", "room")
        m = await hub.publish("room", "hi", sender="alice", headers={"traceparent": "junk-00"})
        (span,) = hub.tracer.recent.spans()  # type: ignore[union-attr]
    assert span.parent is None
    assert m.headers["traceparent"] != "junk-00"
    assert m.headers["traceparent"].split("-")[1] == f"{span.context.trace_id:032x}"


async def test_sample_ratio_zero_records_nothing_and_adds_no_headers() -> None:
    async with traced_hub(tracing=True, sample_ratio=0.0) as hub:
        await hub.subscribe("bob", "room")
        m = await hub.publish("room", "hi", sender="alice")
        task = await hub.tasks.submit(None, agent_id="bob", must_be_satisfiable=False)
        assert spans(hub) == []
    assert m.headers == {}
    assert task.traceparent is None


async def test_a_sampled_parent_is_followed_even_with_sample_ratio_zero() -> None:
    async with traced_hub(tracing=True, sample_ratio=0.0) as hub:
        await hub.subscribe("bob", "room")
        m = await hub.publish("room", "hi", sender="alice", headers={"traceparent": PARENT})
        assert spans(hub) == ["publish"]
    assert m.headers["traceparent"].split("-")[1] == PARENT_TRACE


async def test_a_task_offer_notice_carries_the_tasks_trace() -> None:
    async with traced_hub(tracing=True) as hub:
        await hub.registry.register("bob", capabilities={"lift": 1.0})
        sub = await hub.subscribe("bob")
        task = await hub.tasks.submit({"lift": 1.0}, traceparent=PARENT)
        delivery = await anext(aiter(sub))
        offer = delivery.message
        names = spans(hub)
    assert task.traceparent is not None
    assert task.traceparent.split("-")[1] == PARENT_TRACE
    assert offer.body["action"] == "offer"
    assert offer.headers["traceparent"].split("-")[1] == PARENT_TRACE
    assert names[:2] == ["task.submit", "task.offer"]


async def test_sample_ratio_zero_makes_no_span_object_for_a_new_trace() -> None:
    tracer = HubTracer(TelemetrySettings(tracing=True, sample_ratio=0.0))
    try:
        assert tracer.start("publish", {}, None) is INVALID_SPAN
        assert tracer.start("publish", PARENT, None).is_recording()
    finally:
        tracer.shutdown()


async def test_trace_deliveries_is_off_by_default() -> None:
    async with traced_hub(tracing=True) as hub:
        assert hub.tracer is not None
        assert hub.tracer.trace_deliveries is False


async def test_with_trace_deliveries_each_delivery_is_a_span_under_the_publish() -> None:
    async with traced_hub(tracing=True, trace_deliveries=True) as hub:
        await hub.subscribe("bob", "room")
        m = await hub.publish("room", "hi", sender="alice")
        assert hub.tracer is not None
        hub.tracer.delivered("bob", [m], [1])
        hub.tracer.delivered("carol", [m], [2])
        publish, *delivers = hub.tracer.recent.spans()  # type: ignore[union-attr]
    assert [d.name for d in delivers] == ["deliver", "deliver"]
    for d, member, attempt in zip(delivers, ("bob", "carol"), (1, 2), strict=True):
        assert d.parent is not None
        assert d.parent.span_id == publish.context.span_id
        assert d.context.trace_id == publish.context.trace_id
        assert d.attributes == {
            "fleetchat.channel": "room",
            "fleetchat.message_id": m.id,
            "fleetchat.member": member,
            "fleetchat.attempt": attempt,
        }


async def test_deliveries_of_untraced_unsampled_or_malformed_contexts_make_no_spans() -> None:
    async with traced_hub(tracing=True, trace_deliveries=True) as hub:
        await hub.subscribe("bob", "room")
        untraced = await hub.publish("room", "a", sender="alice")
        assert hub.tracer is not None
        assert hub.tracer.recent is not None
        hub.tracer.recent.clear()
        unsampled = msgspec.structs.replace(
            untraced, headers={"traceparent": f"00-{PARENT_TRACE}-00f067aa0ba902b7-00"}
        )
        malformed = msgspec.structs.replace(untraced, headers={"traceparent": "junk-00"})
        untraced = msgspec.structs.replace(untraced, headers={})
        hub.tracer.delivered("bob", [untraced, unsampled, malformed], [1, 1, 1])
        assert spans(hub) == []


def test_the_otlp_endpoint_gets_the_traces_path() -> None:
    tracer = HubTracer(TelemetrySettings(tracing=True, otlp_endpoint="http://127.0.0.1:9/"))
    try:
        assert tracer.recent is None
    finally:
        tracer.provider.shutdown()
