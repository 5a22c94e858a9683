"""A raw stdio JSON-RPC backend for tests/test_r1_items29.py.

- `broadcast`: sends `notifications/resources/updated` for every URI it serves, subscribed or not (as a backend
  that announces every change may), one of them spelled with a percent-escape, then answers.
- `big`: answers one text block of `n` characters.
"""

from __future__ import annotations

import json
import sys
from typing import Any

RESOURCES = ["file:///a", "file:///b", "file:///c"]
# What `broadcast` announces, in order: the URIs no test client subscribed to first, then `file:///a` spelled
# otherwise (`%61` is `a`), then `file:///b`, and `file:///a` as listed last.
ANNOUNCED = ["file:///c", "file:///never-listed", "file:///%61", "file:///b", "file:///a"]

TOOLS = [
    {"name": "broadcast", "description": "announce updates of every resource", "inputSchema": {"type": "object"}},
    {
        "name": "big",
        "description": "one long text",
        "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}},
    },
    # Non-ASCII, as a saved catalogue writes it (UTF-8, not `\\u` escapes).
    {"name": "note", "description": "prend une note — café ✓", "inputSchema": {"type": "object"}},
]


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    if name == "broadcast":
        for uri in ANNOUNCED:
            emit({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}})
        return {"content": [{"type": "text", "text": "announced"}]}
    if name == "big":
        return {"content": [{"type": "text", "text": "x" * int(arguments.get("n", 10))}]}
    return {"content": [{"type": "text", "text": f"no tool {name}"}], "isError": True}


def answer(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "initialize":
        return {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}, "resources": {"subscribe": True}},
            "serverInfo": {"name": "r1-backend", "version": "1"},
        }
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        return call(params["name"], params.get("arguments") or {})
    if method == "resources/list":
        return {"resources": [{"uri": uri, "name": uri.rsplit("/", 1)[-1]} for uri in RESOURCES]}
    if method == "resources/templates/list":
        return {"resourceTemplates": []}
    if method == "prompts/list":
        return {"prompts": []}
    return {}  # ping, resources/subscribe, resources/unsubscribe, logging/setLevel


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("id") is None or "method" not in message:
            continue  # notifications, and answers to requests this backend never sends
        result = answer(message["method"], message.get("params") or {})
        emit({"jsonrpc": "2.0", "id": message["id"], "result": result})


if __name__ == "__main__":
    main()
