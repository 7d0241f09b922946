"""A minimal embedded hub: one channel, two agents, publish, receive, ack.

Run: python examples/embedded_quickstart.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from fleetchat import Hub


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'hub.db'}"
        async with Hub.open(url) as hub:
            # A task channel; announce=False skips the "agent X joined" system messages.
            await hub.channels.create("cell-1", type="task", announce=False)

            # Subscribing joins the channel (and would create it if it were missing).
            arm = await hub.subscribe("arm-1", "cell-1")
            await hub.subscribe("planner", "cell-1")

            # Returns once the message is committed to the SQLite log.
            sent = await hub.publish("cell-1", {"pick": "bin-7"}, sender="planner", priority="high")
            print(f"planner published {sent.channel}#{sent.seq} id={sent.id}")

            # The sender is not delivered its own message; arm-1 is.
            delivery = await arm.next(timeout=2.0)
            print(
                f"arm-1 received {delivery.body} from {delivery.message.sender} "
                f"(priority {delivery.message.priority}, attempt {delivery.attempt})"
            )
            await delivery.ack()

            history = await hub.channels.history("cell-1")
            print("history:", [m.body for m in history])
            print("members:", hub.channels.members("cell-1"))
            snap = hub.metrics.snapshot()
            print(f"published={snap.published} delivered={snap.delivered}")


if __name__ == "__main__":
    asyncio.run(main())
