"""The demo's simulated cell: reproducible from its seed, and every step has machines."""

from __future__ import annotations

from collections import Counter

import pytest

from fleetchat.demo.cell import STEPS, FaultPlan, build_cell, duration
from fleetchat.demo.planner import RECIPES, make_orders
from fleetchat.registry.matching import match_score


def test_a_seed_fixes_the_cell_its_faults_and_its_orders() -> None:
    assert build_cell(20, 30, 7, 6.0) == build_cell(20, 30, 7, 6.0)
    assert build_cell(20, 30, 7, 6.0) != build_cell(20, 30, 8, 6.0)
    assert make_orders(30, 7, 6.0) == make_orders(30, 7, 6.0)
    assert make_orders(30, 7, 6.0) != make_orders(30, 8, 6.0)


def test_twenty_agents_are_eleven_robots_six_arms_two_cameras_and_the_planner() -> None:
    cell = build_cell(20, 30, 7, 6.0)
    assert Counter(a.kind for a in cell.agents) == {"amr": 11, "arm": 6, "camera": 2}


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("n_agents", [8, 20, 40])
def test_every_step_has_an_eligible_machine(seed: int, n_agents: int) -> None:
    cell = build_cell(n_agents, 10, seed, 6.0)
    for step in STEPS.values():
        assert any(match_score(a.capabilities, step.required) >= 0.8 for a in cell.agents)


def test_the_best_transport_robot_starts_flat_and_the_rush_spares_it() -> None:
    cell = build_cell(20, 30, 7, 6.0)
    assert cell.faults is not None
    robots = cell.of_kind("amr")
    need = STEPS["transport"].required
    best = max(robots, key=lambda a: (match_score(a.capabilities, need), a.id))
    assert (cell.faults.low_start, best.battery) == (best.id, 12.0)
    assert best.id not in cell.faults.rush
    assert len(cell.faults.rush) == 3
    assert 1 <= cell.faults.rush_after <= cell.faults.death_after <= 30


def test_only_the_first_robot_to_start_a_transport_once_armed_dies() -> None:
    plan = FaultPlan(low_start="amr-01", rush=[], rush_after=1, death_after=2)
    assert not plan.claim_death("amr-02")
    plan.armed = True
    assert plan.claim_death("amr-03")
    assert not plan.claim_death("amr-04")
    assert plan.victim == "amr-03"


def test_durations_replay_and_a_better_machine_is_faster() -> None:
    cell = build_cell(20, 30, 7, 6.0)
    arms = cell.of_kind("arm")
    first = duration(7, "o-001/pick", arms[0], "pick", 6.0)
    assert first == duration(7, "o-001/pick", arms[0], "pick", 6.0)
    assert duration(7, "o-001/pick", arms[0], "pick", 12.0) == pytest.approx(first / 2)
    picker, welder = arms[0], arms[2]  # pick about 0.96 against 0.83, noise at most +-15 %
    times = [duration(s, "k", picker, "pick", 1.0) for s in range(50)]
    slower = [duration(s, "k", welder, "pick", 1.0) for s in range(50)]
    assert sum(times) < sum(slower)


def test_orders_follow_the_recipes_and_arrive_in_order() -> None:
    orders = make_orders(40, 7, 6.0)
    assert [o.id for o in orders][:2] == ["o-001", "o-002"]
    assert all(o.steps == RECIPES[o.recipe][0] for o in orders)
    assert [o.at for o in orders] == sorted(o.at for o in orders)
    assert orders[0].at == 0.0
