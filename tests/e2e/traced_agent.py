"""A traced agent process for the tracing e2e test: ``python traced_agent.py HUB AGENT OTLP``.

It sets the process's global OpenTelemetry TracerProvider (service ``traced-agent``, OTLP over
HTTP to ``OTLP``), so the SDK continues the hub's traces. It echoes every message on
``traced-in`` to ``traced-out``, and takes tasks needing ``trace``: each one publishes
``{"task": id}`` to ``traced-out`` and returns ``{"done": id}``. It prints ``ready`` once
connected, and flushes its spans and exits on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from fleetchat.client import Agent
from fleetchat.client.task_work import TaskWork
from fleetchat.models import Message


async def main(hub: str, agent_id: str, otlp: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "traced-agent"}))
    exporter = OTLPSpanExporter(endpoint=otlp.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    trace.set_tracer_provider(provider)
    agent = Agent(agent_id, capabilities={"trace": 1.0}, hub=hub)

    @agent.on_message("traced-in", kind="chat")
    async def echo(msg: Message) -> None:
        await agent.publish("traced-out", {"echo": msg.body})

    @agent.on_task
    async def work(task: TaskWork) -> dict[str, str]:
        await agent.publish("traced-out", {"task": task.id})
        return {"done": task.id}

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with agent:
        print("ready", flush=True)
        await stop.wait()
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
