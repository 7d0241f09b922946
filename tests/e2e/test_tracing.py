"""One trace across the hub and an SDK agent in another process (docs/tracing.md).

A local OTLP/HTTP receiver collects the spans of both: the hub (in this process, exporting over
OTLP) and ``traced_agent.py`` (a subprocess with its own TracerProvider). The trace id is also
read from the raw ``deliver`` frames on the wire. The hub runs with the default
``trace_deliveries = false`` unless a test asks for ``traced`` with ``True``.
"""

from __future__ import annotations

import asyncio
import gzip
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from fleetchat import Hub, HubSettings
from fleetchat.config import ServerSettings
from fleetchat.ops.settings import TelemetrySettings
from fleetchat.server import HubServer
from fleetchat.testing.eventually import assert_eventually

from .conftest import Delivery, RawAgent

AGENT_SCRIPT = Path(__file__).with_name("traced_agent.py")


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it (ids in hex)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class OtlpReceiver:
    """POST /v1/traces: decodes ExportTraceServiceRequest protobufs and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        export = ExportTraceServiceRequest.FromString(data)
        for rs in export.resource_spans:
            service = next(
                a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Received(
                            service=service,
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def named(self, name: str, service: str, **attributes: Any) -> list[Received]:
        return [
            s
            for s in self.spans
            if s.name == name
            and s.service == service
            and all(s.attributes.get(k) == v for k, v in attributes.items())
        ]

    def one(self, name: str, service: str, **attributes: Any) -> Received:
        found = self.named(name, service, **attributes)
        assert len(found) == 1, (name, service, attributes, self.spans)
        return found[0]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Setup:
    hub: Hub
    server: HubServer
    receiver: OtlpReceiver
    http: aiohttp.ClientSession

    async def raw(self, agent_id: str, *channels: str) -> RawAgent:
        url = self.server.url.replace("http", "ws", 1) + "/v1/ws"
        agent = RawAgent(await self.http.ws_connect(url))
        await agent.send({"type": "hello", "agent_id": agent_id})
        assert (await agent.recv())["type"] == "welcome"
        await agent.subscribe(*channels)
        return agent

    async def flush(self) -> None:
        assert self.hub.tracer is not None
        await asyncio.to_thread(self.hub.tracer.provider.force_flush)


@pytest.fixture
async def traced(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    """A receiver, a hub tracing to it, and the traced agent process connected
    (``trace_deliveries`` as the test's parameter, default off)."""
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}"
    settings = HubSettings(
        url=f"sqlite:///{tmp_path / 'hub.db'}",
        server=ServerSettings(auth=False),
        telemetry=TelemetrySettings(
            tracing=True,
            otlp_endpoint=receiver.url,
            service_name="hub-under-test",
            trace_deliveries=getattr(request, "param", False),
        ),
    )
    proc: asyncio.subprocess.Process | None = None
    try:
        async with Hub(settings) as hub, HubServer(hub, port=0) as server:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(AGENT_SCRIPT),
                server.url,
                "tracer",
                receiver.url,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.strip() == b"ready"
            async with aiohttp.ClientSession() as http:
                yield Setup(hub, server, receiver, http)
                proc.terminate()  # the agent flushes its spans on SIGTERM
                await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runner.cleanup()


async def next_chat(agent: RawAgent) -> Delivery:
    """The next delivery that is not a hub announcement (those are acked and skipped)."""
    while True:
        (delivery,) = await agent.deliveries(1)
        await agent.ack(delivery.tag)
        if delivery.message.get("kind", "chat") != "system":
            return delivery


def trace_id_of(frame_message: dict[str, Any]) -> str:
    return str(frame_message["headers"]["traceparent"].split("-")[1])


async def test_a_published_message_and_the_agents_echo_share_one_trace(traced: Setup) -> None:
    watcher = await traced.raw("watcher", "traced-in", "traced-out")
    sender = await traced.raw("sender", "traced-in")
    await sender.publish("traced-in", {"n": 1}, id="p1")
    # On the wire: the delivery of the original and of the agent's echo carry one trace id.
    original = await next_chat(watcher)
    echo = await next_chat(watcher)
    assert original.message["channel"] == "traced-in"
    assert echo.message["channel"] == "traced-out"
    assert echo.body == {"echo": {"n": 1}}
    trace_id = trace_id_of(original.message)
    assert trace_id_of(echo.message) == trace_id

    def spans_arrived() -> bool:
        traced.receiver.one("handle", "traced-agent", **{"fleetchat.channel": "traced-in"})
        traced.receiver.one("publish", "hub-under-test", **{"fleetchat.channel": "traced-out"})
        return True

    await traced.flush()
    await assert_eventually(spans_arrived, timeout=10)
    r = traced.receiver
    publish = r.one("publish", "hub-under-test", **{"fleetchat.channel": "traced-in"})
    handle = r.one("handle", "traced-agent", **{"fleetchat.channel": "traced-in"})
    echoed = r.one("publish", "hub-under-test", **{"fleetchat.channel": "traced-out"})
    assert {publish.trace_id, handle.trace_id, echoed.trace_id} == {trace_id}
    assert publish.parent_id == ""  # the sender gave no trace context: a new trace
    assert handle.parent_id == publish.span_id  # the agent continued the hub's span
    assert echoed.parent_id == handle.span_id  # the agent's publish carried its own span
    assert publish.attributes["fleetchat.sender"] == "sender"
    assert original.message["headers"]["traceparent"].split("-")[2] == publish.span_id
    assert r.named("deliver", "hub-under-test") == []  # trace_deliveries is off by default


@pytest.mark.parametrize("traced", [True], indirect=True, ids=["trace_deliveries"])
async def test_with_trace_deliveries_each_delivery_is_a_span_under_the_publish(
    traced: Setup,
) -> None:
    watcher = await traced.raw("watcher", "traced-in")
    sender = await traced.raw("sender", "traced-in")
    await sender.publish("traced-in", {"n": 2}, id="p1")
    original = await next_chat(watcher)

    def spans_arrived() -> bool:
        traced.receiver.one("handle", "traced-agent", **{"fleetchat.channel": "traced-in"})
        for member in ("tracer", "watcher"):  # the hub exports the last within a second
            traced.receiver.one("deliver", "hub-under-test", **{"fleetchat.member": member})
        return True

    await traced.flush()
    await assert_eventually(spans_arrived, timeout=10)
    r = traced.receiver
    publish = r.one("publish", "hub-under-test", **{"fleetchat.channel": "traced-in"})
    handle = r.one("handle", "traced-agent", **{"fleetchat.channel": "traced-in"})
    to_agent = r.one("deliver", "hub-under-test", **{"fleetchat.member": "tracer"})
    to_watcher = r.one("deliver", "hub-under-test", **{"fleetchat.member": "watcher"})
    assert to_agent.parent_id == to_watcher.parent_id == publish.span_id
    assert to_agent.trace_id == trace_id_of(original.message)
    assert to_agent.attributes["fleetchat.message_id"] == original.message["id"]
    assert to_agent.attributes["fleetchat.attempt"] == 1
    assert handle.parent_id == publish.span_id  # the agent continues the publish, as without


async def test_a_task_is_traced_from_submit_to_the_agents_result(traced: Setup) -> None:
    watcher = await traced.raw("watcher", "traced-out")
    task = await traced.hub.tasks.submit({"trace": 1.0}, payload={"x": 1})
    assert task.traceparent is not None
    trace_id = task.traceparent.split("-")[1]
    published = await next_chat(watcher)  # the agent publishes from its task handler
    assert published.body == {"task": task.id}
    assert trace_id_of(published.message) == trace_id

    async def succeeded() -> bool:
        return (await traced.hub.tasks.get(task.id)).state == "succeeded"

    await assert_eventually(succeeded, timeout=10)

    def spans_arrived() -> bool:
        traced.receiver.one("task", "traced-agent", **{"fleetchat.task_id": task.id})
        traced.receiver.one("task.result", "hub-under-test", **{"fleetchat.task_id": task.id})
        return True

    await traced.flush()
    await assert_eventually(spans_arrived, timeout=10)
    r = traced.receiver
    submit = r.one("task.submit", "hub-under-test", **{"fleetchat.task_id": task.id})
    offer = r.one("task.offer", "hub-under-test", **{"fleetchat.task_id": task.id})
    handle = r.one("handle", "traced-agent", **{"fleetchat.kind": "task"})
    work = r.one("task", "traced-agent", **{"fleetchat.task_id": task.id})
    result = r.one("task.result", "hub-under-test", **{"fleetchat.task_id": task.id})
    assert {s.trace_id for s in (submit, offer, handle, work, result)} == {trace_id}
    assert offer.parent_id == submit.span_id
    assert handle.parent_id == offer.span_id  # the offer notice carried the offer's context
    assert work.parent_id == handle.span_id
    assert result.parent_id == work.span_id  # the complete report carried the agent's span
    assert result.attributes["action"] == "complete"
    assert offer.attributes["fleetchat.agent"] == "tracer"


async def test_a_workflow_step_carries_the_executions_trace_to_the_agent(traced: Setup) -> None:
    watcher = await traced.raw("watcher", "traced-out")
    await traced.hub.workflows.register(
        {
            "schema": "fleetchat.workflow/v1",
            "name": "traced",
            "version": "1.0.0",
            "defaults": {"timeout": {"start_to_close": "10s"}},
            "steps": [
                {"id": "only", "type": "agent_task", "agent": {"capabilities": {"trace": 1.0}}}
            ],
        }
    )
    execution = await traced.hub.workflows.start("traced", {"x": 1})
    assert execution.traceparent is not None
    trace_id = execution.traceparent.split("-")[1]
    done = await traced.hub.workflows.wait(execution.id, timeout=20)
    assert done.status == "completed"
    published = await next_chat(watcher)  # from the agent's task handler, on the wire
    assert trace_id_of(published.message) == trace_id
    await traced.flush()

    await assert_eventually(lambda: traced.receiver.named("task", "traced-agent"), timeout=10)
    r = traced.receiver
    root = r.one("workflow.execution", "hub-under-test")
    step = r.one("workflow.step", "hub-under-test", **{"fleetchat.step_id": "only"})
    submit = r.one("task.submit", "hub-under-test")
    work = r.one("task", "traced-agent")
    assert {s.trace_id for s in (root, step, submit, work)} == {trace_id}
    assert step.parent_id == root.span_id
    assert submit.parent_id == step.span_id
    assert step.attributes["fleetchat.execution_id"] == execution.id
