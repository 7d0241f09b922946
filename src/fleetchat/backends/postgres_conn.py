"""Reaching PostgreSQL: the lazy asyncpg import, and reading a URL and the driver's errors.

asyncpg is an optional extra (``pip install 'fleetchat[postgres]'``); it is imported here,
lazily, with a hint when missing.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fleetchat.errors import ConfigError

__all__ = ["import_asyncpg", "is_unavailable", "os_reason", "url_secrets", "url_where"]


def import_asyncpg() -> Any:
    """The ``asyncpg`` module, or a ConfigError saying how to install it."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - the extra is installed wherever tests run
        raise ConfigError(
            "the PostgreSQL backend needs asyncpg: pip install 'fleetchat[postgres]'",
            extra="postgres",
        ) from None
    return asyncpg


def url_where(url: str) -> str:
    """``host:port`` of every server in ``url`` (comma-separated), for messages."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    default_port = query.get("port", ["5432"])[0]
    hosts = parts.netloc.rpartition("@")[2]
    out = []
    for item in hosts.split(",") if hosts else query.get("host", ["localhost"]):
        if item.startswith("["):  # [v6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":") or default_port
        else:
            host, _, port = item.partition(":")
        out.append(f"{unquote(host) or 'localhost'}:{port or default_port}")
    return ",".join(out)


def url_secrets(url: str) -> list[str]:
    """The password in ``url``, as written and decoded, to scrub from any text."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    found = [userinfo.partition(":")[2], *parse_qs(parts.query).get("password", [])]
    return sorted({s for p in found if p for s in (p, unquote(p))}, key=len, reverse=True)


def is_unavailable(asyncpg: Any, exc: BaseException) -> bool:
    """Whether the driver's ``exc`` means the server cannot be reached or the connection is
    gone (as opposed to an error in what was asked)."""
    exc_mod = asyncpg.exceptions
    return isinstance(
        exc,
        OSError  # refused, unreachable, DNS, and TimeoutError (no answer in time)
        | exc_mod.PostgresConnectionError  # 08xxx, and "connection closed mid-operation"
        | exc_mod.AdminShutdownError  # 57P01: the server is shutting down
        | exc_mod.CrashShutdownError
        | exc_mod.CannotConnectNowError  # 57P03: starting up or shutting down
        | exc_mod.TooManyConnectionsError,
    )


def os_reason(exc: OSError) -> str:
    """A socket error in words: "connection refused", "name or service not known"."""
    if exc.errno is None:
        return str(exc)
    # Resolver errors (socket.gaierror) have negative numbers and their own text.
    return (os.strerror(exc.errno) if exc.errno > 0 else str(exc.strerror)).lower()
