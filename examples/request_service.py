"""A request/response service and its callers: an inventory service answers stock questions.

Two replicas of the service share the channel "inventory". A caller asks one replica by its
id, then every replica at once (collect), then an agent that does not answer (timeout).

Run: ``python examples/request_service.py`` (starts a hub in this process) or with
``FLEETCHAT_HUB=http://127.0.0.1:8765`` against a running hub.
"""

from __future__ import annotations

import asyncio
import os

from fleetchat import Hub, Message, RequestTimeoutError
from fleetchat.client import Agent
from fleetchat.server import HubServer

STOCK = {"bolts": 1200, "grippers": 3}


def inventory_replica(replica: str, url: str) -> Agent:
    service = Agent(replica, capabilities={"inventory": 1.0}, hub=url)

    @service.on_request()  # asked by its id, or in a channel it is a member of
    async def stock(msg: Message) -> dict[str, object]:
        item = str(msg.body)
        return {"replica": replica, "item": item, "count": STOCK.get(item, 0)}

    return service


async def run(url: str) -> None:
    replicas = [inventory_replica(f"inventory-{i}", url) for i in (1, 2)]
    async with replicas[0], replicas[1], Agent("planner", hub=url) as planner:
        for replica in replicas:
            await replica.subscribe("inventory")
        reply = await planner.request("inventory-1", "grippers", timeout=5)
        print(f"one replica: {reply.body}")

        replies = await planner.request("inventory", "bolts", timeout=0.5, collect=True)
        print(f"every replica: {sorted(r.body['replica'] for r in replies)}")

        async with Agent("silent-arm", hub=url):  # online, but answers no requests
            try:
                await planner.request("silent-arm", "bolts", timeout=0.3)
            except RequestTimeoutError as exc:
                print(f"no answer: [{exc.code}] {exc.message}")


async def main() -> None:
    if "FLEETCHAT_HUB" in os.environ:
        await run(os.environ["FLEETCHAT_HUB"])
        return
    async with Hub.open("memory://") as hub, HubServer(hub, port=0) as server:
        await run(server.url)


if __name__ == "__main__":
    asyncio.run(main())
