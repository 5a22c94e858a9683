"""A handshake-era (2025-11-25) stdio MCP server for tests/test_dedicated_churn29.py, in plain JSON-RPC so it
starts at once. Run as `churn_backend29.py RECORD NAME [--subscribe]`: it appends `start NAME PID` to the file
RECORD when it starts and `stop NAME PID` when its input ends. It serves one tool, `echo`, and one resource,
`NAME://note`; with `--subscribe` it offers resource subscriptions, else it lists none and answers
`resources/subscribe` with "Method not found"."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

RECORD, NAME = Path(sys.argv[1]), sys.argv[2]
SUBSCRIBE = "--subscribe" in sys.argv[3:]


def record(word: str) -> None:
    with RECORD.open("a", encoding="utf-8") as sink:
        sink.write(f"{word} {NAME} {os.getpid()}\n")


def result(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The result of `method`, or None for a method this server does not serve."""
    if method == "initialize":
        resources = {"subscribe": True} if SUBSCRIBE else {}
        return {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}, "resources": resources},
            "serverInfo": {"name": NAME, "version": "1"},
        }
    if method == "tools/list":
        schema = {"type": "object", "properties": {"text": {"type": "string"}}}
        return {"tools": [{"name": "echo", "description": "Echoes text.", "inputSchema": schema}]}
    if method == "tools/call":
        text = str(params.get("arguments", {}).get("text", ""))
        return {"content": [{"type": "text", "text": text}], "isError": False}
    if method == "resources/list":
        return {"resources": [{"uri": f"{NAME}://note", "name": "note"}]}
    if method == "resources/templates/list":
        return {"resourceTemplates": []}
    if method == "resources/read":
        return {"contents": [{"uri": params.get("uri", ""), "text": "a note"}]}
    if method in ("ping", "logging/setLevel") or (
        SUBSCRIBE and method in ("resources/subscribe", "resources/unsubscribe")
    ):
        return {}
    return None


def main() -> None:
    record("start")
    try:
        for line in sys.stdin:
            message = json.loads(line)
            if "id" not in message or "method" not in message:
                continue  # a notification, or an answer
            found = result(message["method"], message.get("params") or {})
            answer = (
                {"result": found} if found is not None else {"error": {"code": -32601, "message": "Method not found"}}
            )
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], **answer}) + "\n")
            sys.stdout.flush()
    finally:
        record("stop")


if __name__ == "__main__":
    main()
