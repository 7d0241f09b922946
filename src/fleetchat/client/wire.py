"""What the SDK needs on top of the protocol module: server frames, URLs, backoff, one error."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

from fleetchat import protocol as p
from fleetchat.errors import ConfigError, HubUnavailableError

__all__ = [
    "DEFAULT_HUB",
    "Backoff",
    "HubUnavailableError",
    "ServerFrame",
    "decode_server_frame",
    "http_url",
    "ws_url",
]

DEFAULT_HUB: Final = "http://127.0.0.1:8765"

ServerFrame = p.Welcome | p.Ok | p.Published | p.Deliver | p.ReplyFrame | p.ErrorFrame

_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)


def decode_server_frame(data: str | bytes) -> ServerFrame:
    """Parse one frame from the hub. Raises ``msgspec.DecodeError`` / ``ValidationError``."""
    return _decoder.decode(data)


_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _split(hub: str) -> tuple[str, str, str]:
    parts = urlsplit(hub if "://" in hub else f"http://{hub}")
    if parts.scheme not in _WS_SCHEMES or not parts.netloc:
        raise ConfigError(
            f"hub URL {hub!r}: use http://host:port or https://host:port", field="hub"
        )
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1/ws")
    return parts.scheme, parts.netloc, path


def ws_url(hub: str) -> str:
    """The agent WebSocket URL for a hub URL: ``http://h:p`` -> ``ws://h:p/v1/ws``.

    Raises:
        ConfigError: not an http(s) or ws(s) URL.
    """
    scheme, netloc, path = _split(hub)
    return urlunsplit((_WS_SCHEMES[scheme], netloc, f"{path}/v1/ws", "", ""))


def http_url(hub: str) -> str:
    """The REST base URL for a hub URL (``ws://`` is turned back into ``http://``)."""
    scheme, netloc, path = _split(hub)
    return urlunsplit((_HTTP_SCHEMES[scheme], netloc, path, "", ""))


class Backoff:
    """Exponential backoff with jitter: base x 2^n, capped, each delay drawn from [d/2, d]."""

    def __init__(
        self,
        base: float = 0.1,
        cap: float = 3.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self._failures = 0

    def next(self) -> float:
        """The delay before the next attempt, in seconds."""
        delay = min(self.cap, self.base * 2.0**self._failures)
        self._failures = min(self._failures + 1, 30)
        return delay * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self._failures = 0
