"""The customer-service cluster, end to end against a running hub.

    fleetchat serve                                        # in one terminal (auth off)
    python examples/workflows/customer_service.py          # in another

Starts a classifier bot, FAQ, order and refund bots and a human on the ``support-humans``
channel, registers ``customer-service.yaml`` and sends it a few tickets: clear ones are
answered by a bot, a vague one goes to the human. Prints who answered each and how fast (the
customer's bound is 8 s). ``--hub`` points it elsewhere. The agents connect without tokens: run
it against a hub with auth off.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from fleetchat.client import Agent, HubClient
from fleetchat.client.task_work import TaskWork

HERE = Path(__file__).parent
TICKETS = [
    ("t-1", "ana", "What are your opening hours?"),
    ("t-2", "ben", "Where is my order 4417?"),
    ("t-3", "cem", "I want a refund for the broken lamp"),
    ("t-4", "dora", "hmm, something is off with the thing"),
]
KEYWORDS = {
    "faq": ("hours", "open", "shipping"),
    "order": ("order", "where"),
    "refund": ("refund", "broken"),
}


def bots(hub: str) -> list[Agent]:
    classifier = Agent("classifier", {"classify": 0.9}, hub=hub, capacity=8)
    faq = Agent("faq-bot", {"faq": 0.9}, hub=hub, capacity=8)
    orders = Agent("order-bot", {"orders": 0.9}, hub=hub, capacity=8)
    refunds = Agent("refund-bot", {"refunds": 0.95}, hub=hub, capacity=8)

    @classifier.on_task
    async def classify(work: TaskWork) -> dict[str, Any]:
        text = work.payload["input"]["text"].lower()
        scores = {k: sum(w in text for w in words) for k, words in KEYWORDS.items()}
        intent = max(scores, key=lambda k: scores[k])
        return {"intent": intent, "confidence": 0.9 if scores[intent] else 0.3}

    @faq.on_task
    async def answer_faq(work: TaskWork) -> dict[str, str]:
        return {"answer": "We are open 8:00-20:00, Monday to Saturday."}

    @orders.on_task
    async def answer_order(work: TaskWork) -> dict[str, str]:
        await asyncio.sleep(0.3)  # looks the order up
        return {"answer": "Your order left the warehouse this morning."}

    @refunds.on_task
    async def answer_refund(work: TaskWork) -> dict[str, str]:
        await asyncio.sleep(0.5)
        return {"answer": "Refund issued: expect it within 3 days."}

    return [classifier, faq, orders, refunds]


async def human_desk(rest: HubClient, human: Agent, runs: list[tuple[str, str]]) -> None:
    """The human answers every ticket that was escalated to the support-humans channel."""
    pending = dict(runs)
    while pending:
        for ticket, execution_id in list(pending.items()):
            record = await rest.workflows.execution(execution_id)
            run = record.runs.get("escalate")
            if record.status != "running":
                del pending[ticket]
            elif run is not None and run.status == "waiting":
                await asyncio.sleep(1.0)  # reads the ticket
                await human.publish(
                    "support-humans",
                    {"ticket": ticket, "answer": "A colleague will call you today."},
                )
                del pending[ticket]
        await asyncio.sleep(0.1)


async def main(hub: str) -> int:
    cluster = bots(hub)
    human = Agent("human-1", hub=hub)
    async with HubClient(hub) as rest:
        await rest.workflows.register((HERE / "customer-service.yaml").read_text())
        for agent in [*cluster, human]:
            await agent.start()
        await human.subscribe("support-humans")
        try:
            runs = []
            for ticket, customer, text in TICKETS:
                data = {"ticket_id": ticket, "customer": customer, "text": text}
                runs.append((ticket, (await rest.workflows.start("customer-service", data)).id))
            started = time.monotonic()
            await human_desk(rest, human, runs)
            slow = 0
            for ticket, execution_id in runs:
                done = await rest.workflows.wait(execution_id, 60)
                took = (done.ended_at or 0) - done.created_at
                out = done.output or {}
                by, answer = out.get("by"), out.get("answer")
                print(f"{ticket}: {done.status} by {by} in {took:.2f} s: {answer}")
                slow += done.status != "completed" or took >= 8.0
            print(
                f"{len(runs) - slow}/{len(runs)} tickets answered in under 8 s "
                f"({time.monotonic() - started:.1f} s in all)"
            )
            return 1 if slow else 0
        finally:
            for agent in [*cluster, human]:
                await agent.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub", default="http://127.0.0.1:8765")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.hub)))
