"""Fencing with real processes: three coordinator processes (coord_worker.py, default settings:
lease 3 s, renewals every 0.5 s) on one nats-server.

1. SIGSTOP the leader past its lease: another process is elected within 5 s.
2. SIGCONT the old leader: it reports ``is_leader == False`` on waking, before it could renew,
   and ``check_epoch`` of its old epoch is refused (FencedError); the new epoch passes.
3. SIGKILL the new leader: another is elected within lease + campaign interval.
4. Throughout, no two processes believed they led at the same time: every process reports when
   it gained leadership and every move of the deadline of its belief, on CLOCK_MONOTONIC
   (system-wide, so the processes' stamps compare).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleetchat.testing.services import NatsServer

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("coord_worker.py")
LEASE, RENEW_EVERY = 3.0, 0.5  # NatsCoordinator's defaults, which the workers use
SLACK = 0.3  # scheduling and the server's expiry timer
LINE_TIMEOUT = 10.0


@dataclass
class Ledger:
    """Everything the workers said, in the order it arrived, and the leadership intervals."""

    lines: list[tuple[str, ...]] = field(default_factory=list)
    # per node: [epoch, start, end or None, latest deadline]
    spans: dict[str, list[list[float]]] = field(default_factory=dict)

    def take(self, line: str) -> tuple[str, ...]:
        parts = tuple(line.split())
        self.lines.append(parts)
        match parts:
            case ("gain", node, epoch, t):
                self.spans.setdefault(node, []).append([int(epoch), float(t), 0.0, 0.0])
            case ("lose", node, _epoch, t):
                self.spans[node][-1][2] = float(t)
            case ("until", node, deadline) if float(deadline) > 0:
                span = self.spans[node][-1]
                span[3] = max(span[3], float(deadline))
        return parts

    def intervals(self) -> list[tuple[float, float, str, int]]:
        """(start, end, node, epoch) of every leadership. A belief ends at its last deadline,
        or earlier when the process said it stepped down before that."""
        out = []
        for node, spans in self.spans.items():
            for epoch, start, lost, deadline in spans:
                end = min(lost, deadline) if lost else deadline
                out.append((start, end, node, int(epoch)))
        return sorted(out)


class Workers:
    """The worker processes; one reader thread each puts ``(node, line)`` on a shared queue."""

    def __init__(self, url: str, nodes: list[str], log_dir: Path) -> None:
        self.lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self.ledger = Ledger()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = {node: log_dir / f"{node}.stderr" for node in nodes}
        self.threads: list[threading.Thread] = []
        for node in nodes:
            with self.logs[node].open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, str(WORKER), url, node],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
            self.procs[node] = proc
            thread = threading.Thread(target=self._read, args=(node, proc), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _read(self, node: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.put((node, raw.decode()))
        self.lines.put((node, None))

    def mark(self) -> int:
        """A position in the ledger for ``wait_for(since=...)``."""
        return len(self.ledger.lines)

    def wait_for(
        self,
        want: str,
        *,
        since: int,
        node: str | None = None,
        not_node: str | None = None,
        timeout: float = LINE_TIMEOUT,
    ) -> tuple[str, ...]:
        """The first line since the mark ``since`` that starts with ``want``, from ``node`` (or
        from any node but ``not_node``), reading more lines into the ledger until it comes."""

        def match(parts: tuple[str, ...]) -> bool:
            who = parts[1]
            return parts[0] == want and who != not_node and node in (None, who)

        for parts in self.ledger.lines[since:]:
            if match(parts):
                return parts
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise AssertionError(
                    f"no {want!r} line within {timeout} s{self._stderr()}"
                ) from None
            if line is not None:  # None: the end of a process we killed
                parts = self.ledger.take(line)
                if match(parts):
                    return parts

    def send(self, node: str, command: str) -> None:
        stdin = self.procs[node].stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()

    def signal(self, node: str, sig: int) -> float:
        self.procs[node].send_signal(sig)
        return time.monotonic()

    def finish(self) -> None:
        """Quit the live workers and read everything they wrote up to EOF."""
        for node, proc in self.procs.items():
            if proc.poll() is None:
                with contextlib.suppress(BrokenPipeError):
                    self.send(node, "quit")
        for proc in self.procs.values():
            proc.wait(timeout=LINE_TIMEOUT)
        for thread in self.threads:
            thread.join(timeout=LINE_TIMEOUT)
        while not self.lines.empty():
            _, line = self.lines.get_nowait()
            if line is not None:
                self.ledger.take(line)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(BrokenPipeError):
                        pipe.close()

    def _stderr(self) -> str:
        return "".join(f"\n--- {n}:\n{p.read_text()}" for n, p in self.logs.items())


def test_a_paused_leader_is_fenced_and_a_killed_one_replaced(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    nodes = ["node-a", "node-b", "node-c"]
    workers = Workers(nats_server.url, nodes, tmp_path)
    try:
        for node in nodes:
            workers.wait_for("ready", since=0, node=node)
        # The first to start won its first campaign inside start(), before it said ready.
        (gain,) = [line for line in workers.ledger.lines if line[0] == "gain"]
        _, first, epoch1, _ = gain
        time.sleep(1.0)  # a couple of renewals

        # 1. SIGSTOP the leader past its lease: another process takes over.
        mark = workers.mark()
        stopped_at = workers.signal(first, signal.SIGSTOP)
        _, second, epoch2, t = workers.wait_for(
            "gain", since=mark, not_node=first, timeout=LEASE + 3
        )
        failover_stop = float(t) - stopped_at
        assert int(epoch2) > int(epoch1)
        assert failover_stop < 5.0
        assert failover_stop <= LEASE + RENEW_EVERY + SLACK

        # 2. SIGCONT: the old leader knows at once that it no longer leads, and is fenced.
        mark = workers.mark()
        workers.signal(first, signal.SIGCONT)
        workers.send(first, "status")
        workers.send(first, f"check {epoch1}")
        workers.send(second, f"check {epoch2}")
        assert workers.wait_for("cont", since=mark, node=first)[2:4] == ("0", "0")
        assert workers.wait_for("status", since=mark, node=first)[2:4] == ("0", "0")
        assert workers.wait_for("check", since=mark, node=first)[3] == "fenced"
        assert workers.wait_for("check", since=mark, node=second)[3] == "ok"

        # 3. SIGKILL the new leader: the lease runs out and another is elected.
        time.sleep(1.0)
        mark = workers.mark()
        killed_at = workers.signal(second, signal.SIGKILL)
        _, third, epoch3, t = workers.wait_for(
            "gain", since=mark, not_node=second, timeout=LEASE + 3
        )
        failover_kill = float(t) - killed_at
        assert int(epoch3) > int(epoch2)
        assert failover_kill <= LEASE + RENEW_EVERY + SLACK
        print(f"failover after SIGSTOP {failover_stop:.2f} s, after SIGKILL {failover_kill:.2f} s")

        workers.finish()
    finally:
        workers.close()

    # 4. Never two believers at once.
    intervals = workers.ledger.intervals()
    assert [node for _, _, node, _ in intervals][:3] == [first, second, third]
    for (_, end, node, epoch), (start, _, next_node, next_epoch) in itertools.pairwise(intervals):
        assert end <= start, (
            f"{node} (epoch {epoch}) believed it led until {end:.3f}, "
            f"but {next_node} (epoch {next_epoch}) led from {start:.3f}"
        )
