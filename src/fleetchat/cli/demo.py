"""``fleetchat demo``: the factory-cell demo (the code is in :mod:`fleetchat.demo`)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

__all__ = ["demo"]


def demo(
    agents: Annotated[
        int, typer.Option(help="Agents in the cell, the planner included (8 or more).")
    ] = 20,
    orders: Annotated[int, typer.Option(help="Orders the planner receives.")] = 30,
    speed: Annotated[
        float, typer.Option(help="Time scale: simulated seconds per wall second.")
    ] = 6.0,
    seed: Annotated[
        int, typer.Option(help="Fixes the cell, the orders, the faults and the durations.")
    ] = 7,
    headless: Annotated[
        bool, typer.Option("--headless", help="Plain lines for CI, ending with RESULT {json}.")
    ] = False,
    url: Annotated[
        str | None,
        typer.Option("--url", "--db", help="Hub backend (default: SQLite in a temporary dir)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level: warning, info, debug.")] = "error",
) -> None:
    """Run an embedded hub and a simulated factory cell: robots, arms, a camera and a planner
    as SDK agents over WebSocket, with faults; exits 1 if an invariant broke."""
    from fleetchat.cli.app import _run
    from fleetchat.demo import DemoOptions, run_demo

    if agents < 8 or orders < 1 or speed <= 0:
        raise typer.BadParameter("needs --agents >= 8, --orders >= 1 and --speed > 0")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    options = DemoOptions(
        agents=agents, orders=orders, speed=speed, seed=seed, headless=headless, url=url
    )
    outcome: list[bool] = []

    async def main() -> None:
        report = await run_demo(options)
        outcome.append(report.ok)

    _run(main())
    if not all(outcome) or not outcome:
        raise typer.Exit(1)
