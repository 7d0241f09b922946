"""Request/reply: responder agents answer; a requester asks one agent, then a whole channel.

Run: python examples/request_reply.py
"""

from __future__ import annotations

import asyncio

from fleetchat import Hub, RequestTimeoutError, Subscription


async def respond(sub: Subscription, dock: str) -> None:
    """Answer every request with this robot's dock status; ack everything else."""
    async for delivery in sub:
        message = delivery.message
        if message.kind == "request":
            await delivery.reply({"robot": sub.agent_id, "dock": dock, "asked": message.body})
        else:
            await delivery.ack()


async def main() -> None:
    async with Hub.open("memory://") as hub:
        await hub.channels.create("docks", announce=False)
        subs = [
            await hub.subscribe("amr-1", "docks"),
            await hub.subscribe("amr-2", "docks"),
        ]
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(respond(sub, dock))
                for sub, dock in zip(subs, ["A", "B"], strict=True)
            ]

            # To one agent (its id, or "@amr-1"): the first reply, or RequestTimeoutError.
            reply = await hub.request("amr-1", "where are you docked?", sender="planner")
            print(f"amr-1 replied {reply.body} (correlation_id={reply.correlation_id})")

            # To every member of a channel: collect=True returns all replies within the timeout.
            replies = await hub.request(
                "docks", "status?", sender="planner", collect=True, timeout=0.5
            )
            print("docks replied:", sorted(r.body["robot"] for r in replies))

            # Nobody answers in an empty channel: a clear timeout error.
            await hub.channels.create("empty", announce=False)
            try:
                await hub.request("empty", "anyone?", sender="planner", timeout=0.2)
            except RequestTimeoutError as exc:
                print(f"timeout: [{exc.code}] {exc.message}")

            snap = hub.metrics.snapshot()
            print(f"requests={snap.requests} request_timeouts={snap.request_timeouts}")
            for task in tasks:
                task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
