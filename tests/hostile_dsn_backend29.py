"""A stdio MCP backend that prints database URLs with their passwords to stderr (tests/test_secrets29.py).

usage: hostile_dsn_backend29.py DSN [--crash]

At start it prints "connecting to DSN and $DATABASE_URL"; with `--crash` it then exits with "could not connect to
DSN". Otherwise it serves a tool `die` that prints `$FAILURE_LINE` (prose with a URL in it) and exits.
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

DSN = sys.argv[1]
print(f"connecting to {DSN} and {os.environ.get('DATABASE_URL')}", file=sys.stderr, flush=True)
if "--crash" in sys.argv[2:]:
    raise SystemExit(f"FATAL: could not connect to {DSN}")

server = MCPServer("dsn")


@server.tool()
def die() -> str:
    """Print the failure line to stderr and exit."""
    print(os.environ.get("FAILURE_LINE", ""), file=sys.stderr, flush=True)
    os._exit(3)


server.run()
