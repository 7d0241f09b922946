"""Settings: the customer's defaults and load_settings' layering of TOML, env and overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetchat.config import (
    ChatSettings,
    HubSettings,
    QosSettings,
    RegistrySettings,
    StorageSettings,
    load_settings,
)
from fleetchat.errors import ConfigError
from fleetchat.types import Priority

Write = Callable[[str], Path]


@pytest.fixture
def toml(tmp_path: Path) -> Write:
    """Write a TOML config file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "fleetchat.toml"
        path.write_text(text)
        return path

    return write


# -- defaults ---------------------------------------------------------------------------------


def test_default_qos_is_the_customers() -> None:
    assert QosSettings() == QosSettings(
        ack_timeout=5.0, max_attempts=3, backoff_base=0.1, backoff_max=5.0
    )


def test_every_priority_has_the_default_qos() -> None:
    assert ChatSettings().qos == {p: QosSettings() for p in Priority}


@pytest.mark.parametrize(
    ("failed_attempts", "delay"), [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (10, 5.0)]
)
def test_backoff_doubles_from_a_tenth_of_a_second(failed_attempts: int, delay: float) -> None:
    assert QosSettings().backoff(failed_attempts) == pytest.approx(delay)


def test_backoff_is_capped_at_five_seconds() -> None:
    assert QosSettings().backoff(100) == 5.0


def test_backoff_follows_custom_settings() -> None:
    qos = QosSettings(backoff_base=1.0, backoff_max=3.0)

    assert [qos.backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]


def test_default_registry_settings_are_the_customers() -> None:
    assert RegistrySettings() == RegistrySettings(
        heartbeat_interval=1.0, missed_heartbeats=3, load_threshold=0.8, min_confidence=0.8
    )


def test_default_max_body_is_one_mebibyte() -> None:
    assert ChatSettings().max_body_bytes == 1_048_576


def test_default_hub_url_is_a_sqlite_file() -> None:
    assert HubSettings().url == "sqlite:///fleetchat.db"


def test_qos_for_accepts_a_priority_name() -> None:
    fast = QosSettings(ack_timeout=1.0)
    chat = ChatSettings(qos={**ChatSettings().qos, Priority.CRITICAL: fast})

    assert chat.qos_for("critical") is fast


def test_load_settings_without_sources_gives_the_defaults() -> None:
    assert load_settings(env={}) == HubSettings()


# -- TOML -------------------------------------------------------------------------------------


def test_load_settings_reads_a_toml_file(toml: Write) -> None:
    path = toml(
        """
        url = "memory://"
        [chat]
        max_body_bytes = 4096
        retention_age = 3600.5
        [registry]
        heartbeat_interval = 2
        [storage]
        sync = "full"
        """
    )

    settings = load_settings(path, env={})

    assert settings.url == "memory://"
    assert settings.chat.max_body_bytes == 4096
    assert settings.chat.retention_age == 3600.5
    assert settings.registry.heartbeat_interval == 2.0
    assert settings.storage.sync == "full"


def test_toml_leaves_unnamed_settings_at_their_defaults(toml: Write) -> None:
    settings = load_settings(toml("[chat]\nmax_body_bytes = 4096\n"), env={})

    assert settings.registry == RegistrySettings()
    assert settings.chat.fetch_batch == ChatSettings().fetch_batch


def test_toml_sets_qos_per_priority(toml: Write) -> None:
    settings = load_settings(toml("[chat.qos.critical]\nack_timeout = 1\n"), env={})

    assert settings.chat.qos_for("critical") == QosSettings(ack_timeout=1.0)


def test_toml_qos_for_one_priority_keeps_the_others(toml: Write) -> None:
    settings = load_settings(toml("[chat.qos.critical]\nack_timeout = 1\n"), env={})

    assert settings.chat.qos_for("normal") == QosSettings()


def test_toml_qos_for_an_unknown_priority_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError):
        load_settings(toml("[chat.qos.urgent]\nack_timeout = 1\n"), env={})


def test_unknown_toml_key_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(toml("[chat]\nmax_body_byte = 10\n"), env={})

    assert "max_body_byte" in info.value.message


def test_unknown_toml_section_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError):
        load_settings(toml("[tasks]\nlimit = 10\n"), env={})


def test_wrong_type_in_toml_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(toml('[chat]\nmax_body_bytes = "big"\n'), env={})

    assert info.value.details["path"] == "chat.max_body_bytes"
    assert info.value.details["problems"] == [
        {"path": "chat.max_body_bytes", "message": "cannot read 'big' as int"}
    ]


def test_every_problem_of_a_config_file_is_listed_at_once(toml: Write) -> None:
    text = (
        '[chat]\nmax_body_bytes = "big"\nfetch_batch = 0\n'
        "[chat.qos.urgent]\nack_timeout = 1\n"
        "[health]\ninterval = -1\nunknown_knob = 3\n"
        '[scaling.pools.w]\nactuator = "webhook"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(toml(text), env={})

    paths = [p["path"] for p in info.value.details["problems"]]
    assert paths == [
        "chat.qos.urgent",
        "chat.max_body_bytes",
        "health.unknown_knob",
        "scaling.pools.w.url",
    ]
    assert info.value.message.startswith("4 problem(s) in the settings: ")


def test_a_value_out_of_range_names_its_full_path(toml: Write) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(toml("[health]\ninterval = -1\n"), env={})

    assert info.value.details["problems"] == [
        {"path": "health.interval", "message": "interval must be a positive number, not -1.0"}
    ]


def test_boolean_for_a_number_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError):
        load_settings(toml("[chat]\nmax_body_bytes = true\n"), env={})


def test_scalar_for_a_section_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError):
        load_settings(toml("chat = 5\n"), env={})


def test_value_outside_a_choice_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError):
        load_settings(toml('[storage]\nsync = "sometimes"\n'), env={})


def test_malformed_toml_is_a_config_error(toml: Write) -> None:
    with pytest.raises(ConfigError):
        load_settings(toml("[chat\n"), env={})


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "missing.toml", env={})


# -- environment and overrides ----------------------------------------------------------------


def test_env_sets_a_setting() -> None:
    settings = load_settings(env={"FLEETCHAT_REGISTRY__HEARTBEAT_INTERVAL": "2.5"})

    assert settings.registry.heartbeat_interval == 2.5


def test_env_overrides_toml(toml: Write) -> None:
    path = toml("[chat]\nmax_body_bytes = 4096\n")

    settings = load_settings(path, env={"FLEETCHAT_CHAT__MAX_BODY_BYTES": "2048"})

    assert settings.chat.max_body_bytes == 2048


def test_env_keeps_the_rest_of_the_toml_section(toml: Write) -> None:
    path = toml("[chat]\nmax_body_bytes = 4096\nfetch_batch = 8\n")

    settings = load_settings(path, env={"FLEETCHAT_CHAT__MAX_BODY_BYTES": "2048"})

    assert settings.chat.fetch_batch == 8


def test_env_sets_the_url() -> None:
    assert load_settings(env={"FLEETCHAT_URL": "memory://"}).url == "memory://"


def test_env_none_clears_an_optional_setting(toml: Write) -> None:
    path = toml("[chat]\nretention_age = 60\n")

    settings = load_settings(path, env={"FLEETCHAT_CHAT__RETENTION_AGE": "none"})

    assert settings.chat.retention_age is None


def test_env_sets_qos_of_one_priority() -> None:
    settings = load_settings(env={"FLEETCHAT_CHAT__QOS__HIGH__MAX_ATTEMPTS": "7"})

    assert settings.chat.qos_for("high").max_attempts == 7


def test_overrides_beat_env(toml: Write) -> None:
    path = toml("[chat]\nmax_body_bytes = 4096\n")

    settings = load_settings(
        path,
        env={"FLEETCHAT_CHAT__MAX_BODY_BYTES": "2048"},
        overrides={"chat": {"max_body_bytes": 512}},
    )

    assert settings.chat.max_body_bytes == 512


def test_overrides_set_the_url() -> None:
    settings = load_settings(
        env={"FLEETCHAT_URL": "memory://"}, overrides={"url": "sqlite:///x.db"}
    )

    assert settings.url == "sqlite:///x.db"


def test_wrong_type_in_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(env={"FLEETCHAT_CHAT__MAX_BODY_BYTES": "lots"})


def test_unknown_key_in_a_known_env_section_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(env={"FLEETCHAT_CHAT__MAX_BODY": "10"})


def test_fleetchat_hub_env_is_not_a_setting() -> None:
    settings = load_settings(env={"FLEETCHAT_HUB": "http://hub.local:7700"})

    assert settings == HubSettings()


def test_cli_env_variables_are_ignored() -> None:
    settings = load_settings(env={"FLEETCHAT_TOKEN": "secret", "FLEETCHAT_TEST_SEED": "3"})

    assert settings == HubSettings()


def test_env_without_the_prefix_is_ignored() -> None:
    assert load_settings(env={"CHAT__MAX_BODY_BYTES": "1", "HOME": "/root"}) == HubSettings()


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        StorageSettings().sync = "full"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        ("QosSettings", {"max_attempts": 0}),
        ("QosSettings", {"ack_timeout": -1}),
        ("ChatSettings", {"member_queue_limit": 0}),
        ("ChatSettings", {"qos": {}}),
        ("RegistrySettings", {"min_confidence": 1.5}),
        ("RegistrySettings", {"heartbeat_interval": 0}),
        ("StorageSettings", {"sync": "sometimes"}),
        ("StorageSettings", {"commit_max_batch": 0}),
    ],
)
def test_settings_out_of_range_are_config_errors(cls: str, kwargs: dict[str, object]) -> None:
    import fleetchat

    with pytest.raises(fleetchat.ConfigError):
        getattr(fleetchat, cls)(**kwargs)
