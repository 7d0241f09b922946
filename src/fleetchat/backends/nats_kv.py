"""NATS KV helpers shared by the coordinator: key escaping, buckets, error mapping.

KV keys allow only ``A-Z a-z 0-9 - _ / = .`` (no leading or trailing dot), while fleetchat names
(agent ids, lock names) may hold ``:`` and ``@`` or anything a caller chooses. ``kv_key`` keeps
``A-Z a-z 0-9 - _`` as they are and writes every other character as ``=XX`` per UTF-8 byte (so
``arm:1`` becomes ``arm=3A1``); ``kv_name`` reverses it. The mapping is one-to-one and the
result is always a valid key, a single subject token.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fleetchat.backends.nats_conn import import_nats
from fleetchat.errors import BackendError, BackendUnavailableError, ConfigError, InvalidInputError

try:
    import nats.errors as nats_errors
    import nats.js.errors as js_errors
except ImportError:  # pragma: no cover - the extra is installed wherever tests run
    import_nats()  # raises ConfigError with the install hint
    raise

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = [
    "WRONG_LAST_SEQUENCE",
    "KeyNotFoundError",
    "backend_errors",
    "is_wrong_last",
    "kv_key",
    "kv_name",
    "open_bucket",
]

#: nats-py's "no such key" (also for a deleted one).
KeyNotFoundError = js_errors.KeyNotFoundError

#: JetStream error codes for a compare-and-set that found another revision.
WRONG_LAST_SEQUENCE = (10071, 10164)
_STREAM_NAME_IN_USE = 10058

_SAFE = re.compile(r"[A-Za-z0-9_-]")
_ESCAPED = re.compile(r"(?:=[0-9A-F]{2})+")


def kv_key(name: str) -> str:
    """``name`` as a valid, reversible KV key (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"a key must be a non-empty string, not {name!r}", field="key")
    return "".join(c if _SAFE.match(c) else "".join(f"={b:02X}" for b in c.encode()) for c in name)


def kv_name(key: str) -> str:
    """The name that ``kv_key`` turned into ``key``."""
    return _ESCAPED.sub(lambda m: bytes.fromhex(m.group().replace("=", "")).decode(), key)


def is_wrong_last(exc: BaseException) -> bool:
    """True if ``exc`` is a failed compare-and-set (the key has another revision)."""
    return isinstance(exc, js_errors.KeyWrongLastSequenceError) or (
        isinstance(exc, js_errors.APIError) and exc.err_code in WRONG_LAST_SEQUENCE
    )


@contextlib.contextmanager
def backend_errors(what: str, where: str) -> Iterator[None]:
    """Map driver errors to ours: unreachable or slow NATS to BackendUnavailableError, other
    JetStream failures to BackendError. Our own errors pass through. ``where`` names the
    server(s) (``host:port``)."""
    try:
        yield
    except (
        TimeoutError,
        nats_errors.NoServersError,
        nats_errors.ConnectionClosedError,
        nats_errors.StaleConnectionError,
        nats_errors.ConnectionReconnectingError,
        nats_errors.NoRespondersError,
        js_errors.ServiceUnavailableError,
    ) as exc:
        raise BackendUnavailableError(
            f"NATS at {where} did not answer ({what}): {type(exc).__name__} {exc}".rstrip(),
            backend="nats",
            where=where,
            operation=what,
        ) from exc
    except nats_errors.Error as exc:
        raise BackendError(
            f"NATS at {where} failed ({what}): {exc}", backend="nats", where=where, operation=what
        ) from exc


async def open_bucket(js: JetStreamContext, bucket: str, ttl: float, *, setting: str) -> KeyValue:
    """Create the KV bucket (history 1, TTL ``ttl`` seconds) or open it if it exists.

    Raises:
        ConfigError: the bucket exists with another TTL (``setting`` names the option that
            must then agree on every node).
    """
    try:
        return await js.create_key_value(bucket=bucket, ttl=ttl, history=1)
    except js_errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
    kv = await js.key_value(bucket)
    have = (await kv.status()).ttl or 0.0
    if abs(have - ttl) < 1e-3:
        return kv  # made elsewhere with other settings (replicas, history) we can live with
    raise ConfigError(
        f"the NATS KV bucket {bucket} has a TTL of {have:g} s but this node asks for "
        f"{ttl:g} s: use the same {setting} on every node (or another prefix)",
        bucket=bucket,
        setting=setting,
    )
