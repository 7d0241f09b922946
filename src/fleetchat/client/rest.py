"""``HubClient``: the hub's REST API, with errors mapped back to the FleetchatError classes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from fleetchat.client.leases import LeaseClient
from fleetchat.client.ops_rest import OpsClient
from fleetchat.client.tasks_rest import TaskClient
from fleetchat.client.wire import DEFAULT_HUB, HubUnavailableError, http_url
from fleetchat.client.workflows_rest import WorkflowClient
from fleetchat.errors import ClosedError, FleetchatError, error_from_code
from fleetchat.models import AgentInfo, Channel, ChannelType, Message
from fleetchat.server import schemas as s
from fleetchat.types import Priority, parse_priority

__all__ = ["HubClient"]

T = TypeVar("T")

_CODE_BY_STATUS = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    429: "rate_limited",
    503: "backend_error",
    504: "request_timeout",
}


def _q(name: str) -> str:
    return quote(name, safe="")


class HubClient:
    """The hub's REST API (``/v1``), for dashboards, scripts and the CLI.

    Use ``async with HubClient("http://hub:8765", token=...) as hub:``. Every call raises the
    same FleetchatError class the hub raised (``ChannelNotFoundError``, ``ForbiddenError``, ...)
    and :class:`HubUnavailableError` when the hub cannot be reached.

    Args:
        hub: the hub's base URL.
        token: Bearer token, needed when the hub has auth on (an admin token for deletes,
            dead-letter replay and purge).
        timeout: seconds per call.
    """

    def __init__(self, hub: str = DEFAULT_HUB, token: str | None = None, *, timeout: float = 30.0):
        self.base = http_url(hub)
        self.token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise ClosedError("the client is closed; create a new one")
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HubClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: str,
        path: str,
        into: type[T] | None = None,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> T:
        await self.start()
        assert self._session is not None
        url = f"{self.base}{path}"
        query = {
            k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in (params or {}).items()
            if v is not None
        }
        data = None if body is None else msgspec.json.encode(body)
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                params=query,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise HubUnavailableError(
                f"cannot reach the hub at {self.base}: {exc or type(exc).__name__}", url=self.base
            ) from exc
        if status >= 400:
            raise _error(status, raw)
        if into is None:
            return None  # type: ignore[return-value]
        return msgspec.json.decode(raw, type=into)

    # -- channels -------------------------------------------------------------------------

    async def list_channels(self, *, include_system: bool = False) -> list[Channel]:
        """Every channel (with ``$`` system channels when ``include_system``)."""
        out = await self._call(
            "GET", "/v1/channels", s.ChannelList, params={"include_system": include_system}
        )
        return out.channels

    async def create_channel(
        self,
        name: str,
        *,
        type: ChannelType = "chat",
        ephemeral: bool = False,
        retention_count: int | None = None,
        retention_age: float | None = None,
        announce: bool = True,
        writers: Sequence[str] | None = None,
        overflow: Literal["spill", "block"] = "spill",
    ) -> Channel:
        """Create a channel. Raises ChannelExistsError if the name is taken."""
        body = s.CreateChannel(
            name=name,
            type=type,
            ephemeral=ephemeral,
            retention_count=retention_count,
            retention_age=retention_age,
            announce=announce,
            writers=list(writers) if writers is not None else None,
            overflow=overflow,
        )
        return await self._call("POST", "/v1/channels", Channel, body=body)

    async def get_channel(self, name: str) -> Channel:
        return await self._call("GET", f"/v1/channels/{_q(name)}", Channel)

    async def delete_channel(self, name: str) -> None:
        """Delete a channel and its history (admin)."""
        await self._call("DELETE", f"/v1/channels/{_q(name)}")

    async def history(
        self,
        name: str,
        *,
        start_seq: int | None = None,
        end_seq: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        tail: bool = False,
    ) -> list[Message]:
        """Messages of a channel by seq range or time range, oldest first: the oldest ``limit``
        that match, or with ``tail=True`` the newest ``limit`` that match."""
        params = {
            "start_seq": start_seq,
            "end_seq": end_seq,
            "since": since,
            "until": until,
            "limit": limit,
            "tail": tail or None,
        }
        out = await self._call(
            "GET", f"/v1/channels/{_q(name)}/history", s.MessageList, params=params
        )
        return out.messages

    async def members(self, name: str) -> list[str]:
        out = await self._call("GET", f"/v1/channels/{_q(name)}/members", s.MemberList)
        return out.members

    async def join(self, name: str, agent_id: str) -> list[str]:
        """Make ``agent_id`` a member (creating the channel); returns the members."""
        out = await self._call(
            "POST", f"/v1/channels/{_q(name)}/members", s.MemberList, body=s.Join(agent_id=agent_id)
        )
        return out.members

    async def leave(self, name: str, agent_id: str) -> list[str]:
        out = await self._call(
            "DELETE", f"/v1/channels/{_q(name)}/members/{_q(agent_id)}", s.MemberList
        )
        return out.members

    async def publish(
        self,
        channel: str,
        body: Any = None,
        *,
        sender: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        kind: Literal["chat", "task", "result", "request", "reply"] = "chat",
        expires_in: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Publish as ``sender`` (with auth on: the token's agent, which may be left out)."""
        payload = s.PublishBody(
            body=body,
            sender=sender,
            priority=parse_priority(priority),
            kind=kind,
            expires_in=expires_in,
            headers=dict(headers or {}),
        )
        return await self._call(
            "POST", f"/v1/channels/{_q(channel)}/messages", Message, body=payload
        )

    # -- agents ---------------------------------------------------------------------------

    async def list_agents(
        self, *, status: Literal["available", "busy", "draining", "offline"] | None = None
    ) -> list[AgentInfo]:
        out = await self._call("GET", "/v1/agents", s.AgentList, params={"status": status})
        return out.agents

    async def get_agent(self, agent_id: str) -> AgentInfo:
        return await self._call("GET", f"/v1/agents/{_q(agent_id)}", AgentInfo)

    async def search_agents(
        self,
        required: Mapping[str, float],
        *,
        min_confidence: float | None = None,
        limit: int | None = None,
    ) -> list[s.MatchEntry]:
        """The best available agents for ``required`` capabilities (name -> weight)."""
        body = s.Search(required=dict(required), min_confidence=min_confidence, limit=limit)
        out = await self._call("POST", "/v1/agents/search", s.MatchList, body=body)
        return out.matches

    @property
    def leases(self) -> LeaseClient:
        """Lease calls (``acquire``, ``renew``, ``release``, ``get``, ``list``); name the
        ``holder`` per call when auth is off."""
        return LeaseClient(self)

    @property
    def tasks(self) -> TaskClient:
        """Task calls (``submit``, ``get``, ``list``, ``cancel``, ``wait``, and the agent's
        ``accept`` ... ``complete``); name the ``agent`` per report when auth is off."""
        return TaskClient(self)

    @property
    def workflows(self) -> WorkflowClient:
        """Workflow calls (``register``, ``definitions``, ``get``, ``graph``, ``deprecate``,
        ``start``, ``execution``, ``executions``, ``events``, ``cancel``, ``redrive``,
        ``wait``)."""
        return WorkflowClient(self)

    @property
    def ops(self) -> OpsClient:
        """Operations calls (``health``, ``events``, ``alerts``, ``settings``, ``reload``,
        ``change``, ``update_agent``)."""
        return OpsClient(self)

    # -- operations -----------------------------------------------------------------------

    async def delivery_metrics(self) -> s.MetricsSnapshot:
        return await self._call("GET", "/v1/metrics/delivery", s.MetricsSnapshot)

    async def list_dead_letters(self, *, limit: int = 100) -> list[s.DeadLetterEntry]:
        """The newest dead letters, oldest first; each with its seq in ``$dlq``."""
        out = await self._call("GET", "/v1/dlq", s.DeadLetterList, params={"limit": limit})
        return out.dead_letters

    async def replay_dead_letters(self, seqs: Sequence[int] | None = None) -> int:
        """Deliver dead letters again to the member that failed them (admin); None: all kept.
        Returns how many were sent."""
        body = s.Replay(seqs=list(seqs) if seqs is not None else None)
        out = await self._call("POST", "/v1/dlq/replay", s.Count, body=body)
        return out.count

    async def purge_dead_letters(self) -> int:
        """Delete every dead letter (admin); returns how many."""
        out = await self._call("DELETE", "/v1/dlq", s.Count)
        return out.count

    async def openapi(self) -> dict[str, Any]:
        """The hub's OpenAPI document."""
        doc: dict[str, Any] = await self._call("GET", "/v1/openapi.json", dict)
        return doc

    async def health(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("GET", "/healthz", dict)
        return doc


def _error(status: int, raw: bytes) -> FleetchatError:
    try:
        info = msgspec.json.decode(raw, type=s.ErrorBody).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = raw.decode(errors="replace").strip()[:200] or f"HTTP {status}"
        return error_from_code(_CODE_BY_STATUS.get(status, "internal"), text, {"status": status})
    return error_from_code(info.code, info.message, info.details)
