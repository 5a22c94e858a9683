"""A small MCP server whose tool fails its first N calls: for retries (workflows' `on_error: retry`).

    python examples/backends/flaky_server.py        # stdio
`FLAKY_FAILURES` (default 2) is how many calls of each key fail before one succeeds.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("flaky", instructions="Fails the first calls of each key; for retry demos and tests.")
FAILURES = int(os.environ.get("FLAKY_FAILURES", "2"))
calls: dict[str, int] = {}


@server.tool()
def unreliable_fetch(key: str) -> dict[str, object]:
    """Fetch a value by key; fails the first FLAKY_FAILURES calls of each key, then succeeds."""
    calls[key] = calls.get(key, 0) + 1
    if calls[key] <= FAILURES:
        raise ToolError(f"temporary failure {calls[key]} of {FAILURES} for '{key}'")
    return {"key": key, "value": f"value of {key}", "attempt": calls[key]}


@server.tool()
def call_count(key: str) -> int:
    """How many times unreliable_fetch was called with this key."""
    return calls.get(key, 0)


if __name__ == "__main__":
    server.run()
