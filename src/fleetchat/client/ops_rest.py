"""Operations over REST: ``HubClient.ops`` (health, the ops journal, alerts, live settings).

async with HubClient("http://hub:8765", token=admin_token) as hub:
    report = await hub.ops.health()
    result = await hub.ops.change({"chat": {"qos": {"normal": {"max_attempts": 5}}}})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fleetchat.models import AgentInfo
from fleetchat.ops.health import HealthReport
from fleetchat.ops.reload import ReloadResult
from fleetchat.server import schemas_ops as s

if TYPE_CHECKING:
    from fleetchat.client.rest import HubClient

__all__ = ["OpsClient"]


class OpsClient:
    """Operations calls on a hub; the settings and agent changes need an admin token."""

    def __init__(self, rest: HubClient) -> None:
        self._rest = rest

    async def health(self) -> HealthReport:
        """Every health check of the node answering."""
        return await self._rest._call("GET", "/v1/health", HealthReport)

    async def events(self, *, type: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Records of ``$ops``, oldest first: ``incident``, ``scaling``, ``backup``, ``config``."""
        params: dict[str, Any] = {"limit": limit}
        if type:
            params["type"] = type
        out = await self._rest._call("GET", "/v1/ops/events", s.OpsRecords, params=params)
        return out.records

    async def alerts(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts of ``$alerts``, oldest first."""
        out = await self._rest._call("GET", "/v1/alerts", s.OpsRecords, params={"limit": limit})
        return out.records

    async def settings(self) -> dict[str, Any]:
        """The running settings (tokens shown as ``***``)."""
        return (await self._rest._call("GET", "/v1/config", s.SettingsTree)).settings

    async def reload(self) -> ReloadResult:
        """Reload the hub's settings file (as SIGHUP does)."""
        return await self._rest._call("POST", "/v1/config/reload", ReloadResult)

    async def change(self, changes: Mapping[str, Any]) -> ReloadResult:
        """Change settings live, all or nothing (ConfigError lists every problem)."""
        body = s.ConfigPatch(changes=dict(changes))
        return await self._rest._call("PATCH", "/v1/config", ReloadResult, body=body)

    async def update_agent(
        self,
        agent_id: str,
        *,
        capabilities: Mapping[str, float] | None = None,
        capacity: int | None = None,
        performance: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> AgentInfo:
        """Change an agent's capabilities, capacity, performance or labels, live."""
        body = s.AgentPatch(
            capabilities=dict(capabilities) if capabilities is not None else None,
            capacity=capacity,
            performance=performance,
            labels=dict(labels) if labels is not None else None,
        )
        return await self._rest._call("PATCH", f"/v1/agents/{agent_id}", AgentInfo, body=body)
