"""A member joins during a publish burst; the process dies between two group commits.

Run as ``python join_crash_worker.py DB_PATH``, default settings. The channel ``burst`` has the
member m1. More publishes than one group commit takes (``commit_max_batch``, 1000) are
started at once, so their rows wait in the writer's backlog; then m3 joins. The join's
membership row goes into the first commit with the first 1000 messages (a commit takes every
queued op but only 1000 rows). The publisher of seq 1 resumes right after that first commit,
writes ``pub 1`` and SIGKILLs the process before the second commit: a crash at that moment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from fleetchat import Hub

CHANNEL = "burst"
BURST = 1100


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def main(path: str) -> None:
    async with Hub.open(f"sqlite:///{path}") as hub:
        await hub.channels.create(CHANNEL, announce=False)
        await hub.subscribe("m1", CHANNEL)

        async def publish(n: int) -> None:
            msg = await hub.publish(CHANNEL, {"n": n}, sender="pub")
            emit(f"pub {msg.seq}")
            if msg.seq == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        tasks = [asyncio.create_task(publish(n)) for n in range(BURST)]
        await asyncio.sleep(0)  # the publishers assign seqs and queue their rows
        emit("joining")
        await hub.channels.join(CHANNEL, "m3")
        emit("joined")  # not reached: the join waits for the rows queued before it
        await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
