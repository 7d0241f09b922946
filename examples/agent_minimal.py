"""The smallest useful agent: answers requests, prints what is said in "lobby".

With a hub running (``fleetchat serve``)::

    FLEETCHAT_HUB=http://127.0.0.1:8765 python examples/agent_minimal.py

serves until Ctrl-C or SIGTERM (then finishes its handlers, acks and leaves). Without
FLEETCHAT_HUB it starts a hub in this process, asks the agent one question and exits.
"""

from __future__ import annotations

import asyncio
import os

from fleetchat import Message
from fleetchat.client import Agent


def build(hub: str) -> Agent:
    agent = Agent("echo-bot", capabilities={"echo": 1.0}, hub=hub)

    @agent.on_message(channel="lobby", kind="chat")
    async def hear(msg: Message) -> None:
        print(f"{msg.sender} said {msg.body!r}")

    @agent.on_request()
    async def echo(msg: Message) -> dict[str, object]:
        return {"echo": msg.body}

    return agent


async def demo() -> None:
    """No hub given: serve one in this process, on a free port, in memory."""
    from fleetchat import Hub
    from fleetchat.server import HubServer

    async with (
        Hub.open("memory://") as hub,
        HubServer(hub, port=0) as server,
        build(server.url),
        Agent("caller", hub=server.url) as caller,
    ):
        reply = await caller.request("echo-bot", "hello", timeout=5)
        print(f"echo-bot replied {reply.body}")


if __name__ == "__main__":
    if "FLEETCHAT_HUB" in os.environ:
        build(os.environ["FLEETCHAT_HUB"]).run()
    else:
        asyncio.run(demo())
