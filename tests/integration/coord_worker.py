"""One hub node's coordinator, as a process, for test_nats_coord_fencing.py.

Run as ``python coord_worker.py NATS_URL NODE_ID``. It starts a NatsCoordinator with the default
settings (lease 3 s, renewals every 0.5 s) and reports on stdout, one ``os.write`` per line
(atomic on a pipe), with ``time.monotonic()`` stamps: CLOCK_MONOTONIC is system-wide on Linux,
so the stamps of different processes compare.

- ``ready <node>`` once started;
- ``gain <node> <epoch> <t>`` / ``lose <node> <epoch> <t>`` from the leadership callback;
- ``until <node> <deadline>`` whenever the end of its belief in leading moves (polled every
  5 ms; 0 when it does not lead);
- ``cont <node> <is_leader> <epoch> <t>`` from a SIGCONT handler: its belief on waking up;
- ``status <node> <is_leader> <epoch> <t>`` and ``check <node> <epoch> ok|fenced`` answer the
  commands ``status`` and ``check <epoch>`` read from stdin; ``quit`` (or EOF) closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

from fleetchat.backends.nats_coord import NatsCoordinator
from fleetchat.errors import FencedError

MAX_LIFETIME = 60.0  # a safety net: exit on our own if the parent never says quit


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def watch_deadline(coord: NatsCoordinator) -> None:
    last = -1.0
    while True:
        deadline = coord.lease_deadline
        if deadline != last:
            emit(f"until {coord.node_id} {deadline:.6f}")
            last = deadline
        await asyncio.sleep(0.005)


async def serve(coord: NatsCoordinator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    node = coord.node_id
    while line := (await reader.readline()).decode().split():
        match line:
            case ["status"]:
                emit(f"status {node} {int(coord.is_leader)} {coord.epoch} {time.monotonic():.6f}")
            case ["check", epoch]:
                try:
                    await coord.check_epoch(int(epoch))
                    emit(f"check {node} {epoch} ok")
                except FencedError:
                    emit(f"check {node} {epoch} fenced")
            case ["quit"]:
                return


async def main(url: str, node: str) -> None:
    coord = NatsCoordinator(url, node)

    def on_leadership(leading: bool, epoch: int) -> None:
        emit(f"{'gain' if leading else 'lose'} {node} {epoch} {time.monotonic():.6f}")

    def on_cont() -> None:
        emit(f"cont {node} {int(coord.is_leader)} {coord.epoch} {time.monotonic():.6f}")

    coord.on_leadership(on_leadership)
    asyncio.get_running_loop().add_signal_handler(signal.SIGCONT, on_cont)
    await coord.start()
    emit(f"ready {node}")
    watcher = asyncio.create_task(watch_deadline(coord))
    try:
        async with asyncio.timeout(MAX_LIFETIME):
            await serve(coord)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await coord.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
