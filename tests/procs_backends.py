"""A stdio MCP server without the SDK (it starts in a few milliseconds), for the tests of how the gateway runs
backend processes (tests/test_procs_*.py). It exits when its stdin closes, as MCP servers do.

    python tests/procs_backends.py [--children PIDFILE]

`--children PIDFILE` starts two helpers at once and writes their pids to PIDFILE, one a line: one in the
backend's process group that ignores SIGTERM and holds the backend's stdout open, one in a session of its own
(`setsid`, as a daemon does). Each sleeps for ten minutes: only the gateway's shutdown can end them.
Its one tool, `garbage`, writes `lines` lines to stdout that are JSON but not JSON-RPC (each quoting a secret
word, `hunter2-<n>`) before it answers "ok".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

HELPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def start_children(pidfile: str) -> None:
    in_group = subprocess.Popen([sys.executable, "-c", HELPER])
    own_session = subprocess.Popen([sys.executable, "-c", HELPER], start_new_session=True, stdout=subprocess.DEVNULL)
    with open(pidfile, "w", encoding="utf-8") as out:
        out.write(f"{in_group.pid}\n{own_session.pid}\n")


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    method = request.get("method")
    if method == "initialize":
        info = {"name": "procs", "version": "1"}
        return {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": info}
    if method == "tools/list":
        return {"tools": [{"name": "garbage", "inputSchema": {"type": "object"}}]}
    if method == "tools/call":
        for n in range(int(request["params"].get("arguments", {}).get("lines", 0))):
            os.write(1, b'{"not": "json-rpc", "secret": "hunter2-%d"}\n' % n)
        return {"content": [{"type": "text", "text": "ok"}]}
    return {} if method == "ping" else None


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--children":
        start_children(sys.argv[2])
    for line in sys.stdin:
        request = json.loads(line)
        if "id" not in request or "method" not in request:
            continue
        result = answer(request)
        if result is None:
            send({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "method not found"}})
        else:
            send({"jsonrpc": "2.0", "id": request["id"], "result": result})


if __name__ == "__main__":
    main()
