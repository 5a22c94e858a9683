"""The MCP endpoint: streamable HTTP (`/mcp`, `/healthz`, `/readyz`) and stdio."""

from vmcp_opt.server.gateway import Gateway

__all__ = ["Gateway"]
