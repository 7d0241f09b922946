"""Priorities and dead letters.

A worker receives a mixed backlog highest priority first. A silent member takes its deliveries
but never acks them: with a short ack timeout each message is retried with backoff, then
dead-lettered to ``$dlq`` after its last attempt.

Run: python examples/priorities_and_dead_letters.py
"""

from __future__ import annotations

import asyncio

from fleetchat import ChatSettings, Hub, HubSettings, Priority, QosSettings, Subscription


async def never_ack(sub: Subscription) -> None:
    """Take every delivery and drop it on the floor: each attempt ends in an ack timeout."""
    async for delivery in sub:
        print(f"  silent camera-9 got {delivery.body!r} (attempt {delivery.attempt}), no ack")


async def main() -> None:
    # Every priority needs an entry: a qos dict is used as given, not merged with the defaults.
    qos = {p: QosSettings(ack_timeout=0.3, max_attempts=3, backoff_base=0.05) for p in Priority}
    settings = HubSettings(url="memory://", chat=ChatSettings(qos=qos))

    async with Hub.open(settings=settings) as hub:
        await hub.channels.create("fleet", type="broadcast", announce=False)
        worker = await hub.subscribe("inspector", "fleet")
        silent = await hub.subscribe("camera-9", "fleet")

        for priority in ["low", "normal", "high", "critical"]:
            await hub.publish("fleet", f"{priority} job", sender="planner", priority=priority)

        print("inspector receives, highest priority first:")
        for _ in range(4):
            batch = await worker.fetch(timeout=1.0)  # a batch holds one priority
            assert batch is not None
            for delivery in batch:
                print(f"  {delivery.message.priority:8} {delivery.body!r}")
            await batch.ack()

        # 3 attempts: 0.3 s timeout, 0.05 s backoff, 0.3 s, 0.1 s, 0.3 s: about 1.05 s.
        print("camera-9 never acks:")
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(never_ack(silent))
            for _ in range(100):
                if len(await hub.dead_letters()) >= 4:
                    break
                await asyncio.sleep(0.05)
            task.cancel()

        print("dead letters ($dlq):")
        for letter in await hub.dead_letters():
            print(
                f"  member={letter.member} body={letter.message.body!r} "
                f"reason={letter.reason} attempts={letter.attempts}"
            )

        snap = hub.metrics.snapshot()
        print(
            f"metrics: published={snap.published} delivered={snap.delivered} "
            f"retries={snap.retries} dead_lettered={snap.dead_lettered} "
            f"success_rate={snap.success_rate:.2f} p99={snap.latency_p99_ms:.1f} ms"
        )
        print(f"  published_by_priority={snap.published_by_priority}")


if __name__ == "__main__":
    asyncio.run(main())
