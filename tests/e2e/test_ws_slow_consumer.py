"""A client that stops reading is closed with 4008; the hub and other agents go on."""

from __future__ import annotations

from fleetchat import ServerSettings
from fleetchat.testing import assert_eventually
from tests.e2e.conftest import StartServer


async def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer(
    start_server: StartServer,
) -> None:
    srv = await start_server(
        auth=False,
        server=ServerSettings(slow_consumer_bytes=64 * 1024, slow_consumer_seconds=0.3),
    )
    await srv.hub.channels.create("feed", ephemeral=True, announce=False)
    stalled = await srv.connect("stalled", window=4096)
    await stalled.send({"type": "subscribe", "id": "s", "channels": ["feed"]})
    assert (await stalled.recv())["type"] == "ok"
    healthy = await srv.connect("healthy")
    await healthy.send({"type": "subscribe", "id": "s", "channels": ["feed"]})
    assert (await healthy.recv())["type"] == "ok"
    body = "x" * 500_000
    for _ in range(40):  # 20 MB for a reader that never reads: kernel buffers fill, then ours
        await srv.hub.publish("feed", body, sender="sensor")
        frame = await healthy.recv()
        assert frame["type"] == "deliver"
        await healthy.send({"type": "ack", "upto": frame["first_tag"] + len(frame["messages"]) - 1})
    await assert_eventually(lambda: "stalled" not in srv.server.sessions, timeout=10)
    assert "healthy" in srv.server.sessions
    assert stalled.ws.close_code in (None, 4008) or stalled.ws.closed
