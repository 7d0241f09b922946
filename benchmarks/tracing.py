#!/usr/bin/env python
"""The cost of tracing: deliveries/s through the WebSocket hub with tracing off and on.

    python benchmarks/tracing.py [--messages 3000] [--receivers 10] [--runs 3]

One process: an embedded hub (``memory://``, a durable channel) behind its HubServer on port 0,
``--receivers`` raw WebSocket agents (aiohttp) that ack each deliver frame cumulatively, and a
publisher calling ``hub.publish`` with 100 publishes in flight. Rate = messages x receivers /
time from the first publish until every receiver has every message. Modes:

- ``off``: ``[telemetry] tracing = false`` (the default);
- ``on, in memory``: tracing on, every span sampled, kept by the in-memory exporter (no
  network: the cost of making the spans and the headers);
- ``on, ratio 0``: tracing on, no new trace sampled;
- ``on, OTLP``: tracing on, BatchSpanProcessor + OTLP/HTTP to a local receiver (a thread that
  answers 200 to every POST).

Each figure is the median of ``--runs`` runs, each on a fresh hub. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import msgspec

from fleetchat import Hub, HubSettings
from fleetchat.config import ServerSettings
from fleetchat.ops.settings import TelemetrySettings
from fleetchat.server import HubServer

_decode = msgspec.json.Decoder().decode


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


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


async def _run(telemetry: TelemetrySettings, messages: int, receivers: int) -> float:
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
            return messages * receivers / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--receivers", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{sink.server_address[1]}"
    modes = [
        ("off", TelemetrySettings()),
        ("on, in memory", TelemetrySettings(tracing=True)),
        ("on, ratio 0", TelemetrySettings(tracing=True, sample_ratio=0.0)),
        ("on, OTLP", TelemetrySettings(tracing=True, otlp_endpoint=otlp)),
    ]
    print(f"{args.messages} messages x {args.receivers} receivers, median of {args.runs} runs")
    print(f"{'mode':<16} {'deliveries/s':>14} {'vs off':>8}")
    base = 0.0
    for name, telemetry in modes:
        rates = [
            asyncio.run(_run(telemetry, args.messages, args.receivers)) for _ in range(args.runs)
        ]
        rate = statistics.median(rates)
        base = base or rate
        print(f"{name:<16} {rate:>14,.0f} {rate / base:>7.0%}")
    sink.shutdown()


if __name__ == "__main__":
    main()
