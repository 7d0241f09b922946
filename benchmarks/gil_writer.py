#!/usr/bin/env python
"""Why the SQLite writer runs on the event-loop thread: a writer thread starves on the GIL.

    python benchmarks/gil_writer.py [--seconds 3]

Writes 256-row group commits (the shape of fleetchat's message inserts) three ways:

1. a writer thread while the main thread sleeps (the writer's ceiling);
2. a writer thread while the main thread runs pure-Python work without pause, as the event loop
   does under load (fan-out, fetch, ack): the sqlite3 module drops the GIL around every
   ``sqlite3_step``, i.e. every row, and must win it back from the busy thread each time;
3. on the main thread itself, one commit after every 2 ms slice of the same work, which is what
   the in-loop group-commit writer does.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

SCHEMA = (
    "CREATE TABLE m (channel TEXT, seq INTEGER, created_at REAL, data BLOB, "
    "PRIMARY KEY (channel, seq)) WITHOUT ROWID"
)
BATCH = 256
DATA = b"x" * 200


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SCHEMA)
    return conn


def commit(conn: sqlite3.Connection, seq: int) -> None:
    rows = [("fan", seq + i, time.time(), DATA) for i in range(BATCH)]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?)", rows)
    conn.execute("COMMIT")


def busy(seconds: float) -> int:
    """Pure-Python work for ``seconds``; returns how many units of work it did."""
    end = time.perf_counter() + seconds
    d: dict[int, int] = {}
    units = 0
    while time.perf_counter() < end:
        for i in range(1000):
            d[i] = i
        units += 1
    return units


def thread_writer(seconds: float, main_busy: bool, tmp: Path) -> tuple[float, float]:
    conn = connect(tmp / f"thread-{main_busy}.db")
    stop = threading.Event()
    written = [0]

    def run() -> None:
        seq = 0
        while not stop.is_set():
            commit(conn, seq)
            seq += BATCH
            written[0] += BATCH

    t = threading.Thread(target=run)
    t0 = time.perf_counter()
    t.start()
    units = 0
    if main_busy:
        units = busy(seconds)
    else:
        time.sleep(seconds)
    stop.set()
    t.join()
    return written[0] / (time.perf_counter() - t0), units / seconds


def same_thread(seconds: float, tmp: Path) -> tuple[float, float]:
    conn = connect(tmp / "same.db")
    t0 = time.perf_counter()
    seq = written = 0
    busy_time = 0.0
    while time.perf_counter() - t0 < seconds:
        b = time.perf_counter()
        busy(0.002)
        busy_time += time.perf_counter() - b
        commit(conn, seq)
        seq += BATCH
        written += BATCH
    elapsed = time.perf_counter() - t0
    return written / elapsed, (elapsed - busy_time) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetchat-gil-") as d:
        tmp = Path(d)
        alone = busy(args.seconds) / args.seconds
        idle, _ = thread_writer(args.seconds, False, tmp)
        starved, work = thread_writer(args.seconds, True, tmp)
        rate, share = same_thread(args.seconds, tmp)
    print(f"writer thread, main thread idle:  {idle:>10,.0f} rows/s")
    print(
        f"writer thread, main thread busy:  {starved:>10,.0f} rows/s, "
        f"main thread work at {work / alone:.0%} of its rate alone"
    )
    print(
        f"on the loop thread, between 2 ms slices of work: {rate:,.0f} rows/s, "
        f"work at {1 - share:.0%} of its rate alone"
    )


if __name__ == "__main__":
    main()
