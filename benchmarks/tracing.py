#!/usr/bin/env python
"""The cost of tracing: deliveries/s through the WebSocket hub with tracing off and on.

    python benchmarks/tracing.py [--messages 3000] [--receivers 10] [--runs 3]

One process: an embedded hub (``memory://``, a durable channel) behind its HubServer on port 0,
``--receivers`` raw WebSocket agents (aiohttp) that ack each deliver frame cumulatively, and a
publisher calling ``hub.publish`` with 100 publishes in flight. Rate = messages x receivers /
time from the first publish until every receiver has every message; "with export" adds the
time the exporter then takes to send the spans still queued (``force_flush``), which is what a
sustained load would pay; "spans" counts the spans the OTLP receiver got (the table says when
fewer arrived than were made: the exporter's queue dropped some). Modes:

- ``off``: ``[telemetry] tracing = false`` (the default);
- ``on, in memory``: tracing on, every span sampled, kept by the in-memory exporter (no
  network: the cost of making the spans and the headers);
- ``on, ratio 0.01`` / ``on, ratio 0``: tracing on, 1 % / no new trace sampled;
- ``on, OTLP`` (``, ratio 0.1``): tracing on, BatchSpanProcessor + OTLP/HTTP to a local
  receiver (another process, like a collector, that decodes each request and counts its spans);
- ``+ deliver spans``: the same with ``trace_deliveries = true`` (one ``deliver`` span per
  message per receiver).

Each figure is the median of ``--runs`` runs, each on a fresh hub, the modes taking turns.
Prints a table.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import aiohttp
import msgspec
from _common import parse, parser
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fleetchat import Hub, HubSettings
from fleetchat.config import ServerSettings
from fleetchat.ops.settings import TelemetrySettings
from fleetchat.server import HubServer

_decode = msgspec.json.Decoder().decode


class _Sink(BaseHTTPRequestHandler):
    spans: Synchronized[int]

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        export = ExportTraceServiceRequest.FromString(data)
        n = sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans)
        with self.spans.get_lock():
            self.spans.value += n
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port: Connection, spans: Synchronized[int]) -> None:
    """The OTLP receiver, in its own process (the hub's GIL is not its to share)."""
    _Sink.spans = spans
    sink = HTTPServer(("127.0.0.1", 0), _Sink)
    port.send(sink.server_address[1])
    sink.serve_forever()


async def _receiver(
    http: aiohttp.ClientSession, url: str, name: str, ready: asyncio.Event, want: int
) -> None:
    async with http.ws_connect(url) as ws:
        await ws.send_str(msgspec.json.encode({"type": "hello", "agent_id": name}).decode())
        await ws.receive()  # welcome
        await ws.send_str('{"type":"subscribe","id":"s","channels":["bench"]}')
        got = 0
        async for msg in ws:
            frame = _decode(msg.data)
            if frame["type"] == "ok":
                ready.set()
            elif frame["type"] == "deliver":
                n = len(frame["messages"])
                got += sum(1 for m in frame["messages"] if m.get("kind") != "system")
                await ws.send_str(f'{{"type":"ack","upto":{frame["first_tag"] + n - 1}}}')
                if got >= want:
                    return


async def _run(telemetry: TelemetrySettings, messages: int, receivers: int) -> tuple[float, float]:
    """(deliveries/s, deliveries/s counting the time to export the spans still queued)."""
    settings = HubSettings(url="memory://", server=ServerSettings(auth=False), telemetry=telemetry)
    async with Hub(settings) as hub, HubServer(hub, port=0) as server:
        url = server.url.replace("http", "ws", 1) + "/v1/ws"
        async with aiohttp.ClientSession() as http:
            readies = [asyncio.Event() for _ in range(receivers)]
            tasks = [
                asyncio.create_task(_receiver(http, url, f"r{i}", readies[i], messages))
                for i in range(receivers)
            ]
            for ready in readies:
                await asyncio.wait_for(ready.wait(), 10)
            started = time.perf_counter()
            for first in range(0, messages, 100):
                await asyncio.gather(
                    *(
                        hub.publish("bench", {"n": i}, sender="pub")
                        for i in range(first, min(first + 100, messages))
                    )
                )
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            delivered = time.perf_counter() - started
            if hub.tracer is not None:
                await asyncio.to_thread(hub.tracer.provider.force_flush, 120_000)
            exported = time.perf_counter() - started
            return messages * receivers / delivered, messages * receivers / exported


def main() -> None:
    p = parser(__doc__, quick=None, json_flag=False)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--receivers", type=int, default=10)
    args = parse(p)
    spans: Synchronized[int] = multiprocessing.Value("q", 0)
    port, child = multiprocessing.Pipe()
    sink = multiprocessing.Process(target=_serve, args=(child, spans), daemon=True)
    sink.start()
    otlp = f"http://127.0.0.1:{port.recv()}"
    on = TelemetrySettings(tracing=True)
    modes = [
        ("off", TelemetrySettings()),
        ("on, in memory", on),
        ("  + deliver spans", replace(on, trace_deliveries=True)),
        ("on, ratio 0.01", replace(on, sample_ratio=0.01)),
        ("on, ratio 0", replace(on, sample_ratio=0.0)),
        ("on, OTLP", replace(on, otlp_endpoint=otlp)),
        ("  + deliver spans", replace(on, otlp_endpoint=otlp, trace_deliveries=True)),
        ("on, OTLP, ratio 0.1", replace(on, otlp_endpoint=otlp, sample_ratio=0.1)),
    ]
    print(f"{args.messages} messages x {args.receivers} receivers, median of {args.runs} runs")
    print(f"{'mode':<20} {'deliveries/s':>13} {'vs off':>7} {'with export':>12} {'spans':>14}")
    # Round-robin over the modes, so that a change in the machine's load hits them all alike.
    runs: list[list[tuple[float, float]]] = [[] for _ in modes]
    got = [0 for _ in modes]
    for _ in range(args.runs):
        for i, (_name, telemetry) in enumerate(modes):
            spans.value = 0
            runs[i].append(asyncio.run(_run(telemetry, args.messages, args.receivers)))
            got[i] += spans.value
    base = statistics.median(r for r, _ in runs[0])
    for (name, telemetry), results, exported_spans in zip(modes, runs, got, strict=True):
        rate = statistics.median(r for r, _ in results)
        with_export = statistics.median(r for _, r in results)
        exported = ""
        if telemetry.otlp_endpoint:
            made = args.messages * (1 + (args.receivers if telemetry.trace_deliveries else 0))
            mean = exported_spans // args.runs
            if telemetry.sample_ratio < 1:  # a draw per message: no exact count to compare to
                exported = f"~{mean:,}"
            else:
                exported = f"{mean:,}" if mean >= made else f"{mean:,} of {made:,}"
        print(f"{name:<20} {rate:>13,.0f} {rate / base:>7.0%} {with_export:>12,.0f} {exported:>14}")
    sink.terminate()
    sink.join()


if __name__ == "__main__":
    main()
