"""Deadlock detection: cycles in the wait-for graph of agents, and which wait to fail.

An edge ``A -> B`` means agent A waits for a resource that agent B holds (one edge per wait,
labelled with the waiter, so an agent waiting on two resources has two edges). A cycle is a
deadlock: nobody in it can go on until someone gives up. The rule that breaks it is fixed and
deterministic, so every hub node that looks at the same records picks the same victim:

    the wait of lowest priority in the cycle fails; among equal priorities the youngest
    (latest requested), then the largest ticket.

Failing a wait removes its edge; the victim keeps what it holds (it should release it and try
again, which the SDK's ``async with`` does on the way out of the block).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from fleetchat.leases.state import Resource, Waiter
from fleetchat.types import PRIORITY_RANK

__all__ = ["Victim", "find_victims"]


class Edge(msgspec.Struct, frozen=True):
    waiter: Waiter
    resource: str
    holder: str
    """The agent the waiter waits for."""


class Victim(msgspec.Struct, frozen=True):
    """A wait to fail, and the cycle it closed."""

    resource: str
    ticket: str
    holder: str
    cycle: list[str]
    """The waits of the cycle, as ``"A waits for B (resource)"``, starting at the victim."""

    def message(self) -> str:
        return (
            f"deadlock: {'; '.join(self.cycle)}. {self.holder!r}'s wait for {self.resource!r} "
            "has the lowest priority in the cycle and fails"
        )


def _victim_key(e: Edge) -> tuple[int, float, str]:
    # Larger is a better victim: lower priority (larger rank), younger, larger ticket.
    return (PRIORITY_RANK.get(e.waiter.priority, 2), e.waiter.requested_at, e.waiter.ticket)


def _edges(resources: Iterable[Resource]) -> dict[str, list[Edge]]:
    graph: dict[str, list[Edge]] = {}
    for r in resources:
        if r.holder is None:
            continue
        for w in r.waiters:
            if w.failed is None and w.holder != r.holder:
                graph.setdefault(w.holder, []).append(Edge(w, r.name, r.holder))
    return graph


def _find_cycle(graph: dict[str, list[Edge]]) -> list[Edge] | None:
    """One cycle of ``graph`` as its edges, or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path: list[Edge] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            out = graph.get(node, [])
            if i >= len(out):
                stack.pop()
                state[node] = 2
                if path:
                    path.pop()
                continue
            stack[-1] = (node, i + 1)
            edge = out[i]
            seen = state.get(edge.holder, 0)
            if seen == 1:
                start = next(k for k, e in enumerate(path) if e.waiter.holder == edge.holder)
                return [*path[start:], edge]
            if seen == 0:
                state[edge.holder] = 1
                path.append(edge)
                stack.append((edge.holder, 0))
    return None


def find_victims(resources: Iterable[Resource]) -> list[Victim]:
    """The waits to fail so that no cycle is left, one per cycle found."""
    graph = _edges(resources)
    victims: list[Victim] = []
    while True:
        cycle = _find_cycle(graph)
        if cycle is None:
            return victims
        victim = max(cycle, key=_victim_key)
        at = cycle.index(victim)
        ordered = cycle[at:] + cycle[:at]
        victims.append(
            Victim(
                resource=victim.resource,
                ticket=victim.waiter.ticket,
                holder=victim.waiter.holder,
                cycle=[f"{e.waiter.holder} waits for {e.holder} ({e.resource})" for e in ordered],
            )
        )
        graph[victim.waiter.holder].remove(victim)
