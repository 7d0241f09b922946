"""The scaling policies (pure): each metric's proposal, the most urgent winning, min/max and
the cooldowns; and the settings' validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetchat.config import load_settings
from fleetchat.errors import ConfigError
from fleetchat.ops.scaling_metrics import PoolMetrics
from fleetchat.ops.scaling_policy import Cooldowns, decide, proposals
from fleetchat.ops.settings import PoolSettings, ScalingSettings

NOW = 1_000.0
S = ScalingSettings()  # cpu 80 %, 100 queued, 50 per instance, cooldowns 60 s out, 300 s in
POOL = PoolSettings(command=["worker"], min=1, max=10)


def metrics(**fields: Any) -> PoolMetrics:
    base: dict[str, Any] = {
        "cpu": 0.5,
        "system_cpu": 0.5,
        "queued": 10,
        "agents": 2,
        "utilisation": 0.5,
        "latency": None,
        "oldest_queued": 0.0,
    }
    return PoolMetrics(**{**base, **fields})


def test_cpu_above_the_threshold_grows_the_pool_in_proportion() -> None:
    [p] = proposals(metrics(cpu=0.96), 4, S)
    assert (p.desired, p.reason) == (5, "cpu 96% > 80%")  # ceil(4 * 0.96 / 0.8)
    [p] = proposals(metrics(cpu=0.81), 1, S)
    assert p.desired == 2  # at least one more


def test_an_empty_pool_or_an_unmeasured_cpu_proposes_nothing_for_cpu() -> None:
    assert proposals(metrics(cpu=0.99), 0, S) == []
    assert proposals(metrics(cpu=None), 3, S) == []


def test_more_than_queued_high_adds_one_instance_per_fifty_queued() -> None:
    [p] = proposals(metrics(queued=150), 2, S)
    assert (p.desired, p.reason) == (5, "queue 150 > 100 queued")
    assert proposals(metrics(queued=100), 2, S) == []


def test_latency_is_off_by_default_and_adds_one_when_set() -> None:
    assert proposals(metrics(latency=50.0), 2, S) == []
    [p] = proposals(metrics(latency=5.0), 2, ScalingSettings(latency_high=2.0))
    assert (p.desired, p.reason) == (3, "latency 5.00s > 2s")


def test_an_idle_pool_proposes_one_instance_fewer() -> None:
    [p] = proposals(metrics(queued=0, utilisation=0.1), 3, S)
    assert (p.desired, p.reason) == (2, "idle: nothing queued, utilisation 10%")
    [p] = proposals(metrics(queued=0, utilisation=None, agents=0), 3, S)
    assert p.reason == "idle: nothing queued, utilisation no agents"


def test_a_pool_with_queued_work_or_busy_agents_is_not_idle() -> None:
    assert proposals(metrics(queued=1, utilisation=0.0), 3, S) == []
    assert proposals(metrics(queued=0, utilisation=0.5), 3, S) == []
    assert proposals(metrics(queued=0, utilisation=0.0), 0, S) == []


def test_the_largest_scale_out_wins_and_beats_idle() -> None:
    decision = decide(metrics(cpu=0.9, queued=400), 2, POOL, S, Cooldowns(), NOW)
    assert (decision.desired, decision.reason) == (10, "queue 400 > 100 queued")
    busy_cpu_no_queue = metrics(cpu=0.99, queued=0, utilisation=0.0)
    decision = decide(busy_cpu_no_queue, 4, POOL, S, Cooldowns(), NOW)
    assert (decision.desired, decision.reason) == (5, "cpu 99% > 80%")


def test_the_desired_count_is_clamped_to_max_and_min() -> None:
    decision = decide(metrics(queued=1000), 4, POOL, S, Cooldowns(), NOW)
    assert decision.desired == 10
    at_max = decide(metrics(queued=1000), 10, POOL, S, Cooldowns(), NOW)
    assert (at_max.desired, at_max.reason) == (10, "queue 1000 > 100 queued; at max")
    at_min = decide(metrics(queued=0, utilisation=0.0), 1, POOL, S, Cooldowns(), NOW)
    assert (at_min.desired, at_min.reason) == (1, "idle: nothing queued, utilisation 0%; at min")


def test_a_pool_outside_its_bounds_is_brought_back_at_once_despite_cooldowns() -> None:
    hot = Cooldowns(last_out=NOW, last_change=NOW)
    assert decide(metrics(), 0, POOL, S, hot, NOW).desired == 1
    assert decide(metrics(), 12, POOL, S, hot, NOW).desired == 10


def test_a_scale_out_waits_for_cooldown_out_after_the_last_scale_out() -> None:
    cool = Cooldowns(last_out=NOW - 20, last_change=NOW - 20)
    held = decide(metrics(queued=200), 3, POOL, S, cool, NOW)
    assert (held.desired, held.wanted, held.cooldown_left) == (3, 7, 40.0)
    assert held.reason == "queue 200 > 100 queued; cooling down"
    assert decide(metrics(queued=200), 3, POOL, S, cool, NOW + 40).desired == 7


def test_a_scale_in_waits_for_cooldown_in_after_any_change() -> None:
    idle = metrics(queued=0, utilisation=0.0)
    after_in = Cooldowns(last_out=None, last_change=NOW - 100)
    assert decide(idle, 3, POOL, S, after_in, NOW).cooldown_left == 200.0
    assert decide(idle, 3, POOL, S, after_in, NOW + 200).desired == 2
    # A scale-in after a scale-out waits for the longer of both cooldowns.
    after_out = Cooldowns(last_out=NOW, last_change=NOW)
    assert decide(idle, 3, POOL, S, after_out, NOW + 299).desired == 3


def test_a_pool_may_override_the_cooldowns() -> None:
    pool = PoolSettings(command=["w"], min=1, cooldown_out=5.0, cooldown_in=0.0)
    assert S.cooldowns(pool) == (5.0, 0.0)
    cool = Cooldowns(last_out=NOW - 5, last_change=NOW - 5)
    assert decide(metrics(queued=0, utilisation=0.0), 3, pool, S, cool, NOW).desired == 2


def test_nothing_to_do_is_steady() -> None:
    decision = decide(metrics(), 3, POOL, S, Cooldowns(), NOW)
    assert (decision.desired, decision.reason, decision.changes(3)) == (3, "steady", False)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"command": ["w"], "min": 3, "max": 2}, "max"),
        ({"command": ["w"], "max": 0}, "max"),
        ({"command": ["w"], "min": -1}, "max"),
        ({"command": ["w"], "min": 1.5}, "min"),
        ({"actuator": "process"}, "command"),
        ({"actuator": "command"}, "command"),
        ({"actuator": "webhook"}, "url"),
        ({"actuator": "webhook", "url": "ftp://x"}, "url"),
        ({"actuator": "ssh", "command": ["w"]}, "actuator"),
        ({"command": ["w"], "timeout": 0}, "timeout"),
        ({"command": ["w"], "stop_timeout": -1}, "stop_timeout"),
        ({"command": ["w"], "cooldown_in": -1}, "cooldown_in"),
    ],
)
def test_a_bad_pool_is_a_config_error_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PoolSettings(**fields)
    assert caught.value.details["field"] == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"interval": 0}, "interval"),
        ({"cpu_high": 1.5}, "cpu_high"),
        ({"queued_per_instance": 0}, "queued_per_instance"),
        ({"cooldown_out": -1}, "cooldown_out"),
        ({"latency_high": -1}, "latency_high"),
        ({"signal_delay": 0}, "signal_delay"),
    ],
)
def test_bad_scaling_settings_are_config_errors(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ScalingSettings(**fields)
    assert caught.value.details["field"] == field


def test_pools_are_read_from_the_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        """
[scaling]
interval = 10
[scaling.pools.scanners]
command = ["python", "scanner.py"]
capability = "scan"
max = 4
env = { ZONE = "b" }
cooldown_in = 30
[scaling.pools.k8s]
actuator = "command"
command = ["kubectl", "scale", "deployment/render", "--replicas={count}"]
[scaling.pools.nomad]
actuator = "webhook"
url = "http://scaler.local/hook"
"""
    )
    scaling = load_settings(config, env={}).scaling
    assert scaling.interval == 10
    scanners = scaling.pools["scanners"]
    assert (scanners.capability, scanners.max, scanners.env) == ("scan", 4, {"ZONE": "b"})
    assert scaling.cooldowns(scanners) == (60.0, 30.0)
    assert scaling.pools["k8s"].actuator == "command"
    assert scaling.pools["nomad"].url == "http://scaler.local/hook"


def test_an_unknown_pool_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[scaling.pools.p]\ncommand = ["w"]\nreplicas = 3\n')
    with pytest.raises(ConfigError, match="replicas"):
        load_settings(config, env={})
