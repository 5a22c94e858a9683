"""A demo MCP server whose tools need a token that another of its tools issues: alarms per user.

`get_user_token` signs a user in and returns a token; every alarm tool requires it. `find_tool` lists the
token tool next to the alarm tool a request asks for, with what it supplies (optimizer/prerequisites.py).

    python examples/backends/alarms_server.py                       # stdio
    python examples/backends/alarms_server.py --http --port 9003    # http://127.0.0.1:9003/mcp
"""

from __future__ import annotations

import argparse
import secrets
from dataclasses import dataclass, field

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("demo-alarms", instructions="Alarm clocks per user; sign in with get_user_token first.")

# Demo accounts: username -> password.
ACCOUNTS = {"alice": "wonderland", "bob": "builder"}


@dataclass
class _User:
    alarms: dict[int, str] = field(default_factory=dict)
    next_id: int = 1


_users: dict[str, _User] = {}
_tokens: dict[str, str] = {}  # token -> username
# Errors are ToolError: the SDK shows an agent only those messages, and these say what to do.


def _user(token: str) -> _User:
    username = _tokens.get(token)
    if username is None:
        raise ToolError("invalid or expired token: sign in with get_user_token")
    return _users.setdefault(username, _User())


@server.tool()
def get_user_token(username: str, password: str) -> str:
    """Sign a user in with their username and password; returns the authentication token."""
    if ACCOUNTS.get(username) != password:
        raise ToolError("unknown username or wrong password")
    token = secrets.token_urlsafe(16)
    _tokens[token] = username
    return token


@server.tool()
def add_alarm(token: str, time: str) -> int:
    """Set an alarm clock for the signed-in user at a time (e.g. 2026-03-16 07:00); returns its alarm id."""
    user = _user(token)
    alarm_id = user.next_id
    user.next_id += 1
    user.alarms[alarm_id] = time
    return alarm_id


@server.tool()
def list_alarms(token: str) -> dict[int, str]:
    """The signed-in user's alarms: alarm id -> time."""
    return dict(_user(token).alarms)


@server.tool()
def delete_alarm(token: str, alarm_id: int) -> str:
    """Cancel one of the signed-in user's alarms by its id."""
    user = _user(token)
    if user.alarms.pop(alarm_id, None) is None:
        raise ToolError(f"no alarm with id {alarm_id}")
    return f"alarm {alarm_id} deleted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9003)
    args = parser.parse_args()
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
