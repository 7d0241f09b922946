"""Two agents chat through a hub: a mobile robot asks a planner for work, turn by turn.

Run: ``python examples/two_agents_chat.py`` (starts a hub in this process, in memory, on a free
port), or point it at a running hub with ``FLEETCHAT_HUB=http://127.0.0.1:8765``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from fleetchat import Hub, Message
from fleetchat.client import Agent
from fleetchat.server import HubServer

CHANNEL = "cell-1"
SCRIPT = {
    "amr-7": ["planner, amr-7 here: battery 80 %, any work?", "on my way to bin 4"],
    "planner": ["amr-7: take the pallet at bin 4 to dock 2", "thanks, dock 2 is expecting you"],
}


@contextlib.asynccontextmanager
async def hub_url() -> AsyncIterator[str]:
    """FLEETCHAT_HUB if set, else a hub served from this process."""
    if "FLEETCHAT_HUB" in os.environ:
        yield os.environ["FLEETCHAT_HUB"]
        return
    async with Hub.open("memory://") as hub, HubServer(hub, port=0) as server:
        yield server.url


def chatter(agent_id: str, url: str, turns: asyncio.Queue[str]) -> Agent:
    """An agent that prints what it hears in the channel and hands it to ``turns``."""
    agent = Agent(agent_id, capabilities={"chat": 1.0}, hub=url)

    @agent.on_message(channel=CHANNEL, kind="chat")
    async def hear(msg: Message) -> None:
        print(f"  {agent_id} heard {msg.sender}: {msg.body}")
        await turns.put(msg.body)

    return agent


async def main() -> None:
    heard: dict[str, asyncio.Queue[str]] = {"amr-7": asyncio.Queue(), "planner": asyncio.Queue()}
    async with hub_url() as url:
        robot = chatter("amr-7", url, heard["amr-7"])
        planner = chatter("planner", url, heard["planner"])
        async with robot, planner:
            for turn in range(2):
                for speaker, listener in ((robot, "planner"), (planner, "amr-7")):
                    line = SCRIPT[speaker.agent_id][turn]
                    sent = await speaker.publish(CHANNEL, line, priority="high")
                    print(f"{speaker.agent_id} -> {CHANNEL}#{sent.seq}: {line}")
                    await asyncio.wait_for(heard[listener].get(), 5)  # wait for the other side
        print(f"done: {robot.stats.handled + planner.stats.handled} messages handled")


if __name__ == "__main__":
    asyncio.run(main())
