"""The network hub: one aiohttp application serving REST under /v1 and agents at /v1/ws."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from fleetchat import protocol as p
from fleetchat.errors import FleetchatError
from fleetchat.hub import Hub
from fleetchat.server.auth import Authenticator
from fleetchat.server.caches import MessageCache, PublishLedger
from fleetchat.server.openapi import docs_page, openapi_document
from fleetchat.server.prometheus import install_metrics
from fleetchat.server.rest import install_routes
from fleetchat.server.session import AgentSession

__all__ = ["HubServer"]

log = logging.getLogger(__name__)

HUB_KEY = web.AppKey("hub", Hub)


def _on_sighup(hub: Hub) -> None:
    """Reload the settings on SIGHUP; a bad file is logged with every problem, and ignored."""

    async def reload() -> None:
        try:
            result = await hub.ops.config.reload()
        except FleetchatError as exc:
            log.error("settings not reloaded: %s", exc.message, extra={"code": exc.code})
            return
        log.warning("settings reloaded", extra={"applied": len(result.applied)})

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(reload())
        )


class HubServer:
    """Serves a started Hub over HTTP and WebSocket.

    Use ``async with HubServer(hub) as server:``; ``server.port`` is the bound port (useful with
    port 0) and ``server.url`` the base URL.
    """

    def __init__(self, hub: Hub, *, host: str | None = None, port: int | None = None) -> None:
        self.hub = hub
        self.settings = hub.settings.server
        self.host = host if host is not None else self.settings.host
        self._port = port if port is not None else self.settings.port
        self.auth = Authenticator(
            hub.store, hub.clock, enabled=self.settings.auth, configured=self.settings.tokens
        )
        self.sessions: dict[str, list[AgentSession]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self.cache = MessageCache()
        self.ledger = PublishLedger()
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _build_app(self) -> web.Application:
        # Bodies up to 4x the limit are read and refused with a JSON error; beyond, aiohttp cuts.
        app = web.Application(client_max_size=self.settings.max_frame_bytes * 4)
        app[HUB_KEY] = self.hub
        app.router.add_get("/v1/ws", self._ws)
        app.router.add_get("/v1/openapi.json", self._openapi)
        app.router.add_get("/v1/docs", self._docs)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        install_routes(app, self.hub, self.auth)
        install_metrics(app, self.hub, self.sessions, self.auth)
        return app

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert else "http"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self.auth.load()
        context = None
        if self.settings.tls_cert and self.settings.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, ssl_context=context, backlog=2048)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("serving", extra={"url": self.url})

    async def close(self) -> None:
        # Every socket, including ones that have not said hello yet, so shutdown never waits
        # for the hello timeout.
        await asyncio.gather(
            *(
                ws.close(code=p.CLOSE_SERVER_SHUTDOWN, message=b"server shutdown")
                for ws in list(self._sockets)
            ),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers -------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.settings.ws_ping_interval,
            # Frames above our limit get an error frame; only far larger ones are cut off.
            max_msg_size=self.settings.max_frame_bytes * 4,
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        session = AgentSession(
            ws,
            self.hub,
            self.auth,
            self.settings,
            self.cache,
            self.sessions,
            request.transport,
            self.ledger,
        )
        try:
            await session.run()
        finally:
            self._sockets.discard(ws)
        return ws

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(
            body=msgspec.json.encode(openapi_document()), content_type="application/json"
        )

    async def _docs(self, request: web.Request) -> web.Response:
        return web.Response(text=docs_page(), content_type="text/html")

    async def _healthz(self, request: web.Request) -> web.Response:
        coordinator = self.hub.coordinator
        return web.json_response(
            {
                "status": "ok",
                "agents_connected": len(self.sessions),
                "node": coordinator.node_id,
                "leader": coordinator.is_leader,
                "epoch": coordinator.epoch,
                "degraded": self.hub.gate.reason,
            }
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        """200 when this node can serve (open, its database takes writes), else 503."""
        ready, reason = await self.hub.ops.health.ready()
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "reason": reason},
            status=200 if ready else 503,
        )


async def serve_forever(
    hub_url: str | None,
    settings: Any,
    stop: asyncio.Event,
    *,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Open the hub, serve it until ``stop`` is set, then close both in order. SIGHUP reloads
    the settings (``config_file``, the environment, then ``overrides``) without a restart."""
    async with Hub.open(hub_url, settings=settings) as hub, HubServer(hub) as server:
        hub.ops.config.file = config_file
        hub.ops.config.overrides = dict(overrides or {})
        _on_sighup(hub)
        ws_url = server.url.replace("http", "ws", 1)
        print(
            f"fleetchat hub serving {server.url}: REST {server.url}/v1, agents {ws_url}/v1/ws, "
            f"API docs {server.url}/v1/docs",
            flush=True,
        )
        # Many long-lived connection objects: keep the cyclic GC off them (full collections
        # over a large heap paused the loop for up to a second at 15,000 connections).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        await stop.wait()
