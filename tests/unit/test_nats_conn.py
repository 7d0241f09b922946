"""Connecting to NATS: unreachable servers and too-old servers give clear, typed errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetchat import Hub, HubSettings
from fleetchat.backends.nats_conn import ServerFeatures, connect_nats
from fleetchat.errors import BackendUnavailableError, ConfigError
from fleetchat.testing.services import NatsServer, free_port


async def test_an_unreachable_server_names_nats_and_where() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError) as err:
        await connect_nats(f"nats://127.0.0.1:{port}", name="t", timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert err.value.code == "backend_unavailable"
    assert err.value.details == {"backend": "nats", "where": f"127.0.0.1:{port}"}
    assert "NATS" in err.value.message
    assert f"127.0.0.1:{port}" in err.value.message


async def test_a_hub_on_an_unreachable_nats_fails_to_start_with_the_reason() -> None:
    hub = Hub(HubSettings(url=f"nats://127.0.0.1:{free_port()}"))
    with pytest.raises(BackendUnavailableError, match="cannot connect to NATS"):
        await hub.start()
    await hub.close()


def test_serve_on_an_unreachable_nats_is_one_line_and_an_exit_code() -> None:
    fleetchat = Path(sys.executable).parent / "fleetchat"
    proc = subprocess.run(
        [str(fleetchat), "serve", "--port", "0", "--bus", f"nats://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "cannot connect to NATS" in proc.stderr


async def test_the_connected_server_reports_its_features(nats_server: NatsServer) -> None:
    nc = await connect_nats(nats_server.url, name="t")
    try:
        version = nc.connected_server_version
        assert version.major == 2
    finally:
        await nc.close()


def test_features_by_version_and_a_clear_error_for_a_missing_one() -> None:
    old = ServerFeatures((2, 9, 10))
    new = ServerFeatures((2, 11, 1))
    assert not old.has("per_key_ttl")
    assert new.has("per_key_ttl")
    assert old.has("filter_subjects") is False
    new.require("message_ttl")
    with pytest.raises(ConfigError) as err:
        old.require("per_key_ttl")
    assert "2.11.0" in err.value.message
    assert "2.9.10" in err.value.message
    assert err.value.details["needed"] == "2.11.0"
    assert old.text == "2.9.10"
