"""A stdio MCP backend that floods its stdout (tests/test_hostile_backend32.py).

MODE (environment) says what it writes, without pause, once the client's `notifications/initialized` came:
`junk` (lines that are not JSON-RPC), `logs` (valid `notifications/message` log messages), or `none`.
Its tools: `echo`, and `drip`, whose answer is a line that names its request first and never ends: it writes a
few KiB at a time until the file DRIP_STOP exists, then ends the line and writes DRIP_ENDED.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

MODE = os.environ.get("MODE", "none")
OUT = sys.stdout.buffer
LOCK = threading.Lock()
TOOLS = [
    {"name": "echo", "description": "Echo a message", "inputSchema": {"type": "object"}},
    {"name": "drip", "description": "An answer that never ends", "inputSchema": {"type": "object"}},
]
JUNK = b"".join(b"debug: the worker is at step %d, all well\n" % n for n in range(2000))
LOGS = b"".join(
    json.dumps(
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": f"m{n}"}}
    ).encode()
    + b"\n"
    for n in range(2000)
)


def write(data: bytes) -> None:
    with LOCK:
        OUT.write(data)
        OUT.flush()


def flood() -> None:
    blob = JUNK if MODE == "junk" else LOGS
    while True:
        write(blob)


def drip(request_id: Any) -> None:
    """Holds the lock: nothing else can be written inside the line, as a real writer's line would."""
    stop, ended = os.environ["DRIP_STOP"], os.environ["DRIP_ENDED"]
    with LOCK:
        OUT.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(request_id).encode() + b', "result": {"content": [')
        OUT.write(b'{"type": "text", "text": "')
        while not os.path.exists(stop):
            OUT.write(b"d" * 8192)
            OUT.flush()
            time.sleep(0.002)
        OUT.write(b'"}]}}\n')
        OUT.flush()
    with open(ended, "w", encoding="utf-8") as marker:
        marker.write("ended")


def result(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}, "logging": {}},
            "serverInfo": {"name": "hostile32", "version": "1"},
        }
    if method in ("ping", "logging/setLevel"):
        return {}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        return {"content": [{"type": "text", "text": json.dumps(params.get("arguments") or {})}]}
    return None


def main() -> None:
    started = False
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        method = request.get("method")
        if method == "notifications/initialized" and MODE != "none" and not started:
            started = True
            threading.Thread(target=flood, daemon=True).start()
        if "id" not in request or method is None:
            continue
        params = request.get("params") or {}
        if method == "tools/call" and params.get("name") == "drip":
            threading.Thread(target=drip, args=(request["id"],), daemon=True).start()
            continue
        answer = result(method, params)
        message = (
            {"jsonrpc": "2.0", "id": request["id"], "result": answer}
            if answer is not None
            else {"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "Method not found"}}
        )
        write(json.dumps(message).encode() + b"\n")


if __name__ == "__main__":
    main()
