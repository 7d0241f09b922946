"""Tokens: created once, shown once, stored as SHA-256 hashes, checked on every session."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fleetchat.errors import ForbiddenError, UnauthenticatedError
from fleetchat.models import TokenRecord
from fleetchat.types import Clock, check_agent_id

if TYPE_CHECKING:
    from fleetchat.backends.ports import Store

__all__ = ["Authenticator", "hash_token", "new_token"]

TOKEN_PREFIX = "fct_"


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Maps tokens to agents. With ``enabled=False`` everyone is trusted (development only).

    Tokens come from the store (``fleetchat token create``) and from the config file's
    ``[server.tokens]`` table (agent id -> SHA-256 hex of its token).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        enabled: bool,
        configured: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.enabled = enabled
        self._configured = dict(configured or {})
        self._by_hash: dict[str, TokenRecord] = {}

    def load(self) -> None:
        self._by_hash = {t.sha256: t for t in self._store.load_tokens()}
        for agent_id, digest in self._configured.items():
            self._by_hash[digest.lower()] = TokenRecord(agent_id=agent_id, sha256=digest.lower())

    async def create(self, agent_id: str, *, admin: bool = False) -> str:
        """Create a token for ``agent_id``; returns it (the only time it is visible)."""
        check_agent_id(agent_id)
        token = new_token()
        record = TokenRecord(
            agent_id=agent_id, sha256=hash_token(token), admin=admin, created_at=self._clock.time()
        )
        await self._store.save_token(record)
        self._by_hash[record.sha256] = record
        return token

    async def revoke(self, agent_id: str) -> int:
        n = await self._store.delete_tokens(agent_id)
        for digest in [h for h, t in self._by_hash.items() if t.agent_id == agent_id]:
            del self._by_hash[digest]
        return n

    def identify(self, token: str | None) -> TokenRecord | None:
        """The token's record; None when auth is off and no token was given.

        Raises:
            UnauthenticatedError: auth is on and the token is missing or unknown.
        """
        if not token:
            if self.enabled:
                raise UnauthenticatedError("a token is required")
            return None
        record = self._by_hash.get(hash_token(token))
        if record is None:
            if self.enabled:
                raise UnauthenticatedError("unknown token")
            return None
        return record

    def check_acts_as(self, token: str | None, agent_id: str) -> TokenRecord | None:
        """Authenticate and check that the caller may act as ``agent_id``.

        Raises:
            UnauthenticatedError, ForbiddenError (a token of another agent).
        """
        record = self.identify(token)
        if record is not None and record.agent_id != agent_id:
            raise ForbiddenError(
                f"this token belongs to {record.agent_id!r}; it cannot act as {agent_id!r}",
                agent_id=agent_id,
            )
        return record

    def check_admin(self, token: str | None) -> TokenRecord | None:
        """Authenticate an admin; with auth off anyone may administer."""
        record = self.identify(token)
        if self.enabled and (record is None or not record.admin):
            raise ForbiddenError("this needs an admin token")
        return record
