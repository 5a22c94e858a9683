"""A handshake-era (2025-11-25) stdio MCP server with logging, for tests/test_set_level32.py, in plain JSON-RPC so it
starts at once. Run as `set_level_backend32.py RECORD [DELAY]`: it appends `start PID` to the file RECORD when it starts,
`level LEVEL PID` for each `logging/setLevel` it is sent (written before it answers, so a client that has its answer
finds the line) and `stop PID` when its input ends. It serves one tool, `echo`. With DELAY it answers `initialize`
DELAY seconds late: a backend still connecting when a client first asks."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RECORD = Path(sys.argv[1])
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


def record(line: str) -> None:
    with RECORD.open("a", encoding="utf-8") as sink:
        sink.write(f"{line} {os.getpid()}\n")


def result(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The result of `method`, or None for a method this server does not serve."""
    if method == "initialize":
        time.sleep(DELAY)
        return {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}, "logging": {}},
            "serverInfo": {"name": "levels", "version": "1"},
        }
    if method == "tools/list":
        schema = {"type": "object", "properties": {"text": {"type": "string"}}}
        return {"tools": [{"name": "echo", "description": "Echoes text.", "inputSchema": schema}]}
    if method == "tools/call":
        text = str(params.get("arguments", {}).get("text", ""))
        return {"content": [{"type": "text", "text": text}], "isError": False}
    if method == "logging/setLevel":
        record(f"level {params.get('level')}")
        return {}
    if method == "ping":
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
