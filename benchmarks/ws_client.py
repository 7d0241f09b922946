"""Lean WebSocket load generator for benchmarks/ws.py: raw sockets, minimal parsing.

This is not the SDK. It speaks just enough of RFC 6455 and of the fleetchat protocol to load a
hub cheaply from one core:

* a non-blocking socket read with ``loop.add_reader`` (optionally ``recvmsg`` with
  ``SO_TIMESTAMPNS``, so the latency case also gets the kernel's receive time of each read);
* server frames are never fully parsed in the throughput case: a ``deliver`` frame is
  recognised by its prefix, ``first_tag`` read from the head, and its message count is
  ``bytearray.count(b'{"id":"')`` over the payload (a Message's first field is ``id``, and the
  benchmark bodies never contain that string); one cumulative ack ``upto = first_tag + count -
  1`` goes out per socket read, however many frames it held;
* client frames are built once as bytes. They are masked with an all-zero key (the mask is
  mandatory on client frames; a zero key leaves the payload as it is), so no XOR is needed;
* no permessage-deflate (it is not asked for), pings are answered, a close is echoed.

The roles (``latency_role``, ``throughput_role``, ``scale_role``) run in separate processes
started by benchmarks/ws.py and report over a ``multiprocessing`` pipe.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import resource
import socket
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

ZERO_MASK = b"\x00\x00\x00\x00"
RECV_BYTES = 256 * 1024
DELIVER_TYPE = b'"type":"deliver"'
PUBLISHED_TYPE = b'"type":"published"'
FIRST_TAG = b'"first_tag":'
HEAD_BYTES = 48  # the type and first_tag are looked for this far into a frame
MSG_MARK = b'{"id":"'
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python 3.11 lacks the name
BODY = b'{"robot":"amr-17","x":12.5,"y":-3.25,"battery":0.82,"state":"moving"}'
HEARTBEAT_SLOTS = 20  # heartbeat ticks per interval; each connection beats in one of them


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One client frame (FIN, masked with a zero key)."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0xFF)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


def ack_frame(upto: int) -> bytes:
    return ws_frame(b'{"type":"ack","upto":%d}' % upto)


HEARTBEAT = ws_frame(b'{"type":"heartbeat"}')


class Lost(Exception):
    pass


TextHandler = Callable[["Conn", bytearray, int, int], None]


class Conn:
    """One WebSocket connection. ``on_text(conn, buf, start, end)`` sees each text frame in
    place (``buf[start:end]``; do not keep a memoryview of ``buf``)."""

    __slots__ = (
        "acked",
        "after_read",
        "buf",
        "closed",
        "fd",
        "frames",
        "got",
        "idx",
        "loop",
        "need",
        "on_text",
        "sock",
        "timestamps",
        "ts_ns",
        "upto",
        "waiter",
        "wbuf",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, ts: bool) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.need = 2
        self.wbuf: bytearray | None = None
        self.on_text: TextHandler = Conn._to_waiter
        self.after_read: Callable[[], None] | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.closed = False
        self.timestamps = ts
        self.ts_ns = 0
        self.got = 0  # deliveries counted
        self.frames = 0  # deliver frames counted
        self.upto = 0  # highest tag to ack
        self.acked = 0
        self.idx = 0

    # -- reading ----------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            if self.timestamps:
                data, anc, _, _ = self.sock.recvmsg(RECV_BYTES, 64)
                for _lvl, _typ, raw in anc:
                    sec, ns = struct.unpack("qq", raw[:16])
                    self.ts_ns = sec * 1_000_000_000 + ns
            else:
                data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        if not data:
            self._lost()
            return
        buf = self.buf
        buf += data
        if len(buf) < self.need:
            return
        self._parse()
        if self.upto > self.acked:
            self.acked = self.upto
            self.send(ack_frame(self.upto))
        if self.after_read is not None:
            self.after_read()

    def _parse(self) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        on_text = self.on_text
        while True:
            if n - pos < 2:
                self.need = 2
                break
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - pos < 4:
                    self.need = 4
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    self.need = 10
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                h = 10
            end = pos + h + ln
            if end > n:
                self.need = end - pos
                break
            op = b0 & 0x0F
            if op == 1 or op == 2:
                on_text(self, buf, pos + h, end)
            elif op == 9:  # ping
                self.send(ws_frame(bytes(buf[pos + h : end]), 0xA))
            elif op == 8:  # close: echo it and go
                self.send(ws_frame(bytes(buf[pos + h : pos + h + 2]), 0x8))
                self._lost()
                return
            pos = end
        if pos:
            del buf[:pos]

    def _to_waiter(self, buf: bytearray, start: int, end: int) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(bytes(buf[start:end]))

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.fd)
            if self.wbuf is not None:
                self.loop.remove_writer(self.fd)
        except Exception:
            pass
        self.sock.close()
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(Lost("connection closed"))

    def close(self) -> None:
        self._lost()

    # -- writing ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.wbuf is not None:
            self.wbuf += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._lost()
            return
        if n < len(data):
            self.wbuf = bytearray(data[n:])
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        wbuf = self.wbuf
        assert wbuf is not None
        try:
            n = self.sock.send(wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        del wbuf[:n]
        if not wbuf:
            self.wbuf = None
            self.loop.remove_writer(self.fd)

    async def request(self, payload: bytes, timeout: float = 30.0) -> bytes:
        """Send one frame and wait for the next text frame (setup only)."""
        self.waiter = self.loop.create_future()
        self.send(ws_frame(payload))
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None


async def connect(host: str, port: int, *, timestamps: bool = False) -> Conn:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if timestamps:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        await loop.sock_connect(sock, (host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET /v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, req.encode())
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise Lost("closed during the handshake")
            resp += chunk
    except BaseException:
        sock.close()
        raise
    head, _, rest = resp.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise Lost(f"handshake refused: {head[:80]!r}")
    conn = Conn(loop, sock, timestamps)
    conn.buf += rest
    loop.add_reader(conn.fd, conn._readable)
    return conn


async def open_agent(
    host: str,
    port: int,
    agent_id: str,
    *,
    window: int = 4096,
    channels: list[str] | None = None,
    capabilities: dict[str, float] | None = None,
    timestamps: bool = False,
) -> Conn:
    """Connect, hello (welcome), subscribe (ok)."""
    conn = await connect(host, port, timestamps=timestamps)
    try:
        hello: dict[str, Any] = {"type": "hello", "agent_id": agent_id, "window": window}
        if capabilities is not None:
            hello["capabilities"] = capabilities
        reply = await conn.request(msgspec.json.encode(hello))
        if b'"welcome"' not in reply[:40]:
            raise Lost(f"hello refused: {reply[:200]!r}")
        if channels:
            sub = {"type": "subscribe", "id": "s", "channels": channels}
            reply = await conn.request(msgspec.json.encode(sub))
            if b'"ok"' not in reply[:40]:
                raise Lost(f"subscribe refused: {reply[:200]!r}")
    except BaseException:
        conn.close()
        raise
    return conn


async def open_many(
    host: str, port: int, ids: list[str], concurrency: int, **kw: Any
) -> list[Conn]:
    out: list[Conn | None] = [None] * len(ids)
    it = iter(range(len(ids)))

    async def worker() -> None:
        for i in it:
            out[i] = await open_agent(host, port, ids[i], **kw)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(ids)))))
    return [c for c in out if c is not None]


# -- deliver-frame handlers ---------------------------------------------------------------


def is_type(buf: bytearray, start: int, end: int, mark: bytes) -> bool:
    return buf.find(mark, start, min(end, start + HEAD_BYTES)) >= 0


def count_deliver(conn: Conn, buf: bytearray, start: int, end: int) -> None:
    """The lean path: count the messages of a deliver frame and note the tag to ack.

    Only the frame's head is searched for its type and ``first_tag`` (the server writes
    ``{"v":1,"type":"deliver","first_tag":N,"messages":[...]}``), then the messages are counted.
    """
    if buf.find(DELIVER_TYPE, start, start + HEAD_BYTES) >= 0:
        i = buf.find(FIRST_TAG, start, start + HEAD_BYTES + 16) + len(FIRST_TAG)
        j = buf.find(b",", i)
        first = int(buf[i:j])
        n = buf.count(MSG_MARK, j, end)
        conn.got += n
        conn.frames += 1
        conn.upto = first + n - 1


class _Body(msgspec.Struct):
    t: int = 0


class _Msg(msgspec.Struct):
    body: _Body


class _Deliver(msgspec.Struct):
    first_tag: int
    messages: list[_Msg]


# -- process plumbing ---------------------------------------------------------------------


def sched(pid: int | str = "self") -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of ``pid``'s main thread, from
    /proc/<pid>/schedstat. The wait is what other processes took from it."""
    with open(f"/proc/{pid}/schedstat") as f:
        run, wait, _ = f.read().split()
    return int(run) / 1e9, int(wait) / 1e9


class Shares:
    """CPU and run-queue wait shares of the server and of this load process over a phase."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.t0 = time.perf_counter()
        self.s0 = sched(server_pid)
        self.l0 = sched()

    def done(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        s1, l1 = sched(self.pid), sched()
        return {
            "server_cpu": (s1[0] - self.s0[0]) / wall,
            "server_wait": (s1[1] - self.s0[1]) / wall,
            "load_cpu": (l1[0] - self.l0[0]) / wall,
            "load_wait": (l1[1] - self.l0[1]) / wall,
        }


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child_main(role: str, kwargs: dict[str, Any], pipe: Any, cpus: set[int] | None) -> None:
    """Entry point of a load process (multiprocessing target)."""
    import uvloop

    if cpus:
        os.sched_setaffinity(0, cpus)
    raise_nofile()
    gc.collect()
    gc.freeze()
    gc.disable()  # load-side pauses would show up as hub latency
    roles: dict[str, Callable[..., Any]] = {
        "latency": latency_role,
        "throughput": throughput_role,
        "sdk_throughput": sdk_throughput_role,
        "scale": scale_role,
    }
    fn = roles[role]
    try:
        result = uvloop.run(fn(pipe=pipe, **kwargs))
        pipe.send(("result", result))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


def _percentiles(values: list[int]) -> dict[str, float]:
    """Nearest-rank p50/p99/p99.9/max of nanosecond values, in milliseconds."""
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan")}
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, -(-int(p * n) // 1000) - 1))] / 1e6

    return {"p50_ms": q(500), "p99_ms": q(990), "p999_ms": q(999), "max_ms": s[-1] / 1e6}


# -- roles --------------------------------------------------------------------------------


async def latency_role(
    *,
    pipe: Any,
    host: str,
    port: int,
    server_pid: int,
    agents: int,
    rate: float,
    warmup: float,
    duration: float,
    channel: str,
) -> dict[str, Any]:
    """``agents`` receivers in ``channel``; one publisher (not a member) sends ``rate``
    publishes/s with its send time in the body; receivers take the latency on arrival."""
    loop = asyncio.get_running_loop()
    ids = [f"lat-{i}" for i in range(agents)]
    recvs = await open_many(host, port, ids, 50, channels=[channel], timestamps=True)
    pub = await open_agent(host, port, "lat-pub")
    pub.on_text = lambda c, b, s, e: None  # published acks: ignored
    decode = msgspec.json.Decoder(_Deliver).decode
    proc_lat: list[int] = []
    sock_lat: list[int] = []
    measure_from = [1 << 62]
    now_ns = time.time_ns

    def on_text(conn: Conn, buf: bytearray, start: int, end: int) -> None:
        now = now_ns()
        if not is_type(buf, start, end, DELIVER_TYPE):
            return
        d = decode(buf[start:end])
        ts = conn.ts_ns
        since = measure_from[0]
        for m in d.messages:
            t = m.body.t
            if t >= since:
                proc_lat.append(now - t)
                sock_lat.append(ts - t)
        n = len(d.messages)
        conn.got += n
        conn.frames += 1
        conn.upto = d.first_tag + n - 1

    for c in recvs:
        c.on_text = on_text
    total = int((warmup + duration) * rate)
    measured = int(duration * rate)
    interval = 1.0 / rate
    pre = b'{"type":"publish","id":"%d","channel":"' + channel.encode() + b'","body":{"t":%d,'
    pre += BODY[1:] + b"}"
    shares = Shares(server_pid)
    start = loop.time()
    for i in range(total):
        if i == total - measured:
            measure_from[0] = now_ns()
            shares = Shares(server_pid)
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pub.send(ws_frame(pre % (i, now_ns())))
    deadline = loop.time() + 5.0
    while any(c.got < total for c in recvs) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    cpu = shares.done()
    got = sum(c.got for c in recvs)
    frames = sum(c.frames for c in recvs)
    for c in [*recvs, pub]:
        c.close()
    if got != total * agents:
        raise RuntimeError(f"latency: {got} deliveries, expected {total * agents}")
    out = {f"{k}": v for k, v in _percentiles(proc_lat).items()}
    out.update({f"socket_{k}": v for k, v in _percentiles(sock_lat).items()})
    out.update(
        {
            "samples": len(proc_lat),
            "deliveries_per_s": measured * agents / duration,
            "messages_per_frame": got / frames,
            **cpu,
        }
    )
    return out


class Feeder:
    """The throughput publisher: one lean connection that keeps at most ``window`` messages
    ahead of the slowest receiver (``low()``), writing ``chunk`` or more publish frames per
    socket write; ``warm`` messages first, then ``total`` measured ones. Call ``pump()``
    whenever receivers progressed."""

    def __init__(
        self,
        pub: Conn,
        low: Callable[[], int],
        frames_seen: Callable[[], int],
        *,
        server_pid: int,
        warm: int,
        total: int,
        window: int,
        chunk: int,
        channel: str,
    ) -> None:
        self.pub = pub
        self.low = low
        self.frames_seen = frames_seen
        self.server_pid = server_pid
        self.warm = warm
        self.total = total
        self.end_count = warm + total
        self.window = window
        self.chunk = chunk
        head = b'{"type":"publish","id":"%d","channel":"' + channel.encode() + b'","body":'
        self.frames = [ws_frame(head % i + BODY + b"}") for i in range(self.end_count)]
        self.sent = 0
        self.published = 0
        self.errors: list[bytes] = []
        self.marks: dict[str, float] = {}
        self.shares: Shares | None = None
        self.cpu: dict[str, float] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pub.on_text = self._on_pub

    def _on_pub(self, conn: Conn, buf: bytearray, start: int, end: int) -> None:
        if is_type(buf, start, end, PUBLISHED_TYPE):
            self.published += 1
        elif len(self.errors) < 5:
            self.errors.append(bytes(buf[start : min(end, start + 300)]))

    def pump(self) -> None:
        low = self.low()
        marks = self.marks
        if self.shares is None and low >= self.warm:
            marks["t_warm"] = time.perf_counter()
            marks["frames_warm"] = self.frames_seen()
            self.shares = Shares(self.server_pid)
        if low >= self.end_count:
            if not self.done.done():
                marks["t_end"] = time.perf_counter()
                marks["frames_end"] = self.frames_seen()
                assert self.shares is not None
                self.cpu = self.shares.done()
                self.done.set_result(None)
            return
        allowed = min(low + self.window, self.end_count) - self.sent
        if allowed >= self.chunk or (allowed > 0 and self.sent + allowed == self.end_count):
            self.pub.send(b"".join(self.frames[self.sent : self.sent + allowed]))
            self.sent += allowed

    async def run(self, agents: int) -> dict[str, Any]:
        last = (time.perf_counter(), -1)
        self.pump()
        while not self.done.done():
            await asyncio.wait([self.done], timeout=1.0)
            low, now = self.low(), time.perf_counter()
            if low > last[1]:
                last = (now, low)
            elif now - last[0] > 15:
                raise RuntimeError(
                    f"throughput stalled: slowest receiver at {low}/{self.end_count}, sent "
                    f"{self.sent}, published {self.published}, errors {self.errors}"
                )
        m = self.marks
        wall = m["t_end"] - m["t_warm"]
        frames = m["frames_end"] - m["frames_warm"]
        out = {
            "deliveries_per_s": self.total * agents / wall,
            "publishes_per_s": self.total / wall,
            "messages": self.total,
            "seconds": wall,
            **self.cpu,
            "errors": len(self.errors),
            "first_error": self.errors[0].decode(errors="replace") if self.errors else "",
        }
        if frames:
            out["messages_per_frame"] = self.total * agents / frames
        return out


async def throughput_role(
    *,
    pipe: Any,
    host: str,
    port: int,
    server_pid: int,
    agents: int,
    warm: int,
    total: int,
    window: int,
    chunk: int,
    channel: str,
) -> dict[str, Any]:
    """``agents`` lean receivers on ``channel`` and a Feeder."""
    ids = [f"tp-{i}" for i in range(agents)]
    recvs = await open_many(host, port, ids, 50, channels=[channel])
    pub = await open_agent(host, port, "tp-pub")
    feeder = Feeder(
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
    for c in recvs:
        c.on_text = count_deliver
        c.after_read = feeder.pump
    try:
        return await feeder.run(agents)
    finally:
        for c in [*recvs, pub]:
            c.close()


async def sdk_throughput_role(
    *,
    pipe: Any,
    host: str,
    port: int,
    server_pid: int,
    agents: int,
    warm: int,
    total: int,
    window: int,
    chunk: int,
    channel: str,
) -> dict[str, Any]:
    """``agents`` SDK ``Agent``s (window 4096, an ``on_message`` handler that counts) on
    ``channel``, fed by the same lean publisher as the lean case."""
    from fleetchat.client import Agent

    loop = asyncio.get_running_loop()
    counts = [0] * agents
    feeder_box: list[Feeder] = []
    sdk_agents = []
    for i in range(agents):
        agent = Agent(f"sdk-{i}", hub=f"http://{host}:{port}", window=4096)

        async def handler(msg: Any, i: int = i) -> None:
            counts[i] += 1
            if counts[i] & 63 == 0 and feeder_box:
                feeder_box[0].pump()

        agent.on_message(channel=channel)(handler)
        sdk_agents.append(agent)
    for lo in range(0, agents, 25):
        await asyncio.gather(*(a.start() for a in sdk_agents[lo : lo + 25]))
    pub = await open_agent(host, port, "sdk-pub")
    feeder = Feeder(
        pub,
        lambda: min(counts),
        lambda: 0,
        server_pid=server_pid,
        warm=warm,
        total=total,
        window=window,
        chunk=chunk,
        channel=channel,
    )
    feeder_box.append(feeder)

    def tick() -> None:  # counts that stop short of a multiple of 64 still move the feeder
        if not feeder.done.done():
            feeder.pump()
            loop.call_later(0.002, tick)

    tick()
    try:
        return await feeder.run(agents)
    finally:
        pub.close()
        await asyncio.gather(*(a.close(drain=False) for a in sdk_agents), return_exceptions=True)


async def scale_role(
    *,
    pipe: Any,
    host: str,
    port: int,
    base: int,
    count: int,
    channels: int,
    concurrency: int,
    interval: float,
) -> dict[str, Any]:
    """Open ``count`` idle agents (registered, one channel each out of ``channels``), each
    sending a heartbeat frame every ``interval`` s; report "ready", hold until told "stop"."""
    loop = asyncio.get_running_loop()
    slots: list[list[Conn]] = [[] for _ in range(HEARTBEAT_SLOTS)]
    conns: list[Conn] = []
    failures: list[str] = []
    beats = [0]
    tick_every = interval / HEARTBEAT_SLOTS
    t_start = loop.time()

    def tick(n: int) -> None:
        """Tick ``n``: slot ``n % HEARTBEAT_SLOTS`` beats; the next tick is scheduled on the
        grid from ``t_start``, so the rate does not drift."""
        for c in slots[n % HEARTBEAT_SLOTS]:
            if not c.closed:
                c.send(HEARTBEAT)
                beats[0] += 1
        loop.call_at(t_start + (n + 1) * tick_every, tick, n + 1)

    loop.call_soon(tick, 0)
    it = iter(range(base, base + count))

    async def worker() -> None:
        for i in it:
            try:
                c = await open_agent(
                    host,
                    port,
                    f"idle-{i}",
                    window=16,
                    channels=[f"idle-{i % channels}"],
                    capabilities={"idle": 1.0},
                )
            except Exception as exc:  # counted, not fatal
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            c.on_text = count_deliver
            conns.append(c)
            slots[i % HEARTBEAT_SLOTS].append(c)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    connect_s = time.perf_counter() - t0
    pipe.send(("ready", {"connected": len(conns), "failed": len(failures), "seconds": connect_s}))
    stop: asyncio.Future[None] = loop.create_future()

    def on_pipe() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(pipe.fileno(), on_pipe)
    beats0 = beats[0]
    t_ready = time.perf_counter()
    await stop
    loop.remove_reader(pipe.fileno())
    pipe.recv()
    held = sum(1 for c in conns if not c.closed)
    rate = (beats[0] - beats0) / (time.perf_counter() - t_ready)
    for c in conns:
        c.close()
    return {
        "connected": len(conns),
        "held": held,
        "failed": len(failures),
        "failures": failures[:3],
        "connect_seconds": connect_s,
        "heartbeats_per_s": rate,
    }
