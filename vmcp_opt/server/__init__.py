"""The MCP endpoint: transports (streamable HTTP with /healthz and /readyz, stdio), admission, handlers."""
