"""Leases through a real server: the REST API and the SDK (HubClient.leases, agent.leases)."""

from __future__ import annotations

import asyncio

import pytest

from fleetchat.client import HubClient
from fleetchat.errors import FencedError, InvalidInputError, LeaseTimeoutError

from .conftest import MakeAgent, StartServer


async def test_sdk_agents_take_turns_on_a_dock_with_growing_tokens(
    start_server: StartServer, agents: MakeAgent
) -> None:
    running = await start_server(auth=False)
    a = agents("amr-1", hub=running.url)
    b = agents("amr-2", hub=running.url)
    async with a, b:
        first = await a.leases.acquire("dock-1", ttl=30, timeout=0)
        waiting = asyncio.ensure_future(b.leases.acquire("dock-1", ttl=30, timeout=5))
        await asyncio.sleep(0.05)  # let b's request queue on the hub
        assert not waiting.done()

        await first.release()

        second = await asyncio.wait_for(waiting, 5)
        assert (second.holder, second.token) == ("amr-2", first.token + 1)
        with pytest.raises(FencedError):
            await a.leases.renew("dock-1", first.token)
        async with second:
            state = await a.leases.get("dock-1")
            assert state.holder == "amr-2"
        assert (await a.leases.get("dock-1")).holder is None


async def test_rest_acquire_that_times_out_is_a_409_lease_timeout(
    start_server: StartServer,
) -> None:
    running = await start_server(auth=False)
    status, _ = await running.request(
        "POST", "/v1/leases/door/acquire", json={"holder": "amr-1", "ttl": 30}
    )
    assert status == 200

    status, body = await running.request(
        "POST", "/v1/leases/door/acquire", json={"holder": "amr-2", "timeout": 0}
    )

    assert status == 409
    assert body["error"]["code"] == "lease_timeout"


async def test_bad_lease_input_is_a_typed_error_over_rest(start_server: StartServer) -> None:
    running = await start_server(auth=False)
    async with HubClient(running.url) as rest:
        with pytest.raises(InvalidInputError):
            await rest.leases.acquire("dock-1", ttl=-1, holder="amr-1")
        await rest.leases.acquire("dock-1", holder="amr-1")
        with pytest.raises(LeaseTimeoutError):
            await rest.leases.acquire("dock-1", holder="amr-2", timeout=0)
        assert [s.resource for s in await rest.leases.list()] == ["dock-1"]


async def test_with_auth_on_the_holder_is_the_tokens_agent(
    server: object, agents: MakeAgent
) -> None:
    from .conftest import RunningServer

    assert isinstance(server, RunningServer)
    token = await server.token("amr-7")
    agent = agents("amr-7", hub=server.url, token=token)
    async with agent:
        held = await agent.leases.acquire("lift", timeout=0)
        assert held.holder == "amr-7"
        status, body = await server.request(
            "POST",
            "/v1/leases/lift/release",
            token=token,
            json={"holder": "amr-8", "token": held.token},
        )
        assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_a_registered_agent_that_disconnects_loses_its_lease(
    start_server: StartServer, agents: MakeAgent
) -> None:
    running = await start_server(auth=False)
    a = agents("amr-1", capabilities={"nav": 0.9}, hub=running.url)
    await a.start()
    await a.leases.acquire("dock-1", ttl=300, timeout=0)

    await a.close(drain=False)

    async with HubClient(running.url) as rest:
        async with asyncio.timeout(5):
            while (await rest.leases.get("dock-1")).holder is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
