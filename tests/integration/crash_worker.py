"""Load generator for test_crash_recovery.py: an embedded hub under pipelined load.

Run as ``python crash_worker.py DB_PATH RUN SEED``. It opens the hub on the SQLite file, makes
sure the channel exists with the members m1 and m2, then runs until it is killed:

- several publisher coroutines publish to the channel without pause; after each publish
  returns (the message is committed) it writes ``pub <id> <seq>``;
- a consumer for m1 fetches batches, writes ``dlv m1 <id> <seq> <attempt>`` for each delivery,
  and acks only some of them (a random half one by one, or now and then the whole batch),
  writing ``acked m1 <id>`` right after each ack returned (some acks come late, out of order);
- a consumer for m2 acks every batch whole and writes ``acked m2 <id>``.

Every line goes out with one unbuffered ``os.write`` (short lines to a pipe are atomic), so a
line is in the pipe before the event loop can run again. Acks are in-memory and only reach the
disk when the bus's cursor flush task runs, which needs the loop, so an ack can never be
persisted without its ``acked`` line having been written first. The parent test reads these
lines as its ledger and kills this process with SIGKILL at random moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys

from fleetchat import ChannelExistsError, Delivery, Hub

CHANNEL = "crash"
PUBLISHERS = 6
MAX_LIFETIME = 60.0  # a safety net: exit on our own if the parent never kills us
PRIORITIES = ("low", "normal", "normal", "high", "critical")
HELD_ACK = 0.01  # chance per fetch round that a held delivery is acked
MAX_HELD = 400  # beyond this the oldest held ones are acked (m1's queue limit is 1000)
PACE = 0.004  # a publisher waits up to this long between publishes


def emit(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


async def publisher(hub: Hub, run: int, index: int, rng: random.Random) -> None:
    n = 0
    while True:
        msg = await hub.publish(
            CHANNEL,
            {"run": run, "publisher": index, "n": n},
            sender=f"pub{index}",
            priority=rng.choice(PRIORITIES),
        )
        emit(f"pub {msg.id} {msg.seq}")
        n += 1
        # Pace the load (a few thousand messages a second in all): enough to keep commits
        # pipelined, little enough to stay far below the channel's retention over all runs.
        await asyncio.sleep(rng.random() * PACE)


async def consume_some(hub: Hub, rng: random.Random) -> None:
    """m1: acks only part of what it gets, some of it late and out of order.

    A batch is acked whole now and then; otherwise a random half of it is acked at once and the
    rest is held. Each round acks a few of the held deliveries, so some stay unacked for a long
    time while the member still makes room and keeps receiving. Whatever is held
    when the process is killed was delivered and never acked.
    """
    sub = await hub.subscribe("m1", CHANNEL)
    held: list[Delivery] = []
    while True:
        batch = await sub.fetch(max_items=64, timeout=0.05)
        deliveries = [] if batch is None else list(batch)
        for d in deliveries:
            emit(f"dlv m1 {d.message.id} {d.message.seq} {d.attempt}")
        if batch is not None and rng.random() < 0.1:
            await batch.ack()
            for d in deliveries:
                emit(f"acked m1 {d.message.id}")
            deliveries = []
        keep = []
        for n, d in enumerate(held):
            if rng.random() < HELD_ACK or len(held) - n > MAX_HELD:
                await d.ack()
                emit(f"acked m1 {d.message.id}")
            else:
                keep.append(d)
        held = keep
        for d in deliveries:
            if rng.random() < 0.5:
                await d.ack()
                emit(f"acked m1 {d.message.id}")
            else:
                held.append(d)


async def consume_all(hub: Hub) -> None:
    """m2: acks everything, a batch at a time."""
    sub = await hub.subscribe("m2", CHANNEL)
    while True:
        batch = await sub.fetch(max_items=128, timeout=0.5)
        if batch is None:
            continue
        await batch.ack()
        for m in batch.messages:
            emit(f"acked m2 {m.id}")


async def main(path: str, run: int, seed: int) -> None:
    rng = random.Random(seed)
    async with Hub.open(f"sqlite:///{path}") as hub:
        with contextlib.suppress(ChannelExistsError):
            await hub.channels.create(CHANNEL)
        # Join both members before any load starts (later runs: already members, a no-op).
        await hub.subscribe("m1", CHANNEL)
        await hub.subscribe("m2", CHANNEL)
        emit(f"ready {run}")
        tasks = [
            asyncio.create_task(publisher(hub, run, i, random.Random(rng.random())))
            for i in range(PUBLISHERS)
        ]
        tasks.append(asyncio.create_task(consume_some(hub, random.Random(rng.random()))))
        tasks.append(asyncio.create_task(consume_all(hub)))
        try:
            async with asyncio.timeout(MAX_LIFETIME):
                await asyncio.gather(*tasks)
        except TimeoutError:
            pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
