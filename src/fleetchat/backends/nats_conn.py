"""Connecting to NATS: clear errors when it cannot be reached, and what the server supports.

nats-py is an optional extra (``pip install fleetchat[nats]``); it is imported here, lazily,
with a hint when missing. Debian's nats-server is 2.9.10: features of newer servers are used
only when ``ServerFeatures`` says the connected server has them, and a feature that is asked
for explicitly on a server too old for it is a ``ConfigError`` naming the version needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlparse

from fleetchat.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["ServerFeatures", "connect_nats", "import_nats"]

log = logging.getLogger(__name__)


def import_nats() -> Any:
    """The ``nats`` module, or a ConfigError saying how to install it."""
    try:
        import nats
    except ImportError:  # pragma: no cover - the extra is installed wherever tests run
        raise ConfigError(
            "the NATS backend needs nats-py: pip install 'fleetchat[nats]'", extra="nats"
        ) from None
    return nats


@dataclass(frozen=True)
class ServerFeatures:
    """What the connected nats-server can do, from the version in its INFO."""

    version: tuple[int, int, int]

    # feature -> the first server version that has it
    SINCE: ClassVar[dict[str, tuple[int, int, int]]] = {
        "per_key_ttl": (2, 11, 0),  # KV create(msg_ttl) and limit markers (expiry events)
        "message_ttl": (2, 11, 0),  # Nats-TTL header on a stream with allow_msg_ttl
        "filter_subjects": (2, 10, 0),  # several filters on one consumer
        "sync_interval": (2, 10, 0),  # configurable fsync interval ("always")
    }

    def has(self, feature: str) -> bool:
        return self.version >= self.SINCE[feature]

    def require(self, feature: str) -> None:
        """Raise ConfigError unless the server has ``feature``."""
        if not self.has(feature):
            need = ".".join(map(str, self.SINCE[feature]))
            have = ".".join(map(str, self.version))
            raise ConfigError(
                f"{feature} needs nats-server {need} or newer; this server is {have}",
                feature=feature,
                server_version=have,
                needed=need,
            )

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version))


def _where(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 4222}"


async def connect_nats(url: str, *, name: str, timeout: float = 5.0) -> NatsClient:
    """Connect to the NATS server(s) in ``url`` (comma-separated for a cluster).

    Reconnects forever once connected (the hub degrades while NATS is away, then recovers).

    Raises:
        BackendUnavailableError: no server answered within ``timeout``.
    """
    nats = import_nats()
    servers = [u.strip() for u in url.split(",") if u.strip()]

    async def on_error(exc: Exception) -> None:
        log.debug("nats: %s", exc, extra={"backend": "nats"})

    async def on_disconnect() -> None:
        if not nc.is_closed and not nc.is_draining:
            log.warning("nats: disconnected; reconnecting", extra={"backend": "nats"})

    async def on_reconnect() -> None:
        log.info("nats: reconnected", extra={"backend": "nats"})

    nc: NatsClient = nats.NATS()
    try:
        # nats-py retries a first connect forever when reconnects are unlimited: bound it.
        async with asyncio.timeout(timeout):
            await nc.connect(
                servers=servers,
                name=name,
                connect_timeout=max(1, min(int(timeout), 2)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float works; the stub says int
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        return nc
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        where = ", ".join(_where(s) for s in servers)
        raise BackendUnavailableError(
            f"cannot connect to NATS at {where}: {str(exc) or f'no answer in {timeout:g} s'}",
            backend="nats",
            where=where,
        ) from exc


def server_features(nc: NatsClient) -> ServerFeatures:
    v = nc.connected_server_version
    return ServerFeatures((v.major, v.minor, v.patch))
