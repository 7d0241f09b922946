#!/usr/bin/env python
"""fleetchat distributed-mode benchmarks: hub nodes on one nats-server and one PostgreSQL.

    python benchmarks/distributed.py [--quick] [--json] [--runs 3] [--only NAME ...]

Every run starts its own cluster: a fresh ``nats-server -js`` (``fleetchat.testing.services``,
free port, its own store dir) and hub nodes ``fleetchat serve --port 0 --bus nats://...
--store postgresql://... --no-auth --log-level warning`` (through the launcher of
benchmarks/ws.py, which raises RLIMIT_NOFILE). One throwaway PostgreSQL serves the whole script.
Node 0 is started first, so it is the elected leader (the node that runs the fan-out of channel
messages into member inboxes); the script checks that on ``/healthz`` before starting the
others. Nothing is pinned: nodes, nats-server and the load process share the machine's cores.
Agents are the lean WebSocket client of benchmarks/ws_client.py, in one load process
(multiprocessing, fork). Every figure is the median of ``--runs`` runs (default 3). ``--json``
prints one JSON object on stdout (the table goes to stderr). ``--only`` runs some cases:
latency (latency:10k, latency:1k), throughput (throughput:1, :2, :3), failover; ``--quick``
leaves latency:1k out unless asked for. ``--profile PREFIX`` records every node with py-spy over
the measured phase of latency and throughput runs; ``--node-prelude CODE`` (or ``@file``) runs
Python in every node first, for experiments. The nodes run the fleetchat that Python imports:
to measure a fixed commit while src/ changes, export it (``git archive HEAD src | tar -x -C DIR``,
the commit in ``DIR/COMMIT``) and run with ``PYTHONPATH=DIR/src``; the JSON records which.
See docs/performance.md ("Distributed mode").

Cases
-----
latency:10k: 2 nodes. 100 agents on node B (a follower) in one durable channel; one publisher
(not a member) on node A (the leader) sends 100 publishes/s on a fixed schedule, so 10,000
deliveries/s, each body carrying ``time.time_ns()`` taken just before the socket write and a
counter. Receivers (window 4096) ack cumulatively once per socket read and take ``now - t`` (in
the load process) and ``kernel receive time - t`` (SO_TIMESTAMPNS). Also recorded: the
publisher's ``publish -> published`` time (JetStream confirmed the store), and per message the
first and the last of the 100 receivers (how long the fan-out of one message takes).
latency:1k: the same at 10 publishes/s (1,000 deliveries/s).

throughput:N: N nodes (1, 2, 3). 100 agents spread round-robin over the nodes, one durable
channel, one publisher on node 0 (the leader) that keeps at most ``TP_WINDOW`` messages ahead
of the slowest receiver (the Feeder of ws_client.py). Rate = measured messages x 100 / time from
the slowest receiver having the warm-up messages to it having all. CPU of every node, of
nats-server, of PostgreSQL (all its processes) and of the load process from ``/proc/<pid>/stat``
(utime + stime, all threads) over that window; per 1,000 deliveries/s = CPU share / (deliveries/s
/ 1,000). ``wait_max`` is the largest run-queue wait share (``/proc/<pid>/task/*/schedstat``,
summed over a process's threads): time the processes were runnable but had no CPU.

failover: 3 nodes; node 0 leads. 5 agents on node 1 (a follower), 5 on node 0 (the leader), a
control agent and a publisher (100 publishes/s, durable channel, body with time and counter) on
node 2. First node 1 gets SIGKILL: its agents reconnect at once to node 2 (connect, hello ->
welcome; no subscribe, the membership is durable). Then the leader gets SIGKILL: ``/healthz`` of
node 2 is polled every 10 ms until it says ``leader: true`` (the failover time), and its agents
reconnect the same way. Per killed node, medians over its agents of the time from the kill to:
the lost connection, the welcome, the first message after it, the next message in order (the one
after the last it had with none missing before), and the first message published after the kill.
At the end the load waits (1 s, full: 35 s) for stragglers and counts messages never received,
duplicates and deliveries more than 1 s after their publish. A time that was never reached is
the longest; a median that is one is reported as "not seen".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common
import ws_client
from _common import fmt, log, wanted
from ws import LAUNCHER
from ws_client import Conn, open_agent, open_many, ws_frame

from fleetchat.testing.services import NatsServer, PostgresServer

HOST = "127.0.0.1"
AGENTS = 100
LAT_RATE = 100.0  # publishes/s in the latency case: x 100 agents = 10,000 deliveries/s
LAT_WINDOW = 4096
TP_WINDOW = 100  # messages the throughput publisher keeps ahead of the slowest receiver
TP_CHUNK = 10
FO_AGENTS = 5  # agents on each killed node in the failover case
FO_RATE = 100.0  # publishes/s in the failover case
HEALTH_POLL = 0.01
PRELUDE = ""  # --node-prelude: Python run in every node process first (experiments)
PROFILE: dict[str, str] = {}  # --profile: {"prefix": ..., "pyspy": ...}
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS: list[tuple[str, str, float, str]] = [
    ("latency.p99_ms", "<", 10.0, "cross-node publish-to-deliver p99, 10,000 deliveries/s (ms)"),
    ("failover.failover_s", "<", 5.0, "leader failover: kill -9 to a new leader on /healthz (s)"),
]


def measured_code() -> str:
    """What the nodes run: the commit of this checkout (``+dirty`` when src/ differs), or, when
    PYTHONPATH points at an exported tree (``git archive HEAD src``, with the commit written to
    a COMMIT file beside src/), that commit; the nodes inherit PYTHONPATH."""
    import fleetchat

    root = Path(fleetchat.__file__).resolve().parents[2]
    if root == Path(__file__).resolve().parents[1]:
        return common.git()
    commit = root / "COMMIT"
    if commit.exists():
        return f"{commit.read_text().strip()} (exported to {root})"
    return str(root)


# -- processes and their CPU --------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (/proc/<pid>/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_seconds(pid: int) -> float:
    """Run-queue wait (runnable, but another process had the CPU) of every thread of ``pid``,
    in seconds, from /proc/<pid>/task/*/schedstat."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[1])
    return total / 1e9


def children_of(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid:
            out.append(int(name))
    return out


class Postgres:
    """One throwaway PostgreSQL for the whole script; CPU summed over its processes."""

    def __init__(self, base: Path) -> None:
        self.server = PostgresServer(base / "pg").start()
        self.url = self.server.url
        pidfile = self.server.data_dir / "postmaster.pid"
        self.pid = int(pidfile.read_text().split()[0])

    def cpu(self) -> float:
        total = 0.0
        for pid in [self.pid, *children_of(self.pid)]:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def stop(self) -> None:
        self.server.stop("immediate")


class Node:
    """One ``fleetchat serve`` hub node on a free port."""

    def __init__(self, index: int, nats_url: str, store_url: str, logdir: Path) -> None:
        self.index = index
        self.log_path = logdir / f"node{index}.log"
        with open(self.log_path, "w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    PRELUDE + "\n" + LAUNCHER,
                    "serve",
                    "--port",
                    "0",
                    "--bus",
                    nats_url,
                    "--store",
                    store_url,
                    "--no-auth",
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.pid = self.proc.pid
        self.port = 0
        self.url = ""
        self.killed = False

    def wait_ready(self) -> Node:
        """Read the first line (``fleetchat hub serving http://127.0.0.1:<port>: ...``)."""
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"http://[^:/]+:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"node {self.index} did not start: {line!r}; see {self.log_path}")
        self.port = int(m.group(1))
        self.url = f"http://{HOST}:{self.port}"
        return self

    def get(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.url + path,
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def health(self) -> dict[str, Any]:
        return dict(self.get("/healthz", timeout=1.0))

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def kill9(self) -> int:
        """SIGKILL; returns time.time_ns() taken just before the signal."""
        t = time.time_ns()
        self.proc.send_signal(signal.SIGKILL)
        self.killed = True
        self.proc.wait()
        return t

    def stop(self) -> None:
        """SIGKILL: the cluster is thrown away with its nats-server. (A graceful SIGTERM can
        take 30 s on the leader: see docs/performance.md.)"""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class Cluster:
    """A fresh nats-server and ``n`` hub nodes on the shared PostgreSQL; node 0 leads."""

    def __init__(self, n: int, pg: Postgres, base: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cluster-", dir=base))
        self.pg = pg
        self.nats = NatsServer(self.dir / "nats").start()
        assert self.nats.proc is not None
        self.nats_pid = self.nats.proc.pid
        self.nodes: list[Node] = []
        try:
            self.nodes.append(Node(0, self.nats.url, pg.url, self.dir).wait_ready())
            self.wait_leader([self.nodes[0]], 10.0)  # the first node leads; then the others
            self.nodes += [Node(i, self.nats.url, pg.url, self.dir) for i in range(1, n)]
            for node in self.nodes[1:]:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def wait_leader(nodes: list[Node], timeout: float) -> tuple[Node, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            for node in nodes:
                with contextlib.suppress(OSError, ValueError):
                    h = node.health()
                    if h.get("leader"):
                        return node, h
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader among nodes {[n.index for n in nodes]}")
            time.sleep(HEALTH_POLL)

    def leader(self) -> Node:
        return self.wait_leader([n for n in self.nodes if not n.killed], 10.0)[0]

    def create_channel(self, name: str) -> None:
        self.nodes[0].post("/v1/channels", {"name": name, "ephemeral": False, "announce": False})
        deadline = time.monotonic() + 10
        for node in self.nodes:  # every node learns it from the KV watch
            while True:
                try:
                    node.get(f"/v1/channels/{name}")
                    break
                except urllib.error.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)

    def wait_members(self, channel: str, count: int, timeout: float = 20.0) -> None:
        """Until every live node (the leader's fan-out above all) sees ``count`` members."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.killed:
                continue
            while len(node.get(f"/v1/channels/{channel}/members")["members"]) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node.index} does not see {count} members")
                time.sleep(0.02)

    def cpu(self, load_pid: int | None = None) -> dict[str, float]:
        """CPU seconds of every process, and ``<name>_wait``: their run-queue wait."""
        pids = {f"node{n.index}": n.pid for n in self.nodes if not n.killed}
        pids["nats"] = self.nats_pid
        if load_pid is not None:
            pids["load"] = load_pid
        out = {}
        for name, pid in pids.items():
            out[name] = cpu_seconds(pid)
            out[name + "_wait"] = wait_seconds(pid)
        out["postgres"] = self.pg.cpu()
        return out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nats.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CpuWindow:
    """CPU shares (CPU seconds per wall second) of a cluster's processes between marks; with
    ``--profile``, py-spy records every node over the same window."""

    def __init__(self, cluster: Cluster, load_pid: int, label: str = "") -> None:
        self.cluster = cluster
        self.load_pid = load_pid
        self.label = label
        self.t0 = 0.0
        self.c0: dict[str, float] = {}
        self.shares: dict[str, float] = {}
        self.spies: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        if PROFILE and self.label:
            for n in self.cluster.nodes:
                out = f"{PROFILE['prefix']}.{self.label}.node{n.index}"
                cmd = [PROFILE["pyspy"], "record", "--pid", str(n.pid), "--rate", "250"]
                self.spies.append(
                    subprocess.Popen(
                        [*cmd, "--format", "raw", "-o", out],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        self.t0 = time.perf_counter()
        self.c0 = self.cluster.cpu(self.load_pid)

    def end(self) -> None:
        wall = time.perf_counter() - self.t0
        c1 = self.cluster.cpu(self.load_pid)
        self.shares = {k: (c1[k] - self.c0[k]) / wall for k in c1 if k in self.c0}
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()


# -- the load process ---------------------------------------------------------------------

_ctx = mp.get_context("fork")


class Load:
    """One load process running a role below; talks over a pipe."""

    def __init__(self, role: str, **kwargs: Any) -> None:
        self.pipe, child = _ctx.Pipe()
        self.proc = _ctx.Process(target=_child, args=(role, kwargs, child), daemon=True)
        self.proc.start()
        assert self.proc.pid is not None
        self.pid = self.proc.pid
        child.close()

    def recv(self, timeout: float) -> tuple[str, Any]:
        if not self.pipe.poll(timeout):
            self.kill()
            raise RuntimeError(f"load process gave no answer in {timeout:.0f} s")
        kind, value = self.pipe.recv()
        if kind == "error":
            raise RuntimeError(f"load process failed:\n{value}")
        return kind, value

    def expect(self, kind: str, timeout: float) -> Any:
        got, value = self.recv(timeout)
        if got != kind:
            raise RuntimeError(f"load process said {got!r}, expected {kind!r}")
        return value

    def send(self, what: Any) -> None:
        self.pipe.send(what)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


def _child(role: str, kwargs: dict[str, Any], pipe: Any) -> None:
    import uvloop

    ws_client.raise_nofile()
    gc.collect()
    gc.freeze()
    gc.disable()  # load-side pauses would show up as hub latency
    roles: dict[str, Callable[..., Any]] = {
        "latency": latency_role,
        "throughput": throughput_role,
        "failover": failover_role,
    }
    try:
        result = uvloop.run(roles[role](pipe=pipe, **kwargs))
        pipe.send(("result", result))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


async def pipe_recv(pipe: Any) -> Any:
    """The next object from the main process, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    while not pipe.poll():
        fut: asyncio.Future[None] = loop.create_future()

        def ready(fut: asyncio.Future[None] = fut) -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(pipe.fileno(), ready)
        try:
            await fut
        finally:
            loop.remove_reader(pipe.fileno())
    return pipe.recv()


class _Body(msgspec.Struct):
    t: int = 0
    i: int = -1


class _Msg(msgspec.Struct):
    body: _Body


class _Deliver(msgspec.Struct):
    first_tag: int
    messages: list[_Msg]


class _Published(msgspec.Struct):
    id: str = ""


_decode_deliver = msgspec.json.Decoder(_Deliver).decode
_decode_published = msgspec.json.Decoder(_Published).decode
PUBLISH = b'{"type":"publish","id":"%d","channel":"%s","body":{"t":%d,"i":%d,' + (
    ws_client.BODY[1:] + b"}"
)


def percentiles(values: list[int], prefix: str = "") -> dict[str, float]:
    return {prefix + k: v for k, v in ws_client._percentiles(values).items()}


# -- roles (in the load process) ----------------------------------------------------------


async def latency_role(
    *,
    pipe: Any,
    pub_port: int,
    recv_port: int,
    agents: int,
    rate: float,
    warmup: float,
    duration: float,
    channel: str,
) -> dict[str, Any]:
    """``agents`` receivers on ``recv_port``; a publisher on ``pub_port`` sends ``rate``
    publishes/s with its send time and a counter; receivers take the latency on arrival."""
    loop = asyncio.get_running_loop()
    ids = [f"lat-{i}" for i in range(agents)]
    recvs = await open_many(
        HOST, recv_port, ids, 50, window=LAT_WINDOW, channels=[channel], timestamps=True
    )
    pub = await open_agent(HOST, pub_port, "lat-pub")
    total = int((warmup + duration) * rate)
    measured = int(duration * rate)
    first_measured = total - measured
    sent = [0] * total
    commit: list[int] = []
    first = [1 << 62] * total
    last = [0] * total
    proc_lat: list[int] = []
    sock_lat: list[int] = []
    errors: list[bytes] = []
    now_ns = time.time_ns

    def on_pub(conn: Conn, buf: bytearray, start: int, end: int) -> None:
        now = now_ns()
        if ws_client.is_type(buf, start, end, ws_client.PUBLISHED_TYPE):
            i = int(_decode_published(buf[start:end]).id)
            if i >= first_measured:
                commit.append(now - sent[i])
        elif len(errors) < 5:
            errors.append(bytes(buf[start : min(end, start + 300)]))

    def on_text(conn: Conn, buf: bytearray, start: int, end: int) -> None:
        now = now_ns()
        if not ws_client.is_type(buf, start, end, ws_client.DELIVER_TYPE):
            return
        d = _decode_deliver(buf[start:end])
        ts = conn.ts_ns
        for m in d.messages:
            t, i = m.body.t, m.body.i
            lat = now - t
            if i >= first_measured:
                proc_lat.append(lat)
                sock_lat.append(ts - t)
            if lat < first[i]:
                first[i] = lat
            if lat > last[i]:
                last[i] = lat
        n = len(d.messages)
        conn.got += n
        conn.frames += 1
        conn.upto = d.first_tag + n - 1

    pub.on_text = on_pub
    for c in recvs:
        c.on_text = on_text
    pipe.send(("ready", None))
    await pipe_recv(pipe)  # go: the nodes see every member
    interval = 1.0 / rate
    chan = channel.encode()
    start = loop.time()
    for i in range(total):
        if i == first_measured:
            pipe.send(("mark", "start"))
            t_measure = time.perf_counter()
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = now_ns()
        sent[i] = t
        pub.send(ws_frame(PUBLISH % (i, chan, t, i)))
    deadline = loop.time() + 10.0
    while any(c.got < total for c in recvs) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    wall = time.perf_counter() - t_measure
    pipe.send(("mark", "end"))
    got = sum(c.got for c in recvs)
    frames = sum(c.frames for c in recvs)
    for c in [*recvs, pub]:
        c.close()
    if not proc_lat:
        raise RuntimeError(f"latency: no deliveries; publisher errors {errors}")
    out: dict[str, Any] = percentiles(proc_lat)
    out.update(percentiles(sock_lat, "socket_"))
    out.update(percentiles(commit, "commit_"))
    out.update(percentiles(first[first_measured:], "first_"))
    out.update(percentiles(last[first_measured:], "last_"))
    out.update(
        {
            "samples": len(proc_lat),
            "deliveries_per_s": measured * agents / duration,
            "delivered": got / (total * agents),
            "messages_per_frame": got / max(frames, 1),
            "measured_wall_s": wall,
            "errors": len(errors),
            "first_error": errors[0].decode(errors="replace") if errors else "",
        }
    )
    return out


class MarkingFeeder(ws_client.Feeder):
    """The ws.py Feeder, telling the main process when its measured window starts and ends
    (the main process reads every process's CPU time then)."""

    pipe: Any = None

    def pump(self) -> None:
        warm, done = "t_warm" in self.marks, self.done.done()
        super().pump()
        if not warm and "t_warm" in self.marks:
            self.pipe.send(("mark", "start"))
        if not done and self.done.done():
            self.pipe.send(("mark", "end"))


async def throughput_role(
    *,
    pipe: Any,
    ports: list[int],
    pub_port: int,
    server_pid: int,
    agents: int,
    warm: int,
    total: int,
    window: int,
    chunk: int,
    channel: str,
) -> dict[str, Any]:
    """``agents`` lean receivers spread round-robin over ``ports``; a Feeder on ``pub_port``."""
    recvs: list[Conn] = []
    for k, port in enumerate(ports):
        ids = [f"tp-{j}" for j in range(agents) if j % len(ports) == k]
        recvs += await open_many(HOST, port, ids, 50, window=4096, channels=[channel])
    pub = await open_agent(HOST, pub_port, "tp-pub")
    feeder = MarkingFeeder(
        pub,
        lambda: min(c.got for c in recvs),
        lambda: sum(c.frames for c in recvs),
        server_pid=server_pid,
        warm=warm,
        total=total,
        window=window,
        chunk=chunk,
        channel=channel,
    )
    feeder.pipe = pipe
    for c in recvs:
        c.on_text = ws_client.count_deliver
        c.after_read = feeder.pump
    pipe.send(("ready", None))
    await pipe_recv(pipe)
    try:
        return await feeder.run(agents)
    finally:
        for c in [*recvs, pub]:
            c.close()


class FoAgent:
    """A failover-case agent: records what it receives, reconnects to ``fallback`` when its
    connection is lost."""

    def __init__(self, agent_id: str, group: str) -> None:
        self.id = agent_id
        self.group = group
        self.conn: Conn | None = None
        self.arrivals: dict[int, int] = {}  # counter -> first arrival (time_ns)
        self.dups = 0
        self.lost_ns = 0
        self.welcome_ns = 0
        self.first_ns = 0  # first message after the welcome
        self.had = -1  # the highest counter with none missing below it, at the loss
        self.reconnect_error = ""

    def contiguous(self) -> int:
        i = -1
        while i + 1 in self.arrivals:
            i += 1
        return i


async def failover_role(
    *,
    pipe: Any,
    groups: dict[str, tuple[int, int]],
    fallback_port: int,
    pub_port: int,
    rate: float,
    tail: float,
    channel: str,
) -> dict[str, Any]:
    """Agents in ``groups`` (name -> (port, count)) plus a control agent, on ``channel``; a
    publisher on ``pub_port``. Lost agents reconnect to ``fallback_port``; when every agent of
    a group has a message after its new welcome, ``("recovered", group)`` goes to the main
    process."""
    loop = asyncio.get_running_loop()
    now_ns = time.time_ns
    agents: list[FoAgent] = []
    reported: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()

    def check_group(group: str) -> None:
        mine = [a for a in agents if a.group == group]
        if group not in reported and all(a.first_ns for a in mine):
            reported.add(group)
            pipe.send(("recovered", group))

    def handler(agent: FoAgent) -> ws_client.TextHandler:
        def on_text(conn: Conn, buf: bytearray, start: int, end: int) -> None:
            now = now_ns()
            if not ws_client.is_type(buf, start, end, ws_client.DELIVER_TYPE):
                return
            d = _decode_deliver(buf[start:end])
            for m in d.messages:
                i = m.body.i
                if i in agent.arrivals:
                    agent.dups += 1
                else:
                    agent.arrivals[i] = now
                if agent.welcome_ns and not agent.first_ns:
                    agent.first_ns = now
                    check_group(agent.group)
            n = len(d.messages)
            conn.got += n
            conn.upto = d.first_tag + n - 1

        return on_text

    def watch(agent: FoAgent, conn: Conn) -> None:
        """Read through our own callback, to see the moment the connection is lost."""
        conn.on_text = handler(agent)
        agent.conn = conn
        loop.remove_reader(conn.fd)

        def readable() -> None:
            conn._readable()
            if conn.closed and agent.conn is conn:
                agent.conn = None
                if not agent.lost_ns:
                    agent.lost_ns = now_ns()
                    agent.had = agent.contiguous()
                    tasks.add(loop.create_task(reconnect(agent)))

        loop.add_reader(conn.fd, readable)

    async def reconnect(agent: FoAgent) -> None:
        deadline = loop.time() + 20.0
        while True:
            try:
                conn = await open_agent(HOST, fallback_port, agent.id, window=LAT_WINDOW)
            except Exception as exc:
                agent.reconnect_error = f"{type(exc).__name__}: {exc}"
                if loop.time() > deadline:
                    return
                await asyncio.sleep(0.05)
                continue
            agent.welcome_ns = now_ns()
            watch(agent, conn)
            return

    for group, (port, count) in groups.items():
        for j in range(count):
            agent = FoAgent(f"fo-{group}-{j}", group)
            watch(agent, await open_agent(HOST, port, agent.id, channels=[channel]))
            agents.append(agent)
    control = FoAgent("fo-control", "control")
    watch(control, await open_agent(HOST, fallback_port, control.id, channels=[channel]))
    pub = await open_agent(HOST, pub_port, "fo-pub")
    pub_errors: list[bytes] = []

    def on_pub(conn: Conn, buf: bytearray, start: int, end: int) -> None:
        published = ws_client.is_type(buf, start, end, ws_client.PUBLISHED_TYPE)
        if not published and len(pub_errors) < 5:
            pub_errors.append(bytes(buf[start : min(end, start + 300)]))

    pub.on_text = on_pub
    pipe.send(("ready", None))
    await pipe_recv(pipe)  # go
    sent: list[int] = []
    chan = channel.encode()
    stop = [False]

    async def publisher() -> None:
        start = loop.time()
        i = 0
        while not stop[0]:
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t = now_ns()
            sent.append(t)
            pub.send(ws_frame(PUBLISH % (i, chan, t, i)))
            i += 1

    pub_task = loop.create_task(publisher())
    await asyncio.sleep(1.0)
    pipe.send(("steady", None))
    await pipe_recv(pipe)  # stop
    stop[0] = True
    await pub_task
    # Redeliveries of what a dead node held come after the ack timeout (5 s by default).
    deadline = loop.time() + tail
    while loop.time() < deadline and any(  # noqa: ASYNC110
        len(a.arrivals) < len(sent) for a in [*agents, control]
    ):
        await asyncio.sleep(0.05)
    for a in [*agents, control]:
        if a.conn is not None:
            a.conn.close()
    pub.close()
    return {
        "agents": [
            {
                "id": a.id,
                "group": a.group,
                "lost_ns": a.lost_ns,
                "welcome_ns": a.welcome_ns,
                "had": a.had,
                "arrivals": sorted(a.arrivals.items()),
                "dups": a.dups,
                "reconnect_error": a.reconnect_error,
            }
            for a in [*agents, control]
        ],
        "sent": sent,
        "pub_errors": [e.decode(errors="replace") for e in pub_errors],
    }


# -- cases (in the main process) ----------------------------------------------------------


def drive(load: Load, window: CpuWindow | None, timeout: float) -> Any:
    """Relay the load's marks to ``window`` until its result."""
    while True:
        kind, value = load.recv(timeout)
        if kind == "mark" and window is not None:
            window.start() if value == "start" else window.end()
        elif kind == "result":
            load.proc.join(10)
            return value


def latency_run(
    pg: Postgres,
    base: Path,
    quick: bool,
    agents: int = AGENTS,
    rate: float = LAT_RATE,
    label: str = "",
) -> dict[str, Any]:
    warmup, duration = (0.5, 2.0) if quick else (2.0, 10.0)
    with Cluster(2, pg, base) as cl:
        a, b = cl.nodes
        if not a.health()["leader"]:
            raise RuntimeError("node A is not the leader")
        cl.create_channel("lat")
        load = Load(
            "latency",
            pub_port=a.port,
            recv_port=b.port,
            agents=agents,
            rate=rate,
            warmup=warmup,
            duration=duration,
            channel="lat",
        )
        try:
            load.expect("ready", 60)
            cl.wait_members("lat", agents)
            load.send("go")
            window = CpuWindow(cl, load.pid, label)
            r = drive(load, window, duration + warmup + 60)
        finally:
            load.kill()
        shares = window.shares
        r["cpu_node_a"] = shares["node0"]
        r["cpu_node_b"] = shares["node1"]
        r["cpu_nats"] = shares["nats"]
        r["cpu_postgres"] = shares["postgres"]
        r["cpu_load"] = shares["load"]
        r["wait_max"] = max_wait(shares)
        return r


def throughput_run(
    pg: Postgres, base: Path, quick: bool, nodes: int, label: str = ""
) -> dict[str, Any]:
    warm, total = (100, 250) if quick else (500, 2_500)
    with Cluster(nodes, pg, base) as cl:
        cl.create_channel("fan")
        load = Load(
            "throughput",
            ports=[n.port for n in cl.nodes],
            pub_port=cl.nodes[0].port,
            server_pid=cl.nodes[0].pid,
            agents=AGENTS,
            warm=warm,
            total=total,
            window=TP_WINDOW,
            chunk=TP_CHUNK,
            channel="fan",
        )
        try:
            load.expect("ready", 60)
            cl.wait_members("fan", AGENTS)
            load.send("go")
            window = CpuWindow(cl, load.pid, label)
            r = drive(load, window, 300)
        finally:
            load.kill()
    shares = window.shares
    rate_k = r["deliveries_per_s"] / 1000
    out = {
        k: v for k, v in r.items() if common.is_number(v) and not k.startswith(("server_", "load_"))
    }
    out["cpu_leader"] = shares["node0"]
    followers = [shares[f"node{i}"] for i in range(1, nodes)]
    out["cpu_hub_total"] = shares["node0"] + sum(followers)
    if followers:
        out["cpu_follower"] = statistics.mean(followers)
    out["cpu_nats"] = shares["nats"]
    out["cpu_postgres"] = shares["postgres"]
    out["cpu_load"] = shares["load"]
    out["wait_max"] = max_wait(shares)
    for k in ("cpu_leader", "cpu_follower", "cpu_hub_total", "cpu_nats", "cpu_postgres"):
        if k in out:
            out[k + "_per_1k"] = out[k] / rate_k
    return out


def failover_run(pg: Postgres, base: Path, quick: bool) -> dict[str, Any]:
    # After the stop: wait for stragglers. The full run waits past the fan-out consumer's ack
    # wait (30 s), to see what a dead leader had fetched arrive.
    tail = 1.0 if quick else 35.0
    with Cluster(3, pg, base) as cl:
        leader, follower, spare = cl.nodes
        if not leader.health()["leader"]:
            raise RuntimeError("node 0 is not the leader")
        cl.create_channel("fo")
        load = Load(
            "failover",
            groups={"follower": (follower.port, FO_AGENTS), "leader": (leader.port, FO_AGENTS)},
            fallback_port=spare.port,
            pub_port=spare.port,
            rate=FO_RATE,
            tail=tail,
            channel="fo",
        )
        try:
            load.expect("ready", 60)
            cl.wait_members("fo", 2 * FO_AGENTS + 1)
            load.send("go")
            load.expect("steady", 30)
            kill_follower = follower.kill9()
            load.expect("recovered", 30)
            time.sleep(0.5 if quick else 2.0)
            epoch0 = leader.health()["epoch"]
            kill_leader = leader.kill9()
            _, health = cl.wait_leader([spare], 30.0)
            elected = time.time_ns()
            load.expect("recovered", 60)
            time.sleep(0.5)
            load.send("stop")
            r = drive(load, None, tail + 60)
        finally:
            load.kill()
    out: dict[str, Any] = {
        "failover_s": (elected - kill_leader) / 1e9,
        "epoch_before": epoch0,
        "epoch_after": health["epoch"],
    }
    out.update(reconnect_figures(r, {"follower": kill_follower, "leader": kill_leader}))
    return out


def reconnect_figures(r: dict[str, Any], kills: dict[str, int]) -> dict[str, Any]:
    """Per killed node (group), medians over its agents of the time from the kill to: the
    connection seen lost (detect), the welcome from the new node, the first message after it,
    the next message in order (the one after the last it had with none missing before), and
    the first message published after the kill (fresh). Also: messages never received,
    duplicates, deliveries more than 1 s after their publish, and the control agent's (on the
    surviving node) longest gap between deliveries."""
    sent: list[int] = r["sent"]
    out: dict[str, Any] = {"sent": len(sent), "pub_errors": len(r["pub_errors"])}
    late: list[float] = []
    for a in r["agents"]:
        for i, t in a["arrivals"]:
            if t - sent[i] > 1e9:
                late.append((t - sent[i]) / 1e9)
    out["late_deliveries"] = len(late)  # summed over all agents
    out["latest_s"] = max(late, default=0.0)
    control = next(a for a in r["agents"] if a["group"] == "control")
    times = sorted(t for _, t in control["arrivals"])
    out["control_max_gap_s"] = max((b - a for a, b in itertools.pairwise(times)), default=0) / 1e9
    out["control_missing"] = len(sent) - len(control["arrivals"])
    for group, kill in kills.items():
        mine = [a for a in r["agents"] if a["group"] == group]
        fresh_i = next((i for i, t in enumerate(sent) if t >= kill), len(sent))
        figures: dict[str, list[float]] = {}
        for a in mine:
            got = dict(a["arrivals"])
            after = [t for _, t in a["arrivals"] if a["welcome_ns"] and t >= a["welcome_ns"]]
            marks = {
                "detect": a["lost_ns"],
                "welcome": a["welcome_ns"],
                "first": min(after, default=0),
                "next": got.get(a["had"] + 1, 0),
                "fresh": got.get(fresh_i, 0),
            }
            for name, t in marks.items():
                if t:
                    figures.setdefault(name, []).append((t - kill) / 1e6)
        for name in ("detect", "welcome", "first", "next", "fresh"):
            vals = figures.get(name, [])
            out[f"{group}_{name}_ms"] = statistics.median(vals) if vals else float("nan")
            out[f"{group}_{name}_max_ms"] = max(vals) if vals else float("nan")
            out[f"{group}_{name}_n"] = len(vals)
        out[f"{group}_missing"] = sum(len(sent) - len(a["arrivals"]) for a in mine)
        out[f"{group}_dups"] = sum(a["dups"] for a in mine)
        errs = [a["reconnect_error"] for a in mine if a["reconnect_error"]]
        out[f"{group}_reconnect_errors"] = len(errs)
        if errs:
            log(f"  {group}: reconnect errors, e.g. {errs[0]}")
    if r["pub_errors"]:
        log(f"  publisher errors, e.g. {r['pub_errors'][0]}")
    return out


def max_wait(shares: dict[str, float]) -> float:
    """The largest run-queue wait share of the measured processes: how much other processes
    (each other, or other work on the machine) kept them from a CPU."""
    return max((v for k, v in shares.items() if k.endswith("_wait")), default=0.0)


def median_of(runs: int, fn: Callable[[str], dict[str, Any]], label: str) -> dict[str, Any]:
    """Median of ``runs`` calls of ``fn(label.run)`` (the label names profiles); NaN (not seen
    within the run) counts as the longest, and a median that is one is None."""

    def one(i: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = fn(f"{label}.{i}")
        r["run_seconds"] = time.perf_counter() - t0
        return r

    results = common.runs_of(runs, one, show=True)
    out = common.median_figures(results)
    out["runs"] = [
        {k: (v if v == v else None) for k, v in r.items() if common.is_number(v)} for r in results
    ]
    return out


def run_all(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    quick, runs, only = args.quick, args.runs, args.only
    figures: dict[str, Any] = {}
    pg = Postgres(base)
    try:
        for key, rate in (("latency", LAT_RATE), ("latency.1k", LAT_RATE / 10)):
            name = "latency:10k" if key == "latency" else "latency:1k"
            if not wanted(only, name) or (quick and key != "latency" and not only):
                continue
            log(f"latency: {AGENTS} agents on node B, {rate:.0f} publishes/s on A x {runs}")
            figures[key] = median_of(
                runs, lambda lb, r=rate: latency_run(pg, base, quick, rate=r, label=lb), key
            )
        for n in (1, 2, 3):
            if wanted(only, f"throughput:{n}"):
                log(f"throughput: {n} node(s), {AGENTS} agents x {runs}")
                figures[f"throughput.{n}"] = median_of(
                    runs,
                    lambda lb, n=n: throughput_run(pg, base, quick, n, lb),
                    f"throughput.{n}",
                )
        if wanted(only, "failover"):
            log(f"failover and reconnect: 3 nodes, {FO_AGENTS} agents per killed node x {runs}")
            figures["failover"] = median_of(
                runs, lambda lb: failover_run(pg, base, quick), "failover"
            )
    finally:
        pg.stop()
    return figures


# -- output -------------------------------------------------------------------------------


def ms(v: float | None) -> str:
    """Milliseconds, or "not seen" for a message that did not arrive within the run."""
    return "not seen" if v is None or v != v else f"{v:,.0f} ms"


def pct(v: float) -> str:
    return f"{v:.0%}"


def rows_of(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for key in ("latency", "latency.1k"):
        f = figures.get(key)
        if not f:
            continue
        rows.append(
            (
                f"cross-node latency, {AGENTS} agents on B, "
                f"{f['deliveries_per_s']:,.0f} deliveries/s",
                f"p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms",
                f"socket p99 {f['socket_p99_ms']:.2f} ms, p99.9 {f['p999_ms']:.2f} ms; publish->"
                f"published p50 {f['commit_p50_ms']:.2f} / p99 {f['commit_p99_ms']:.2f} ms; "
                f"first receiver p50 {f['first_p50_ms']:.2f}, last p50 {f['last_p50_ms']:.2f} "
                f"ms; CPU A {pct(f['cpu_node_a'])}, B {pct(f['cpu_node_b'])}, nats "
                f"{pct(f['cpu_nats'])}",
            )
        )
    for n in (1, 2, 3):
        f = figures.get(f"throughput.{n}")
        if not f:
            continue
        per = f"per 1,000 deliveries/s: leader {pct(f['cpu_leader_per_1k'])}"
        cpu = f"CPU leader {pct(f['cpu_leader'])}"
        if "cpu_follower" in f:
            per += f", follower {pct(f['cpu_follower_per_1k'])}"
            cpu += f", followers {pct(f['cpu_follower'])} each"
        per += f", nats {pct(f['cpu_nats_per_1k'])} of a core"
        cpu += f", nats {pct(f['cpu_nats'])}, load {pct(f['cpu_load'])}"
        rows.append(
            (
                f"throughput, {n} node{'s' if n > 1 else ''}, {AGENTS} agents, durable",
                f"{fmt(f['deliveries_per_s'])} deliveries/s",
                f"{fmt(f['publishes_per_s'])} publishes/s; {cpu}; {per}",
            )
        )
    f = figures.get("failover")
    if f:
        rows.append(
            (
                "leader failover (kill -9 -> new leader on /healthz)",
                f"{f['failover_s']:.2f} s",
                f"control agent's longest gap between deliveries {f['control_max_gap_s']:.2f} "
                f"s; deliveries > 1 s late {f['late_deliveries']:.0f} (latest "
                f"{f['latest_s']:.1f} s); control agent missing {f['control_missing']:.0f}",
            )
        )
        for group, what in (("follower", "a follower"), ("leader", "the leader")):
            g = {k: ms(f.get(f"{group}_{k}_ms")) for k in ("welcome", "first", "next", "fresh")}
            rows.append(
                (
                    f"agent reconnect after {what} dies ({FO_AGENTS} agents)",
                    f"next message {g['next']} after the kill",
                    f"welcome {g['welcome']}, first message {g['first']}, first one published "
                    f"after the kill {g['fresh']}; missing {f[f'{group}_missing']:.0f}, "
                    f"duplicates {f[f'{group}_dups']:.0f}",
                )
            )
    return rows


def main() -> None:
    p = common.parser(
        __doc__,
        quick="shorter runs; about 90 s in all",
        only="run only this case (repeatable): latency, throughput, throughput:1, "
        "throughput:2, throughput:3, failover",
    )
    p.add_argument(
        "--node-prelude",
        default="",
        help="Python code every node process runs before fleetchat starts, for experiments "
        "(e.g. a monkeypatch); recorded in the JSON",
    )
    p.add_argument(
        "--profile",
        help="record every node with py-spy over the measured phase of the latency and "
        "throughput runs: PROFILE.<case>.<run>.node<i> (raw format; see pyspy_top.py)",
    )
    p.add_argument("--pyspy", default="/tmp/pyspy-venv/bin/py-spy", help="py-spy binary")
    args = common.parse(p)
    global PRELUDE
    PRELUDE = args.node_prelude
    if PRELUDE.startswith("@"):  # @file: the code in a file
        PRELUDE = Path(PRELUDE[1:]).read_text()
    if args.profile:
        PROFILE.update(prefix=args.profile, pyspy=args.pyspy)
    ws_client.raise_nofile()
    session = common.Session(args)
    base = Path(tempfile.mkdtemp(prefix="fleetchat-dist-"))
    try:
        figures = run_all(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    targets = common.targets_met(figures, TARGETS, ratio=True)
    code = measured_code()
    common.print_report(
        session.title("distributed", code),
        rows_of(figures),
        targets,
        to_stderr=args.json,
        width=150,
        targets_title="targets",
    )
    session.finish(figures, targets, head={"git": code}, fields={"node_prelude": PRELUDE})


if __name__ == "__main__":
    main()
