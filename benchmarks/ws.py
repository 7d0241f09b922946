#!/usr/bin/env python
"""fleetchat network hub benchmarks: WebSocket latency, throughput and connection scale.

    python benchmarks/ws.py [--quick] [--json] [--runs 3] [--only NAME ...]

The hub runs as its own process: ``fleetchat serve --port 0 --db memory:// --log-level
warning`` through a small launcher that first raises RLIMIT_NOFILE to its hard limit, pinned to
CPU 0. The load runs in separate processes (multiprocessing, fork) pinned to CPU 1, over
loopback, with the lean client in benchmarks/ws_client.py (raw sockets, minimal parsing; see
there). Every figure is the median of ``--runs`` runs (default 3), each against a fresh server.
``--json`` prints exactly one JSON object on stdout (the table then goes to stderr). ``--only``
runs some cases: latency, throughput (throughput:lean, throughput:sdk), scale. See
docs/performance.md ("Network hub (WebSocket)") for results and profiles.

How load is generated
---------------------
Latency: 100 agents (``lat-0..99``, window 4096) subscribed to one ephemeral channel, one
publisher agent that is not a member sending 200 publishes/s on a fixed schedule, so 20,000
deliveries/s. The body carries ``time.time_ns()`` taken just before the socket write; every
receiver decodes each deliver frame and takes ``now - t`` (the receiving process, after its
event loop got to the socket) and ``kernel receive time - t`` (``SO_TIMESTAMPNS`` on the
receiving socket: the time the bytes reached the socket, before the load process's own queueing).
The clock is the same on both sides (one machine). The first second (0.5 s with ``--quick``) is
warm-up and not counted.

Throughput: 100 agents on one ephemeral channel, one publisher (not a member). The publisher
keeps at most ``WINDOW`` (800) messages ahead of the slowest receiver (below the member queue
limit of 1,000, as in benchmarks/core.py, so deliveries take the direct-push path) and writes
its publish frames ``CHUNK`` (100) or more per socket write. Receivers count messages per
deliver frame without parsing it and ack cumulatively once per socket read. Rate = measured
messages x 100 / time from the slowest receiver having all warm-up messages to it having all.
SDK agents (``throughput:sdk``): the same publisher feeding 100 ``fleetchat.client.Agent``s
(window 4096, an ``on_message`` handler that counts) in one load process; reported as "pending
SDK" when ``fleetchat.client.Agent`` cannot be imported or the case fails.

Scale: idle agents, each: connect, hello with capabilities (so it is registered and its
heartbeats update the registry), subscribe to one of ``SCALE_CHANNELS`` (16) ephemeral channels
(``idle-0..15``), then one heartbeat frame a second (the default interval), spread evenly over
the second. Spread over ``SCALE_PROCS`` (4) load processes with 64 handshakes in flight each.
Server RSS (VmRSS) is read before the first connection and after all are up and have
heartbeated for a few seconds; per connection = the difference / connections.

CPU shares: for every case, the server's and the load process's CPU time and run-queue wait
(``/proc/<pid>/schedstat``: time runnable but waiting for a CPU, i.e. taken by other processes)
over the measured phase, per second of wall time; recorded in the JSON as ``cpu_share`` and
warned about when a wait exceeds 5%.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common
import ws_client
from _common import fmt, log, wanted

HOST = "127.0.0.1"
AGENTS = 100
LAT_RATE = 200.0  # publishes/s in the latency case
WINDOW = 800
CHUNK = 100
SCALE_CHANNELS = 16
SCALE_PROCS = 4
SCALE_CONCURRENCY = 64  # handshakes in flight per load process
HEARTBEAT_INTERVAL = 1.0  # the registry's default heartbeat_interval
SERVER_CPUS = {0}
LOAD_CPUS = {1}

QUIET = ("--log-level", "warning")
PRELUDE = ""  # --server-prelude: Python run in the server process first (experiments)
LAUNCHER = (
    "import resource, sys\n"
    "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n"
    "sys.argv = ['fleetchat'] + sys.argv[1:]\n"
    "from fleetchat.cli import main\n"
    "main()\n"
)

TARGETS: list[tuple[str, str, float, str]] = [
    ("latency.p99_ms", "<", 3.0, "publish-to-deliver p99, 20,000 deliveries/s (ms)"),
    (
        "throughput.lean.deliveries_per_s",
        ">=",
        1_000_000,
        "deliveries/s to 100 agents, lean client",
    ),
    ("scale.connections", ">=", 15_000, "idle connections held by one server"),
    ("scale.rss_per_connection_kib", "<", 20.0, "server RSS per connection (KiB)"),
]

CPU_SHARES: dict[str, float] = {}


# -- the server process -------------------------------------------------------------------


class Server:
    """``fleetchat serve`` on a free port, memory://, pinned to SERVER_CPUS."""

    def __init__(self, pyspy: str | None = None, profile: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PRELUDE + "\n" + LAUNCHER,
                "serve",
                "--port",
                "0",
                "--db",
                "memory://",
                *QUIET,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"http://[^:/]+:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(m.group(1))
        self.url = f"http://{HOST}:{self.port}"
        if SERVER_CPUS and len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(self.pid, SERVER_CPUS)
        self.spy: subprocess.Popen[bytes] | None = None
        if pyspy and profile:
            spy = [pyspy, "record", "--pid", str(self.pid), "--rate", "250", "--format", "raw"]
            self.spy = subprocess.Popen(
                [*spy, "-o", profile],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # let it attach

    def create_channel(self, name: str) -> None:
        body = json.dumps({"name": name, "ephemeral": True, "announce": False}).encode()
        req = urllib.request.Request(
            self.url + "/v1/channels", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            try:
                self.spy.wait(60)
            except subprocess.TimeoutExpired:
                self.spy.kill()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- load processes -----------------------------------------------------------------------

_ctx = mp.get_context("fork")


class Load:
    """One load process running a role of ws_client; talks over a pipe."""

    def __init__(self, role: str, **kwargs: Any) -> None:
        self.pipe, child = _ctx.Pipe()
        cpus = LOAD_CPUS if len(os.sched_getaffinity(0)) > 1 else None
        self.proc = _ctx.Process(
            target=ws_client.child_main, args=(role, kwargs, child, cpus), daemon=True
        )
        self.proc.start()
        child.close()

    def recv(self, timeout: float) -> tuple[str, Any]:
        if not self.pipe.poll(timeout):
            self.proc.kill()
            raise RuntimeError(f"load process gave no answer in {timeout:.0f} s")
        kind, value = self.pipe.recv()
        if kind == "error":
            raise RuntimeError(f"load process failed:\n{value}")
        return kind, value

    def result(self, timeout: float) -> Any:
        _kind, value = self.recv(timeout)
        self.proc.join(10)
        return value


# -- cases --------------------------------------------------------------------------------


def latency_run(quick: bool, profile: str | None = None, pyspy: str | None = None) -> Any:
    warmup, duration = (0.5, 2.0) if quick else (1.0, 10.0)
    with Server(pyspy, profile) as srv:
        srv.create_channel("lat")
        load = Load(
            "latency",
            host=HOST,
            port=srv.port,
            server_pid=srv.pid,
            agents=AGENTS,
            rate=LAT_RATE,
            warmup=warmup,
            duration=duration,
            channel="lat",
        )
        return load.result(duration + warmup + 60)


def throughput_run(
    quick: bool, profile: str | None = None, pyspy: str | None = None, role: str = "throughput"
) -> Any:
    warm, total = (2_000, 10_000) if quick else (5_000, 60_000)
    if role == "sdk_throughput":
        warm, total = (500, 2_000) if quick else (2_000, 10_000)
    with Server(pyspy, profile) as srv:
        srv.create_channel("fan")
        load = Load(
            role,
            host=HOST,
            port=srv.port,
            server_pid=srv.pid,
            agents=AGENTS,
            warm=warm,
            total=total,
            window=WINDOW,
            chunk=CHUNK,
            channel="fan",
        )
        return load.result(300)


def scale_run(quick: bool, profile: str | None = None, pyspy: str | None = None) -> Any:
    target = 3_000 if quick else 15_000
    steady = 3.0 if quick else 6.0
    with Server(pyspy, profile) as srv:
        for c in range(SCALE_CHANNELS):
            srv.create_channel(f"idle-{c}")
        time.sleep(0.2)
        rss0 = srv.rss_kib()
        per = -(-target // SCALE_PROCS)
        loads = [
            Load(
                "scale",
                host=HOST,
                port=srv.port,
                base=i * per,
                count=min(per, target - i * per),
                channels=SCALE_CHANNELS,
                concurrency=SCALE_CONCURRENCY,
                interval=HEARTBEAT_INTERVAL,
            )
            for i in range(SCALE_PROCS)
        ]
        t0 = time.perf_counter()
        ready = [ld.recv(600)[1] for ld in loads]
        connect_s = time.perf_counter() - t0
        connected = sum(r["connected"] for r in ready)
        time.sleep(1.0)  # let the last handshakes' garbage settle, heartbeats reach steady state
        shares = ws_client.Shares(srv.pid)
        time.sleep(steady)
        cpu = shares.done()
        rss1 = srv.rss_kib()
        health = srv.get("/healthz")
        for ld in loads:
            ld.pipe.send("stop")
        results = [ld.result(120) for ld in loads]
    held = sum(r["held"] for r in results)
    failed = sum(r["failed"] for r in results)
    if failed:
        log(f"  scale: {failed} connections failed, e.g. {results[0]['failures'][:1]}")
    return {
        "connections": float(held),
        "attempted": float(target),
        "connected": float(connected),
        "server_sessions": float(health.get("agents_connected", 0)),
        "failed": float(failed),
        "connect_seconds": connect_s,
        "connects_per_s": connected / connect_s,
        "rss_before_mib": rss0 / 1024,
        "rss_after_mib": rss1 / 1024,
        "rss_per_connection_kib": (rss1 - rss0) / max(held, 1),
        "heartbeats_per_s": sum(r["heartbeats_per_s"] for r in results),
        "server_cpu": cpu["server_cpu"],
        "server_wait": cpu["server_wait"],
    }


def median_of(runs: int, fn: Any, label: str, args: argparse.Namespace) -> dict[str, float]:
    """Median of ``runs`` calls of ``fn(quick, profile, pyspy)``; with ``--profile`` each run's
    server is recorded by py-spy into ``PROFILE.<label>.<run>``."""

    def one(i: int) -> dict[str, Any]:
        return fn(args.quick, f"{args.profile}.{label}.{i}" if args.profile else None, args.pyspy)

    out = common.median_figures(common.runs_of(runs, one, show=True))
    for side in ("server_cpu", "load_cpu", "server_wait", "load_wait"):
        if side in out:
            CPU_SHARES[f"{label}.{side.replace('_cpu', '')}"] = out[side]
    return out


def sdk_ready() -> bool:
    try:
        from fleetchat.client import Agent  # noqa: F401
    except Exception:
        return False
    return True


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    quick, runs, only = args.quick, args.runs, args.only
    figures: dict[str, Any] = {}
    if wanted(only, "latency"):
        log(f"latency: {AGENTS} agents, {LAT_RATE:.0f} publishes/s x {runs} runs")
        figures["latency"] = median_of(runs, latency_run, "latency", args)
    if wanted(only, "throughput:lean"):
        log(f"throughput, lean client: {AGENTS} agents x {runs} runs")
        figures["throughput.lean"] = median_of(runs, throughput_run, "throughput.lean", args)
    if wanted(only, "throughput:sdk"):
        if sdk_ready():
            log(f"throughput, SDK agents: {AGENTS} agents x {runs} runs")
            try:
                figures["throughput.sdk"] = median_of(
                    runs,
                    lambda q, prof, spy: throughput_run(q, prof, spy, "sdk_throughput"),
                    "throughput.sdk",
                    args,
                )
            except RuntimeError as exc:  # the SDK is young: report, do not lose the rest
                log(f"throughput, SDK agents failed: {str(exc)[-800:]}")
                figures["throughput.sdk"] = {"pending": "SDK", "error": str(exc)[-800:]}
        else:
            log("throughput, SDK agents: pending SDK (fleetchat.client.Agent not importable)")
            figures["throughput.sdk"] = {"pending": "SDK"}
    if wanted(only, "scale"):
        n = 3_000 if quick else 15_000
        log(f"scale: {n} idle connections over {SCALE_PROCS} load processes x {runs} runs")
        figures["scale"] = median_of(runs, scale_run, "scale", args)
    return figures


# -- output -------------------------------------------------------------------------------


def rows_of(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    f = figures.get("latency")
    if f:
        rows.append(
            (
                f"latency, {AGENTS} agents, {f['deliveries_per_s']:,.0f} deliveries/s",
                f"p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms",
                f"at the socket p50 {f['socket_p50_ms']:.2f} ms, p99 {f['socket_p99_ms']:.2f} ms;"
                f" p99.9 {f['p999_ms']:.2f} ms",
            )
        )
    f = figures.get("throughput.lean")
    if f:
        rows.append(
            (
                f"throughput, {AGENTS} agents, lean client",
                f"{fmt(f['deliveries_per_s'])} deliveries/s",
                f"{fmt(f['publishes_per_s'])} publishes/s, "
                f"{fmt(f['messages_per_frame'])} messages/frame",
            )
        )
    f = figures.get("throughput.sdk")
    if f:
        if "pending" in f:
            rows.append((f"throughput, {AGENTS} agents, SDK agents", "pending SDK", ""))
        else:
            rows.append(
                (
                    f"throughput, {AGENTS} agents, SDK agents",
                    f"{fmt(f['deliveries_per_s'])} deliveries/s",
                    f"{fmt(f['publishes_per_s'])} publishes/s",
                )
            )
    f = figures.get("scale")
    if f:
        rows.append(
            (
                "idle connections (1 heartbeat/s each)",
                f"{f['connections']:,.0f} held of {f['attempted']:,.0f}",
                f"{f['connects_per_s']:,.0f} connects/s; server CPU {f['server_cpu']:.0%} at "
                f"{f['heartbeats_per_s']:,.0f} heartbeats/s",
            )
        )
        rows.append(
            (
                "server RSS per connection",
                f"{f['rss_per_connection_kib']:.1f} KiB",
                f"RSS {f['rss_before_mib']:.0f} -> {f['rss_after_mib']:.0f} MiB",
            )
        )
    return rows


def main() -> None:
    p = common.parser(
        __doc__,
        only="run only this case (repeatable): latency, throughput, throughput:lean, "
        "throughput:sdk, scale",
    )
    p.add_argument(
        "--profile", help="record the server with py-spy in every run: PROFILE.<case>.<run>"
    )
    p.add_argument("--pyspy", default="/tmp/pyspy-venv/bin/py-spy", help="py-spy binary")
    p.add_argument(
        "--server-prelude",
        default="",
        help="Python code the server process runs before fleetchat starts, for experiments, "
        "e.g. 'import gc; gc.set_threshold(20_000, 10, 10)'; recorded in the JSON",
    )
    args = common.parse(p)
    global PRELUDE
    PRELUDE = args.server_prelude
    ws_client.raise_nofile()
    if len(os.sched_getaffinity(0)) < 2:
        log("warning: fewer than 2 CPUs available; server and load share one")
    session = common.Session(args)
    figures = run_all(args)
    # --quick opens 3,000 connections: the count target needs a full run
    skip = ("scale.connections",) if args.quick else ()
    targets = common.targets_met(figures, TARGETS, ratio=True, skip=skip)
    title = session.title("network hub")
    if args.server_prelude:
        title += f"; server prelude: {args.server_prelude}"
    pending = "pending" in figures.get("throughput.sdk", {})
    common.print_report(
        title,
        rows_of(figures),
        targets,
        to_stderr=args.json,
        width=130,
        targets_title="targets",
        pending=["deliveries/s to 100 agents, SDK agents"] if pending else [],
    )
    common.warn_shares(
        "note: the server was CPU-bound (> 95% of its core) in: ",
        {k: v for k, v in CPU_SHARES.items() if k.endswith(".server") and v > 0.95},
    )
    common.warn_shares(
        "warning: other processes took the CPU from these (run-queue wait over 5% of the "
        "time; figures are disturbed): ",
        {k: v for k, v in CPU_SHARES.items() if k.endswith("_wait") and v > 0.05},
    )
    session.finish(
        figures, targets, fields={"server_prelude": args.server_prelude}, cpu_share=CPU_SHARES
    )


if __name__ == "__main__":
    main()
