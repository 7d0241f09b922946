"""The network hub: REST + WebSocket over aiohttp."""

from fleetchat.server.app import HubServer

__all__ = ["HubServer"]
